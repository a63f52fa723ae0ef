"""The ``clipadapt`` command: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt import __version__
from clipadapt.data import ImageDataset, load_dataset
from clipadapt.data.errors import DatasetError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING, format="%(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (DatasetError, ValueError, FileNotFoundError) as err:
        print(f"clipadapt: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipadapt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clipadapt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    sub = parser.add_subparsers(required=True, metavar="command")

    p = sub.add_parser("models", help="list model specs")
    p.add_argument("--all", action="store_true", help="also list open_clip's pretrained table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="compute (and cache) image embeddings of a dataset")
    _model_args(p)
    _data_args(p)
    p.add_argument("--view", default="center", help="'center' or an augmented view 'aug<i>'")
    p.add_argument("--output", type=Path, help="also write the features as .safetensors")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("zeroshot", help="zero-shot classification with prompt ensembles")
    _model_args(p)
    _data_args(p)
    p.add_argument("--templates", default="default", help="template set or file (default: default)")
    p.add_argument("--descriptions", type=Path, help="CuPL-style JSON {classname: [sentences]}")
    p.add_argument("--split", choices=["all", "test"], default="all")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--output", type=Path, help="result JSON (a directory for domain folders)")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("cache", help="show or clear the feature cache")
    p.add_argument("action", choices=["show", "clear"], nargs="?", default="show")
    p.add_argument("--model", help="only this model spec or image fingerprint (clear)")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("lite-align", help="refit the built-in model's text-image alignment")
    p.add_argument("--output", type=Path, help="where to write it (default: the user cache)")
    p.set_defaults(func=cmd_lite_align)

    p = sub.add_parser("demo", help="the main job on embedded defaults (built-in model and data)")
    p.add_argument("--output-dir", type=Path, default=Path("results/demo"))
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_demo)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lite", help="model spec (see 'clipadapt models')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", type=Path, help="feature cache directory")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder, domain folders, .csv or builtin:<name>")
    p.add_argument("--classnames", type=Path, help="classnames.json mapping folder names to names")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, list them")


# -- commands ---------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> None:
    from clipadapt.models import SPEC_FORMS, available_models

    for form, what in SPEC_FORMS.items():
        print(f"{form:40s} {what}")
    if args.all:
        print()
        print("\n".join(available_models()))


def cmd_embed(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from clipadapt.atomic import atomic_write
    from clipadapt.features import extract_features

    backend = _backend(args)
    for name, dataset in _datasets(args).items():
        feats = extract_features(
            backend,
            dataset.paths,
            view=args.view,
            cache=_cache(args),
            skip_bad=args.skip_bad,
            progress=not args.quiet,
        )
        print(
            f"{name}: {len(feats.indices)} images, {feats.cached} from cache, "
            f"{feats.computed} computed, {len(feats.skipped)} skipped"
        )
        if args.output:
            import torch

            target = (
                args.output
                if len(_datasets(args)) == 1
                else args.output / f"{_slug(name)}.safetensors"
            )
            labels = torch.from_numpy(dataset.labels[feats.indices])
            tensors = {"features": feats.features, "labels": labels}
            meta = {"model": backend.info.spec, "image_fingerprint": backend.image_fingerprint}
            atomic_write(target, lambda p, t=tensors, m=meta: save_file(t, str(p), metadata=m))


def cmd_zeroshot(args: argparse.Namespace) -> None:
    from clipadapt.bench.results import write_result
    from clipadapt.bench.zeroshot import run_zeroshot
    from clipadapt.prompts import make_prompt_set

    backend = _backend(args)
    datasets = _datasets(args)
    rows = []
    for name, dataset in datasets.items():
        prompts = make_prompt_set(args.templates, args.descriptions, dataset.classnames)
        target = _output_path(args.output, name, len(datasets))
        split_file = target.with_suffix(".split.json") if target and args.split == "test" else None
        result = run_zeroshot(
            backend,
            dataset,
            prompts,
            split=args.split,
            seed=args.seed,
            test_fraction=args.test_fraction,
            split_file=split_file,
            cache=_cache(args),
            skip_bad=args.skip_bad,
            progress=not args.quiet,
        )
        if target:
            write_result(result, target)
        rows.append(result)
    if not args.quiet:
        print(format_metrics_table(rows))


def cmd_cache(args: argparse.Namespace) -> None:
    from clipadapt.feature_cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "clear":
        print(f"removed {cache.clear(args.model)} entries from {cache.path}")
        return
    rows = cache.summary()
    print(f"feature cache: {cache.path}")
    if not rows:
        print("(empty)")
    for r in rows:
        size = r.bytes / 2**20
        print(f"{r.model}  {r.spec:32s} {r.view:28s} {r.entries:7d} entries {size:8.1f} MiB")


def cmd_lite_align(args: argparse.Namespace) -> None:
    import json

    from clipadapt.models.lite import cached_alignment_path, fit_alignment, load_image_tower
    from clipadapt.models.minilm import MiniLMTextTower

    text_tower, head = MiniLMTextTower(), load_image_tower()._fc.weight.detach().clone()
    alignment = fit_alignment(text_tower, head)
    path = alignment.save(args.output or cached_alignment_path(text_tower, head))
    print(json.dumps(alignment.report["selected"] | {"logit_scale": alignment.logit_scale}))
    print(f"wrote {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    args.data, args.model, args.device = "builtin:textile", "lite", "cpu"
    args.classnames, args.skip_bad, args.no_cache = None, False, False
    args.templates, args.descriptions, args.split = "default", None, "test"
    args.seed, args.test_fraction = 1, 0.3
    args.output = args.output_dir / "zeroshot.json"
    cmd_zeroshot(args)
    print(f"results written to {args.output}")


# -- helpers ----------------------------------------------------------------------------
def _backend(args: argparse.Namespace):
    from clipadapt.models import create_backend

    return create_backend(args.model, args.device)


def _cache(args: argparse.Namespace):
    from clipadapt.feature_cache import FeatureCache

    if getattr(args, "no_cache", False):
        return None
    if not hasattr(args, "_cache_obj"):
        args._cache_obj = FeatureCache(args.cache_dir)
    return args._cache_obj


def _datasets(args: argparse.Namespace) -> dict[str, ImageDataset]:
    if not hasattr(args, "_datasets"):
        loaded = load_dataset(args.data, classnames_file=args.classnames, skip_bad=args.skip_bad)
        args._datasets = loaded if isinstance(loaded, dict) else {loaded.name: loaded}
    return args._datasets


def _slug(name: str) -> str:
    return name.replace("/", "_")


def _output_path(output: Path | None, name: str, count: int) -> Path | None:
    if output is None:
        return None
    return output if count == 1 else output / f"{_slug(name)}.json"


def format_metrics_table(results: list[dict[str, Any]]) -> str:
    keys = ("acc1", "acc5", "mean_per_class_recall", "macro_f1")
    width = max(len(r["dataset"]) for r in results) + 2
    lines = [f"{'dataset':{width}s}" + "".join(f"{k:>24s}" for k in keys) + f"{'n':>8s}"]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"{r['dataset']:{width}s}"
            + "".join(f"{m[k]:24.4f}" for k in keys)
            + f"{r['n_samples']:8d}"
        )
    if len(results) > 1:
        means = [sum(r["metrics"][k] for r in results) / len(results) for k in keys]
        lines.append(f"{'mean':{width}s}" + "".join(f"{v:24.4f}" for v in means))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
