"""What a run fits on and what it is tested on, as data.

A :class:`Setting` names the source domains a method is fitted on (only ``classes`` of them)
and its :class:`Target` s. A target scores ``known`` images (a part of a domain, over some
classes, under a view: the plain one, or a corruption ``fog@3``) and, for open-set targets,
``unknown`` ones that the method must reject. Protocols
(``clipadapt.bench.protocols``) and ``clipadapt adapt`` only build settings; the pipeline
runs them all the same way.

:class:`Splits` draws each domain's train/test split (seeded by ``split_seed``) and few-shot
samples (seeded by the run seed, nested across shots) once, and saves them as files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipadapt.data import FewShotSplit, ImageDataset, Split, few_shot, train_test_split
from clipadapt.views import CENTER

TEST, ALL = "test", "all"  # parts of a domain a target scores


@dataclass(frozen=True)
class Images:
    """``part`` ("test" split or "all" images) of ``domain``, only ``classes`` (None: all),
    seen under ``view`` (``clipadapt.views``)."""

    domain: str
    part: str
    classes: tuple[int, ...] | None = None
    view: str = CENTER


@dataclass(frozen=True)
class Target:
    """One evaluation: closed-set accuracy on ``known`` over its classes; with ``unknown``,
    also how well those images are rejected (open set)."""

    name: str
    role: str
    known: Images
    unknown: Images | None = None

    def describe(self) -> dict[str, object]:
        """The JSON form a result records."""
        out: dict[str, object] = {
            "name": self.name,
            "role": self.role,
            "domain": self.known.domain,
            "part": self.known.part,
            "classes": None if self.known.classes is None else list(self.known.classes),
        }
        if self.known.view != CENTER:  # plain-view targets keep the hash they always had
            out["view"] = self.known.view
        if self.unknown is not None:
            out["unknown"] = {
                "domain": self.unknown.domain,
                "part": self.unknown.part,
                "classes": None if self.unknown.classes is None else list(self.unknown.classes),
            }
        return out


@dataclass(frozen=True)
class Setting:
    """Runs sharing their data: fit on ``sources`` (only ``classes``), test on ``targets``."""

    protocol: str
    collection: str
    group: str
    sources: tuple[str, ...]
    targets: tuple[Target, ...]
    classes: tuple[int, ...] | None = None

    @property
    def open_set(self) -> bool:
        return any(t.unknown is not None for t in self.targets)


class Splits:
    """Train/test splits and few-shot samples per domain, made once and saved as files.

    With ``test_fraction`` 0 no test split is held out: few-shot samples are drawn from every
    image of the domain (``clipadapt adapt --test-fraction 0``).
    """

    def __init__(
        self,
        domains: dict[str, ImageDataset],
        directory: Path,
        *,
        split_seed: int,
        test_fraction: float,
        on_too_few: str,
    ) -> None:
        self.domains = domains
        self.directory = directory
        self.split_seed = split_seed
        self.test_fraction = test_fraction
        self.on_too_few = on_too_few
        self._train_test: dict[str, Split] = {}
        self._few_shot: dict[tuple[str, int, int], FewShotSplit] = {}
        self._saved: set[Path] = set()

    def train_test(self, domain: str) -> Split:
        if domain not in self._train_test:
            self._train_test[domain] = train_test_split(
                self.domains[domain], test_fraction=self.test_fraction, seed=self.split_seed
            )
        return self._train_test[domain]

    def test(self, domain: str) -> list[int]:
        return self.train_test(domain).test if self.test_fraction > 0 else []

    def few_shot(self, domain: str, shots: int, seed: int) -> FewShotSplit:
        key = (domain, shots, seed)
        if key not in self._few_shot:
            pool = self.train_test(domain) if self.test_fraction > 0 else self.domains[domain]
            self._few_shot[key] = few_shot(pool, shots=shots, seed=seed, on_too_few=self.on_too_few)
        return self._few_shot[key]

    def indices(self, images: Images) -> list[int]:
        """The dataset indices ``images`` names, in dataset order."""
        dataset = self.domains[images.domain]
        chosen = self.test(images.domain) if images.part == TEST else range(len(dataset))
        if images.classes is None:
            return list(chosen)
        keep = set(images.classes)
        return [i for i in chosen if dataset.samples[i].label in keep]

    def file(self, domain: str, shots: int, seed: int) -> Path:
        """Where the few-shot split (which carries the test list too) is saved."""
        return self.directory / domain / f"split{self.split_seed}_K{shots}_s{seed}.json"

    def save(self, domain: str, shots: int, seed: int) -> Path:
        """Write the few-shot split file (once per process) and return its path."""
        path = self.file(domain, shots, seed)
        if path not in self._saved:
            self.few_shot(domain, shots, seed).save(path)
            self._saved.add(path)
        return path
