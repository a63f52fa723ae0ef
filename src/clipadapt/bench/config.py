"""What a benchmark runs, from CLI flags or a YAML file with the same keys.

A YAML file looks like::

    model: lite
    data: ../shared/data/pacs100
    protocol: single_source
    methods: [zeroshot, ncm, gda]        # or a mapping {gda: {alpha: 1.0}, ...}
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    views: 4
    calibrate: temperature               # optional: post-hoc temperature scaling
    out: results/pacs100
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipadapt.corruptions import COMMON, CORRUPTIONS, EXTRA, SEVERITIES, require
from clipadapt.defaults import CALIBRATION_MODES, DEFAULT_VIEWS, SELECTION_MODES
from clipadapt.views import DEFAULT_AUGMENT, parse_augment

PROTOCOLS: dict[str, str] = {
    "fewshot": "few-shot on each dataset or domain, tested on its own test split",
    "single_source": "few-shot on one domain, tested on its test split and on every other domain",
    "lodo": "few-shot on all domains but one (K per class from each), tested on the one left out",
    "base_to_novel": "fit on the first half of the classes (by class id), tested on base and novel",
    "near_ood": "fit on the known classes of a domain; its test split's unknown classes are OOD",
    "open_set_dg": "fit on the known classes of a domain; known vs unknown on every other domain",
    "far_ood": "fit on every class of a domain; the datasets in ood_data are OOD",
    "corruptions": "few-shot on a domain, tested on its test split clean and under each "
    "corruption x severity",
}
OOD_PROTOCOLS = ("near_ood", "open_set_dg", "far_ood")
DEFAULT_KNOWN_CLASSES = 4
"""Known classes of the class hold-out protocols (the first N by sorted class id): 4 of 7
for PACS (dog, elephant, giraffe, guitar known; horse, house, person unknown)."""
ON_TOO_FEW = ("error", "use_all")
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)


@dataclass
class BenchConfig:
    """One benchmark: methods x sources x shots x seeds under one protocol."""

    data: str
    out: Path
    model: str = "lite"
    protocol: str = "single_source"
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # {} = every method
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    sources: tuple[str, ...] = ()  # () = every domain (held-out domains for lodo)
    views: int = DEFAULT_VIEWS
    augment: tuple[str, ...] | str = DEFAULT_AUGMENT  # transforms of the augmented views
    selection: str = "validation"  # or "cv": k-fold over support + validation
    calibrate: str = "none"  # or "temperature": T fitted on the few-shot validation set
    split_seed: int = 1
    test_fraction: float = 0.3
    templates: str = "default"
    on_too_few: str = "error"
    classnames: Path | None = None
    device: str = "cpu"
    cache_dir: Path | None = None
    skip_bad: bool = False
    # OOD / open-set protocols only
    known_classes: int = DEFAULT_KNOWN_CLASSES
    ood_data: dict[str, str] = field(default_factory=dict)  # far_ood: {name: path}
    detectors: tuple[str, ...] = ()  # () = every registered detector
    accept: float = 0.95  # validation share a calibrated threshold accepts
    # corruptions protocol only
    corruptions: tuple[str, ...] = (*COMMON, *EXTRA)  # ImageNet-C's 15, then the extras
    severities: tuple[int, ...] = SEVERITIES

    def __post_init__(self) -> None:
        for name in (
            "data",
            "model",
            "templates",
            "device",
            "on_too_few",
            "selection",
            "calibrate",
        ):
            _require(name, getattr(self, name), str)
        for name in ("out", "classnames", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(_require(name, value, str | os.PathLike)))
        self.protocol = ",".join(str(p) for p in _as_list("protocol", self.protocol, str))
        self.methods = _methods(self.methods)
        self.shots = _positive_ints("shots", self.shots, minimum=1)
        self.seeds = _positive_ints("seeds", self.seeds, minimum=0)
        self.sources = tuple(_as_list("sources", self.sources, str))
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        self.ood_data = _ood_data(self.ood_data)
        if "far_ood" in self.protocols and not self.ood_data:
            raise ValueError("protocol far_ood needs ood_data: {name: dataset path, ...}")
        self.detectors = tuple(_as_list("detectors", self.detectors, str))
        self.corruptions = _corruptions(self.corruptions, "corruptions" in self.protocols)
        self.severities = _positive_ints("severities", self.severities, minimum=1)
        if max(self.severities) > max(SEVERITIES):
            raise ValueError(f"severities must be 1-5, got {list(self.severities)}")
        self.augment = parse_augment(_as_list("augment", self.augment, str))
        for name, minimum in (("known_classes", 1), ("views", 0), ("split_seed", 0)):
            value = _require(name, getattr(self, name), int)
            if value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
        self.accept = float(_require("accept", self.accept, float | int))
        if not 0 < self.accept <= 1:
            raise ValueError(f"accept must be a number in (0, 1], got {self.accept}")
        self.test_fraction = float(_require("test_fraction", self.test_fraction, float | int))
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _require("skip_bad", self.skip_bad, bool)
        if self.on_too_few not in ON_TOO_FEW:
            raise ValueError(f"on_too_few {self.on_too_few!r}: use one of {', '.join(ON_TOO_FEW)}")
        if self.calibrate not in CALIBRATION_MODES:
            raise ValueError(
                f"calibrate {self.calibrate!r}: use one of {', '.join(CALIBRATION_MODES)}"
            )
        if self.selection not in SELECTION_MODES:
            raise ValueError(
                f"selection {self.selection!r}: use one of {', '.join(SELECTION_MODES)}"
            )

    @property
    def method_names(self) -> dict[str, str]:
        """The registry name of each method label: its ``method:`` value, or the label."""
        return {label: str(given.get("method", label)) for label, given in self.methods.items()}

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols run (``protocol`` may list several, comma-separated)."""
        return tuple(p for p in self.protocol.split(",") if p)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "config") -> BenchConfig:
        """Build from a mapping (YAML or flags); unknown or missing keys name themselves."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {', '.join(known)}")
        missing = [k for k in ("data", "out") if values.get(k) is None]
        if missing:
            raise ValueError(f"{where}: {' and '.join(missing)} must be given")
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML file; relative ``data``/``out``/... paths resolve against it."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read benchmark config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"benchmark config {path} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"benchmark config {path} must hold a mapping of keys to values")

    def resolve(value: str) -> str:
        return value if value.startswith("builtin:") else str((path.parent / value).resolve())

    for key in ("data", "out", "classnames", "cache_dir"):
        if isinstance(values.get(key), str):
            values[key] = resolve(values[key])
    ood = values.get("ood_data")
    if isinstance(ood, dict):
        values["ood_data"] = {k: resolve(str(v)) for k, v in ood.items()}
    elif isinstance(ood, list | str):
        values["ood_data"] = [resolve(str(v)) for v in _as_list("ood_data", ood, str)]
    return values


def _require(name: str, value: Any, kind: Any) -> Any:
    """``value`` if it is of ``kind`` (never a bool standing in for a number)."""
    is_bool = isinstance(value, bool)
    if not isinstance(value, kind) or (is_bool and kind is not bool):
        raise ValueError(f"{name} must be {_KIND_NAMES.get(kind, kind)}, got {value!r}")
    return value


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    float | int: "a number",
    str | os.PathLike: "a path",
}


def _as_list(name: str, value: Any, kind: Any = str | int) -> list[Any]:
    """A list from a list or a comma-separated string; every item of ``kind``."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        if kind is int:
            try:
                items = [int(v) for v in items]
            except ValueError:
                raise ValueError(f"{name} must be integers, got {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{name} must be a list or a comma-separated string, got {value!r}")
    for item in items:
        _require(f"every item of {name}", item, kind)
    return items


def _positive_ints(name: str, value: Any, minimum: int) -> tuple[int, ...]:
    numbers = _as_list(name, value, int)
    if not numbers or min(numbers) < minimum:
        raise ValueError(f"{name} must be a non-empty list of integers >= {minimum}, got {value}")
    return tuple(sorted(set(numbers)))


def _methods(value: Any) -> dict[str, dict[str, Any]]:
    """Method names (list, comma-separated) or a mapping name -> hyperparameters; {} = all."""
    if value in ("all", None):
        return {}
    if isinstance(value, dict):
        for name, params in value.items():
            if params is not None and not isinstance(params, dict):
                raise ValueError(
                    f"methods: the value for {name!r} must be a mapping of hyperparameters "
                    f"({name}: {{alpha: 1.0}}) or empty, got {params!r}"
                )
        return {str(k): dict(v or {}) for k, v in value.items()}
    return {name: {} for name in _as_list("methods", value, str)}


def _corruptions(value: Any, used: bool) -> tuple[str, ...]:
    """Corruption names in the suite's order; when ``used``, each checked for what it needs
    installed (frost's images, OpenCV)."""
    names = _as_list("corruptions", value, str)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"corruptions {unknown or names}: use some of {', '.join(CORRUPTIONS)}")
    for name in names if used else ():
        try:
            require(name)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"corruptions: {err}") from None
    return tuple(n for n in CORRUPTIONS if n in names)


def _ood_data(value: Any) -> dict[str, str]:
    """Far-OOD datasets as ``{name: path}``; a list names each by its folder (or, for
    ``builtin:<name>``, by that name)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): str(_require(f"ood_data {k}", v, str)) for k, v in value.items()}
    return {
        v.removeprefix("builtin:") if v.startswith("builtin:") else Path(v).name: v
        for v in _as_list("ood_data", value, str)
    }
