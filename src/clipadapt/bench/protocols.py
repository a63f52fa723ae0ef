"""Evaluation protocols as strategies: each turns domains into :class:`Setting` s (where a
run fits and what it is tested on); the pipeline runs every setting the same way.

Closed set (task ``fewshot_classification``):

* ``fewshot``: support and validation from a domain's train split; test on its test split.
* ``single_source``: the same, plus every image of every other domain (none was used).
* ``lodo``: K per class from the train split of every domain but one (support and validation
  concatenated); test on every image of the domain left out.
* ``base_to_novel``: classes in class-id order (sorted folder names), the first ceil(C/2)
  are base (CoOp/CoCoOp's split); fit on base-class support only; test base-class test
  images over the base classes and novel-class test images over the novel classes, through
  the method's transfer to new class embeddings. Novel (and the harmonic mean) is "not
  applicable" for methods that cannot score classes they were not fitted on.

* ``corruptions``: support and validation from a domain's train split; test on its test
  split clean (target ``clean``) and under every corruption x severity (targets ``fog@3``,
  ..., views of :mod:`clipadapt.corruptions`). Few-shot data are never corrupted.

Open set (task ``open_set``; classes sorted by id, the first ``known_classes`` known):

* ``near_ood``: fit on the known classes of the source's train split; its test split's
  known-class images are ID, the unknown classes' test images OOD. For PACS's 7 classes the
  default 4 gives known = dog, elephant, giraffe, guitar; unknown = horse, house, person.
* ``open_set_dg``: the same fit, tested on every image of every other domain.
* ``far_ood``: every class of the source known; its test split is ID and each dataset of
  ``ood_data`` (all its images) is one OOD target.

Train/test splits depend on ``split_seed`` only; few-shot samples on the run seed (nested
across shots). Both are saved as split files under ``<out>/splits``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clipadapt.data import ImageDataset
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.pipeline.task import ALL, TEST, Images, Setting, Target
from clipadapt.views import corruption_view_name

# target roles, and the two headline numbers derived from targets
IN_DOMAIN, OTHER_DOMAIN, HELD_OUT, BASE, NOVEL = (
    "in_domain",
    "other_domain",
    "held_out",
    "base",
    "novel",
)
OTHERS_MEAN, HM = "other_domains_mean", "hm"
NEAR_OOD, OPEN_SET_DG, FAR_OOD = "near_ood", "open_set_dg", "far_ood"
OOD_PREFIX = "ood:"  # far-OOD datasets join the domains under this prefix
CLEAN, CORRUPTED = "clean", "corrupted"  # roles of the corruptions protocol's targets
CORRUPTION_MEAN, EXTRA_CORRUPTION_MEAN = "corruption_mean", "extra_corruption_mean"


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


def hold_out_classes(class_ids: Sequence[str], num_known: int = 4) -> tuple[list[str], list[str]]:
    """Sorted class ids split into the first ``num_known`` (known) and the rest (unknown)."""
    ordered = sorted(class_ids)
    if not 1 <= num_known < len(ordered):
        raise DatasetError(
            f"known_classes must be between 1 and {len(ordered) - 1} for {len(ordered)} "
            f"classes, got {num_known}"
        )
    return ordered[:num_known], ordered[num_known:]


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def settings(
    protocol: str,
    collection: str,
    domains: dict[str, ImageDataset],
    chosen: tuple[str, ...],
    *,
    known_classes: int = 4,
    ood_data: Sequence[str] = (),
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (),
) -> list[Setting]:
    """The settings ``protocol`` runs over ``chosen`` domains (sources, or held out for lodo;
    () = every domain). ``ood_data`` names the far-OOD datasets (in ``domains`` as
    ``ood:<name>``); ``corruptions`` x ``severities`` the corrupted targets."""
    names = [d for d in domains if not d.startswith(OOD_PREFIX)]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise DatasetError(
            f"domain(s) {quoted(unknown)} are not in {collection!r}; its domains: {quoted(names)}"
        )
    if protocol in ("single_source", "lodo", OPEN_SET_DG) and len(names) < 2:
        raise DatasetError(
            f"protocol {protocol!r} needs a domain-folders root (<root>/<domain>/<class>/<image>) "
            f"with at least two domains, but {collection!r} is one dataset; use "
            + ("--protocol near_ood" if protocol == OPEN_SET_DG else "--protocol fewshot")
        )
    class_ids = domains[names[0]].class_ids
    if protocol in (NEAR_OOD, OPEN_SET_DG):
        known, _ = hold_out_classes(class_ids, known_classes)
        known_labels = tuple(class_ids.index(c) for c in known)
        unknown_labels = tuple(i for i in range(len(class_ids)) if i not in known_labels)
    out: list[Setting] = []
    for name in list(chosen) or names:
        others = [d for d in names if d != name]
        if protocol == "fewshot":
            targets = (Target(name, IN_DOMAIN, Images(name, TEST)),)
        elif protocol == "single_source":
            targets = (
                Target(name, IN_DOMAIN, Images(name, TEST)),
                *(Target(d, OTHER_DOMAIN, Images(d, ALL)) for d in others),
            )
        elif protocol == "corruptions":
            views = [corruption_view_name(c, s) for c in corruptions for s in severities]
            targets = (
                Target(CLEAN, CLEAN, Images(name, TEST)),
                *(Target(v, CORRUPTED, Images(name, TEST, view=v)) for v in views),
            )
        elif protocol == "lodo":
            target = Target(name, HELD_OUT, Images(name, ALL))
            out.append(Setting(protocol, collection, name, tuple(others), (target,)))
            continue
        elif protocol == "base_to_novel":
            base, novel = base_novel_classes(len(class_ids))
            targets = (
                Target(BASE, BASE, Images(name, TEST, base)),
                Target(NOVEL, NOVEL, Images(name, TEST, novel)),
            )
            out.append(Setting(protocol, collection, name, (name,), targets, base))
            continue
        elif protocol == NEAR_OOD:
            near = Target(
                name,
                NEAR_OOD,
                Images(name, TEST, known_labels),
                Images(name, TEST, unknown_labels),
            )
            out.append(Setting(protocol, collection, name, (name,), (near,), known_labels))
            continue
        elif protocol == OPEN_SET_DG:
            targets = tuple(
                Target(d, OPEN_SET_DG, Images(d, ALL, known_labels), Images(d, ALL, unknown_labels))
                for d in others
            )
            out.append(Setting(protocol, collection, name, (name,), targets, known_labels))
            continue
        elif protocol == FAR_OOD:
            targets = tuple(
                Target(n, FAR_OOD, Images(name, TEST), Images(OOD_PREFIX + n, ALL))
                for n in sorted(ood_data)
            )
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
        out.append(Setting(protocol, collection, name, (name,), targets))
    return out
