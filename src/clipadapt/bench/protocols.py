"""Evaluation protocols as data: where each run fits and what it is tested on.

* ``fewshot``: support and validation from a domain's train split; test on its test split.
* ``single_source``: the same, plus every image of every other domain (none was used).
* ``lodo``: K per class from the train split of every domain but one (support and validation
  concatenated); test on every image of the domain left out.
* ``base_to_novel``: classes in class-id order (sorted folder names), the first ceil(C/2)
  are base (CoOp/CoCoOp's split); fit on base-class support only; test base-class test
  images over the base classes and novel-class test images over the novel classes, through
  the method's transfer to new class embeddings. Novel (and the harmonic mean) is "not
  applicable" for methods that cannot score classes they were not fitted on.

Train/test splits depend on ``split_seed`` only; few-shot samples on the run seed (nested
across shots). Both are saved as split files under ``<out>/splits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from clipadapt.data import FewShotSplit, ImageDataset, Split, few_shot, train_test_split
from clipadapt.data.errors import DatasetError, quoted

# target roles, and the two headline numbers derived from targets
IN_DOMAIN, OTHER_DOMAIN, HELD_OUT, BASE, NOVEL = (
    "in_domain",
    "other_domain",
    "held_out",
    "base",
    "novel",
)
OTHERS_MEAN, HM = "other_domains_mean", "hm"


@dataclass(frozen=True)
class Target:
    """One evaluation: ``part`` ("test" split or "all" images) of ``domain``, over ``classes``."""

    name: str
    domain: str
    part: str
    role: str
    classes: tuple[int, ...] | None = None  # label subset scored; None = every class


@dataclass(frozen=True)
class Setting:
    """Runs sharing their data: fit on ``sources`` (only ``classes``), test on ``targets``."""

    protocol: str
    collection: str
    group: str
    sources: tuple[str, ...]
    targets: tuple[Target, ...]
    classes: tuple[int, ...] | None = None


def as_domains(
    loaded: ImageDataset | dict[str, ImageDataset],
) -> tuple[str, dict[str, ImageDataset]]:
    """``(collection name, {domain: dataset})`` for a domain-folders root or a single dataset."""
    if isinstance(loaded, ImageDataset):
        return loaded.name, {loaded.name.replace("/", "_"): loaded}
    first = next(iter(loaded.values()))
    return first.root.parent.name, dict(loaded)


def base_novel_classes(num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The first ceil(C/2) labels are base, the rest novel."""
    if num_classes < 2:
        raise DatasetError(f"base-to-novel needs at least 2 classes, got {num_classes}")
    cut = math.ceil(num_classes / 2)
    return tuple(range(cut)), tuple(range(cut, num_classes))


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def settings(
    protocol: str, collection: str, domains: dict[str, ImageDataset], chosen: tuple[str, ...]
) -> list[Setting]:
    """The settings ``protocol`` runs over ``chosen`` domains (sources, or held out for lodo)."""
    names = list(domains)
    unknown = [c for c in chosen if c not in domains]
    if unknown:
        raise DatasetError(
            f"domain(s) {quoted(unknown)} are not in {collection!r}; its domains: {quoted(names)}"
        )
    picked = list(chosen) or names
    if protocol in ("single_source", "lodo") and len(names) < 2:
        raise DatasetError(
            f"protocol {protocol!r} needs a domain-folders root (<root>/<domain>/<class>/<image>) "
            f"with at least two domains, but {collection!r} is one dataset; use --protocol fewshot"
        )
    out: list[Setting] = []
    for name in picked:
        if protocol == "fewshot":
            targets = (Target(name, name, "test", IN_DOMAIN),)
            out.append(Setting(protocol, collection, name, (name,), targets))
        elif protocol == "single_source":
            others = [Target(d, d, "all", OTHER_DOMAIN) for d in names if d != name]
            targets = (Target(name, name, "test", IN_DOMAIN), *others)
            out.append(Setting(protocol, collection, name, (name,), targets))
        elif protocol == "lodo":
            sources = tuple(other for other in names if other != name)
            out.append(
                Setting(protocol, collection, name, sources, (Target(name, name, "all", HELD_OUT),))
            )
        elif protocol == "base_to_novel":
            base, novel = base_novel_classes(len(domains[name].class_ids))
            targets = (
                Target(BASE, name, "test", BASE, base),
                Target(NOVEL, name, "test", NOVEL, novel),
            )
            out.append(Setting(protocol, collection, name, (name,), targets, base))
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
    return out


class Splits:
    """Train/test splits and few-shot samples per domain, made once and saved as files."""

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

    def few_shot(self, domain: str, shots: int, seed: int) -> FewShotSplit:
        key = (domain, shots, seed)
        if key not in self._few_shot:
            self._few_shot[key] = few_shot(
                self.train_test(domain), shots=shots, seed=seed, on_too_few=self.on_too_few
            )
        return self._few_shot[key]

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
