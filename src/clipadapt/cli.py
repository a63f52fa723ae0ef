"""The ``clipadapt`` command: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt import __version__, runtime
from clipadapt.bench.config import PROTOCOLS
from clipadapt.data import ImageDataset, image_paths, load_dataset
from clipadapt.data.errors import DatasetError
from clipadapt.defaults import CALIBRATION_MODES, DEFAULT_VIEWS, SELECTION_MODES
from clipadapt.demo import DEMO_METHOD


def main(argv: Sequence[str] | None = None) -> int:
    if "torch" not in sys.modules:  # a fresh process: before torch loads OpenMP and allocates
        runtime.configure_threads()
        runtime.configure_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING, format="%(message)s"
    )
    try:
        if _distributed(args):
            return _run_distributed(args)
        return int(args.func(args) or 0)
    except (DatasetError, ValueError, FileNotFoundError) as err:
        print(f"clipadapt: error: {err}", file=sys.stderr)
        return 2


def _distributed(args: argparse.Namespace) -> bool:
    """True when torchrun started this process as one of several; adapt and finetune train
    so."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if args.func not in (cmd_adapt, cmd_finetune):
        raise ValueError(
            "under torchrun (WORLD_SIZE > 1) only 'clipadapt adapt' and 'finetune' run; start "
            "other commands as one process"
        )
    return True


def _other_rank() -> bool:
    """A torchrun rank other than 0 (only possible once ``_run_distributed`` started it)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_initialized() and dist.get_rank() != 0


def _run_distributed(args: argparse.Namespace) -> int:
    """Run ``adapt`` as one rank: the training loop splits each batch over the ranks; rank 0
    alone prints and writes."""
    from clipadapt.scale.distributed import init_from_env, is_main_process, leave

    args.device = init_from_env(args.device)
    if not is_main_process():
        args.quiet = True
    code = int(args.func(args) or 0)
    leave()  # not after an error: that rank exits, and torchrun stops the others
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipadapt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clipadapt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    quiet = argparse.ArgumentParser(add_help=False)  # -q also after the command
    quiet.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(required=True, metavar="command")
    sub.add_parser = functools.partial(sub.add_parser, parents=[quiet])

    p = sub.add_parser("models", help="list model specs")
    p.add_argument("--all", action="store_true", help="also list open_clip's pretrained table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="compute (and cache) image embeddings of a dataset")
    _model_args(p)
    _data_args(p)
    p.add_argument("--view", default="center", help="'center' or an augmented view 'aug<i>'")
    p.add_argument("--output", type=Path, help="also write the features as .safetensors")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a Ray Data job (this machine, or the cluster at "
        "$RAY_ADDRESS) writing Parquet shards to --shards, then imported into the cache "
        "(needs pip install 'clipadapt[scale]')",
    )
    p.add_argument("--shards", type=Path, help="ray: folder of the Parquet feature shards")
    p.add_argument("--workers", type=int, default=1, help="ray: model actors (default: 1)")
    p.add_argument(
        "--worker-cpus", type=float, default=1.0, help="ray: CPUs (torch threads) per actor"
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        help="ray: images per shard, rounded up to the model's batch size (default: 1024)",
    )
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

    p = sub.add_parser("cache", help="show, clear or import into the feature cache")
    p.add_argument("action", choices=["show", "clear", "import"], nargs="?", default="show")
    p.add_argument("shards", nargs="?", type=Path, help="import: a folder of Parquet shards")
    p.add_argument("--model", help="only this model spec or image fingerprint (clear)")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("lite-align", help="refit the built-in model's text-image alignment")
    p.add_argument("--output", type=Path, help="where to write it (default: the user cache)")
    p.set_defaults(func=cmd_lite_align)

    p = sub.add_parser(
        "bench", help="run methods x domains x shots x seeds under a protocol, one JSON per run"
    )
    _bench_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="aggregate bench results into CSV, Markdown and HTML")
    p.add_argument("results", type=Path, help="a directory written by clipadapt bench")
    p.add_argument("--out", type=Path, help="where to write (default: <results>/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("adapt", help="fit one method on a labeled folder and save the model")
    _model_args(p)
    _data_args(p)
    p.add_argument(
        "--method",
        default="gda",
        help="method name, or 'auto' to choose among the training-free and linear methods by "
        "cross-validation on the few-shot images (default: gda)",
    )
    p.add_argument("--shots", type=int, default=16, help="images per class to fit on")
    p.add_argument("--seed", type=int, default=1, help="few-shot sampling seed")
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="augmented views per image")
    p.add_argument(
        "--augment",
        default="crop,flip",
        help="transforms of the augmented views, comma-separated: crop, flip, shift (a crafted "
        "style change or corruption; default: crop,flip; drop flip for digits and text)",
    )
    p.add_argument(
        "--selection",
        choices=SELECTION_MODES,
        default="validation",
        help="how searched hyperparameters are chosen: on the few-shot validation set, or by "
        "k-fold cross-validation over support + validation (default: validation)",
    )
    p.add_argument("--templates", default="default", help="template set or file")
    p.add_argument("--split-seed", type=int, default=1)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="held out to score the model and zero-shot (0: fit may draw from every image)",
    )
    p.add_argument("--on-too-few", choices=["error", "use_all"], default="error")
    p.add_argument(
        "--ood-score",
        default="knn",
        help="OOD score whose 'unknown' threshold is calibrated on the few-shot validation set "
        "and saved with the model (default: knn, k-nearest-neighbour distance to the support "
        "features; see clipadapt.ood.DETECTORS)",
    )
    p.add_argument(
        "--accept",
        type=float,
        default=0.95,
        help="share of the validation images the 'unknown' threshold accepts (default: 0.95)",
    )
    p.add_argument(
        "--no-ood", action="store_true", help="save no 'unknown' threshold (closed-set only)"
    )
    p.add_argument(
        "--calibrate",
        choices=CALIBRATION_MODES,
        default="none",
        help="temperature: fit a temperature on the few-shot validation set and save it; "
        "predict's scores then use softmax(logits / T) (default: none)",
    )
    p.add_argument("--out", type=Path, required=True, help="the model directory to write")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("predict", help="label images with an adapted model: CSV rows")
    p.add_argument("model_dir", type=Path, help="a directory written by clipadapt adapt")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--output", type=Path, help="write the CSV here (default: standard output)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", type=Path, help="feature cache directory")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, list them")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="serve an adapted model over HTTP, with a web page")
    p.add_argument("model_dir", type=Path, help="a directory written by clipadapt adapt")
    p.add_argument(
        "--index", type=Path, help="an index written by clipadapt index with the model's backend"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="images per forward pass when batching requests (1: no batching; default: 16)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="how long a batch waits for more requests (default: 2)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests waiting for the model before new ones get 503 (default: 64)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit")
    p.add_argument("--max-files", type=int, default=16, help="images per request")
    p.add_argument(
        "--max-megapixels", type=float, default=40.0, help="pixels per decoded image (millions)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="embed a collection of images and build a search index")
    _model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="a folder (every image under it), a .csv of image paths, or builtin:<name>",
    )
    p.add_argument("--out", type=Path, required=True, help="the index directory to write")
    p.add_argument(
        "--kind",
        choices=["auto", "flat", "ivfpq"],
        default="auto",
        help="flat: exact; ivfpq: IVF-PQ candidates re-ranked exactly, recall measured at "
        "build; auto: flat up to 50,000 images (default: auto)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the IVF-PQ training")
    p.add_argument(
        "--recall-target",
        type=float,
        default=0.95,
        help="IVF-PQ: scan the fewest cells (a power of two) whose recall@10 against exact "
        "search, measured at build, reaches this (default: 0.95)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, list them")
    csv_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="the images of an index closest to a text or an image")
    p.add_argument("index_dir", type=Path, help="a directory written by clipadapt index")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query, e.g. 'a photo of a dog'")
    query.add_argument("--image", type=Path, help="an image file as the query")
    p.add_argument("--k", type=int, default=10, help="how many images (default: 10)")
    p.add_argument(
        "--model", help="model spec encoding the query (default: the one the index was built with)"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "pairs",
        help="build image-text pairs, curate them (MetaCLIP balancing, dedup against a test "
        "set) and write them as an open_clip CSV",
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="a .csv of pairs (several rows per image allowed), webdataset .tar shards, or "
        "labelled folders / builtin:<name> captioned by --template",
    )
    p.add_argument(
        "--template",
        action="append",
        help="caption template for labelled folders: {} (or {classname}, {class}) for the "
        "class, {domain} for the domain folder; repeatable, one pair per template and image "
        "(default: 'a photo of a {}.')",
    )
    p.add_argument(
        "--one-per-image", action="store_true", help="one template per image, drawn by --seed"
    )
    p.add_argument("--extract-dir", type=Path, help="webdataset: folder to extract images to")
    p.add_argument(
        "--test",
        nargs="+",
        help="pairs held out for testing (same forms as --data): training images with the "
        "same bytes (sha256) as a test image are dropped",
    )
    p.add_argument(
        "--entries", type=Path, help="text file of entries (one a line) for MetaCLIP balancing"
    )
    p.add_argument(
        "--class-entries", action="store_true", help="balance on the class names as entries"
    )
    p.add_argument("--cap", type=int, help="balancing: about this many pairs kept per entry")
    p.add_argument("--plurals", action="store_true", help="entries also match their plurals")
    p.add_argument("--seed", type=int, default=1, help="seed of templates and balancing")
    p.add_argument("--classnames", type=Path, help="classnames.json mapping labels to names")
    p.add_argument("--skip-bad", action="store_true", help="skip bad pairs, list them")
    csv_args(p)
    p.add_argument("--out", type=Path, required=True, help="the pairs CSV to write (new file)")
    p.add_argument("--report", type=Path, help="also write the counts as JSON (new file)")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser(
        "finetune",
        help="fine-tune the towers on image-text pairs and save a model every command takes "
        "as --model",
    )
    _model_args(p)
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="pairs: a .csv (filepath, title; several rows per image allowed), webdataset "
        ".tar shards, or labelled folders captioned by --template",
    )
    p.add_argument("--template", action="append", help="as for 'clipadapt pairs'")
    p.add_argument("--one-per-image", action="store_true", help="as for 'clipadapt pairs'")
    p.add_argument("--extract-dir", type=Path, help="webdataset: folder to extract images to")
    p.add_argument("--classnames", type=Path, help="classnames.json mapping labels to names")
    p.add_argument("--skip-bad", action="store_true", help="skip bad pairs, list them")
    csv_args(p)
    p.add_argument(
        "--loss", default="clip", help="clip, siglip, infoloob, cwcl, supervised, distill"
    )
    p.add_argument(
        "--train",
        default="all",
        help="what is trained: all (both towers), text (image tower locked: LiT, image "
        "features from the cache), image (text tower locked), last:N (the last N blocks), "
        "lora, or a tower and a mode, e.g. image:last:2, text:lora (default: all)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1, help="batch order, templates, LoRA init")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="split every batch into this many chunks (same gradient, less memory)",
    )
    p.add_argument(
        "--retention",
        type=float,
        default=0.0,
        help="weight of the regulariser that keeps the original model's zero-shot behaviour "
        "(distillation over ImageNet class prompts on the training images; 0: off)",
    )
    p.add_argument("--views", type=int, default=0, help="augmented views cycled per epoch")
    p.add_argument("--augment", default="crop,flip", help="transforms of the augmented views")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--image-path",
        choices=["cached", "reencode"],
        default="cached",
        help="a locked image tower's features: from the feature cache, computed once "
        "(default), or the tower run at every step (for --views with --train text)",
    )
    p.add_argument("--out", type=Path, required=True, help="the model directory to write")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "demo",
        help="the main job: adapt the built-in model to the textile images, compare to zero-shot",
    )
    p.add_argument("--output-dir", type=Path, default=Path("results/demo"))
    p.add_argument("--method", default=DEMO_METHOD)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=cmd_demo)
    return parser


def _bench_args(p: argparse.ArgumentParser) -> None:
    """Every flag defaults to None so that a --config file supplies the rest."""
    p.add_argument("--config", type=Path, help="YAML file with the same keys as these flags")
    p.add_argument("--model", help="model spec (default: lite)")
    p.add_argument("--data", help="domain-folders root, image folder, .csv or builtin:<name>")
    p.add_argument(
        "--protocol",
        help=f"one or more (comma-separated) of {', '.join(PROTOCOLS)} (default: single_source)",
    )
    p.add_argument("--known-classes", type=int, help="known classes of near_ood/open_set_dg")
    p.add_argument("--ood-data", help="far_ood: comma-separated OOD dataset folders")
    p.add_argument("--detectors", help="comma-separated OOD scores (default: all)")
    p.add_argument(
        "--accept", type=float, help="validation share an OOD threshold accepts (default: 0.95)"
    )
    p.add_argument(
        "--corruptions",
        help="corruptions protocol: comma-separated names (default: ImageNet-C's 15 + extras)",
    )
    p.add_argument("--severities", help="corruptions protocol: severities 1-5 (default: all)")
    p.add_argument("--methods", help="comma-separated method names (default: all)")
    p.add_argument(
        "--selection",
        choices=SELECTION_MODES,
        help="hyperparameter selection (default: validation)",
    )
    p.add_argument(
        "--calibrate",
        choices=CALIBRATION_MODES,
        help="post-hoc calibration: temperature scaling fitted on the few-shot validation set "
        "(default: none)",
    )
    p.add_argument("--shots", help="comma-separated shot counts (default: 1,2,4,8,16)")
    p.add_argument("--seeds", help="comma-separated seeds (default: 1,2,3)")
    p.add_argument("--sources", help="source domains (held-out ones for lodo; default: all)")
    p.add_argument(
        "--views", type=int, help=f"augmented views per image (default: {DEFAULT_VIEWS})"
    )
    p.add_argument(
        "--augment",
        help="transforms of the augmented views: crop, flip, shift (default: crop,flip)",
    )
    p.add_argument("--split-seed", type=int, help="train/test split seed (default: 1)")
    p.add_argument("--test-fraction", type=float, help="test share per class (default: 0.3)")
    p.add_argument("--templates", help="template set or file (default: default)")
    p.add_argument("--on-too-few", choices=["error", "use_all"], help="default: error")
    p.add_argument("--classnames", type=Path, help="classnames.json mapping folders to names")
    p.add_argument("--device", help="default: cpu")
    p.add_argument("--cache-dir", type=Path, help="feature cache directory")
    p.add_argument("--skip-bad", action="store_const", const=True, help="skip unreadable images")
    p.add_argument("--out", type=Path, help="results directory")
    p.add_argument("--overwrite", action="store_true", help="replace results of other configs")
    p.add_argument(
        "--prepare-only", action="store_true", help="only compute and cache the features needed"
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lite", help="model spec (see 'clipadapt models')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", type=Path, help="feature cache directory")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder, domain folders, .csv or builtin:<name>")
    p.add_argument("--classnames", type=Path, help="classnames.json mapping folder names to names")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, list them")
    csv_args(p)


def csv_args(p: argparse.ArgumentParser) -> None:
    """How a CSV of image paths is read (open_clip's column names by default)."""
    p.add_argument("--csv-sep", default=",", help="CSV field separator (default: ',')")
    p.add_argument("--path-column", default="filepath", help="CSV column of image paths")
    p.add_argument("--label-column", default="label", help="CSV column of class labels")
    p.add_argument("--caption-column", default="title", help="CSV column of captions")


def _csv_options(args: argparse.Namespace) -> dict[str, str]:
    return {
        "sep": args.csv_sep,
        "path_column": args.path_column,
        "label_column": args.label_column,
        "caption_column": args.caption_column,
    }


# -- commands ---------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> None:
    from clipadapt.models import SPEC_FORMS, available_models

    for form, what in SPEC_FORMS.items():
        print(f"{form:40s} {what}")
    if args.all:
        print()
        print("\n".join(available_models()))


def cmd_embed(args: argparse.Namespace) -> None:
    if args.engine == "ray":
        _check_ray_args(args)
    datasets = _datasets(args)  # bad data fails here, before torch loads
    from safetensors.torch import save_file

    from clipadapt.atomic import atomic_write
    from clipadapt.features import extract_features

    backend = _backend(args)
    if args.engine == "ray":
        _embed_with_ray(args, backend)
        if not args.output:
            return  # the features are in the shards and the cache
    for name, dataset in datasets.items():
        feats = extract_features(
            backend,
            dataset.paths,
            view=args.view,
            cache=_cache(args),
            skip_bad=args.skip_bad or args.engine == "ray",  # ray listed them already
            progress=not args.quiet,
        )
        print(
            f"{name}: {len(feats.indices)} images, {feats.cached} from cache, "
            f"{feats.computed} computed, {len(feats.skipped)} skipped"
        )
        if args.output:
            import torch

            target = (
                args.output if len(datasets) == 1 else args.output / f"{_slug(name)}.safetensors"
            )
            labels = torch.from_numpy(dataset.labels[feats.indices])
            tensors = {"features": feats.features, "labels": labels}
            meta = {
                "model": backend.info.spec,
                "image_fingerprint": backend.image_fingerprint,
                "view": args.view,
                # row i is the image paths[i]; labels index class_ids (as split files do)
                "paths": json.dumps([str(dataset.samples[i].path) for i in feats.indices]),
                "class_ids": json.dumps(dataset.class_ids),
                "classnames": json.dumps(dataset.classnames),
            }
            atomic_write(target, lambda p, t=tensors, m=meta: save_file(t, str(p), metadata=m))


def _require_scale(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
        raise ValueError(f"{what} needs Ray Data and pyarrow: pip install 'clipadapt[scale]'")


def _check_ray_args(args: argparse.Namespace) -> None:
    _require_scale("--engine ray")
    if args.shards is None:
        raise ValueError("--engine ray writes Parquet shards: give their folder with --shards DIR")
    if args.no_cache and args.output:
        raise ValueError(
            "--engine ray with --output reads the imported features from the cache; drop --no-cache"
        )
    for flag, value in (("--workers", args.workers), ("--shard-size", args.shard_size)):
        if value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value}")
    if args.worker_cpus <= 0:
        raise ValueError(f"--worker-cpus must be > 0, got {args.worker_cpus}")


def _embed_with_ray(args: argparse.Namespace, backend) -> None:
    """Run the Ray job over every dataset's images, then import its shards into the cache."""
    from clipadapt.scale.ray_embed import embed_with_ray, start_ray
    from clipadapt.scale.shards import import_shards

    paths = list(dict.fromkeys(p for d in _datasets(args).values() for p in map(str, d.paths)))
    start_ray()
    job = embed_with_ray(
        backend,
        paths,
        args.shards,
        view=args.view,
        workers=args.workers,
        worker_cpus=args.worker_cpus,
        shard_size=args.shard_size,
        progress=not args.quiet,
    )
    _print_skipped(job.skipped)
    print(
        f"{len(paths)} images in {job.shards} shards ({job.reused} already finished), "
        f"{job.computed} computed, {len(job.skipped)} skipped; shards in {job.directory}"
    )
    if _cache(args) is not None:
        imported = import_shards(args.shards, _cache(args))
        print(f"imported {imported.rows} features from {imported.shards} shards into the cache")


def cmd_zeroshot(args: argparse.Namespace) -> None:
    datasets = _datasets(args)  # bad data fails here, before torch loads
    from clipadapt.atomic import atomic_write_json
    from clipadapt.bench.zeroshot import run_zeroshot
    from clipadapt.prompts import make_prompt_set

    backend = _backend(args)
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
            atomic_write_json(target, result)
        rows.append(result)
    if not args.quiet:
        print(format_metrics_table(rows))


def cmd_cache(args: argparse.Namespace) -> None:
    from clipadapt.feature_cache import FeatureCache

    if args.action == "import":
        if args.shards is None:
            raise ValueError("cache import: give the folder of Parquet shards to import")
        _require_scale("cache import")
        from clipadapt.scale.shards import import_shards

        cache = FeatureCache(args.cache_dir)
        done = import_shards(args.shards, cache)
        print(
            f"imported {done.rows} features from {done.shards} shards into {cache.path} "
            f"({len(done.skipped)} files the shards list as unreadable)"
        )
        return
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


def cmd_bench(args: argparse.Namespace) -> None:
    from clipadapt.bench.config import BenchConfig, read_config_file
    from clipadapt.catalog import check_detector, check_method

    values = read_config_file(args.config) if args.config else {}
    names = [field.name for field in dataclasses.fields(BenchConfig)]
    flags = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    where = f"benchmark config {args.config}" if args.config else "clipadapt bench"
    config = BenchConfig.from_mapping(values | flags, where=where)
    for name in config.method_names.values():  # before torch loads
        check_method(name)
    for name in config.detectors:
        check_detector(name)
    from clipadapt.bench.runner import run_bench

    summary = run_bench(
        config, overwrite=args.overwrite, prepare_only=args.prepare_only, progress=not args.quiet
    )
    if args.prepare_only:
        print(f"features ready for the {summary.planned} planned runs")
        return
    print(
        f"{len(summary.ran)} runs done, {len(summary.skipped)} already finished, in "
        f"{summary.wall_seconds:.1f} s; results in {config.out}\n"
        f"next: clipadapt report {config.out}"
    )


def cmd_report(args: argparse.Namespace) -> None:
    if not args.results.is_dir():  # before matplotlib and torch load
        raise ValueError(f"{args.results} is not a folder; give the --out of clipadapt bench")
    from clipadapt.bench.report import write_report

    written = write_report(args.results, args.out or args.results / "report")
    for kind, path in written.items():
        print(f"{kind:9s} {path}")


def cmd_adapt(args: argparse.Namespace) -> None:
    from clipadapt.catalog import check_detector, check_method
    from clipadapt.saved import check_model_dir
    from clipadapt.views import parse_augment

    check_model_dir(args.out)
    check_method(args.method)  # every argument is checked before torch or a model loads
    augment = parse_augment(args.augment)
    if not args.no_ood:
        check_detector(args.ood_score)
    for flag, value, minimum in (("--shots", args.shots, 1), ("--views", args.views, 0)):
        if value < minimum:
            raise ValueError(f"{flag} must be an integer >= {minimum}, got {value}")
    if not 0 < args.accept <= 1:
        raise ValueError(f"--accept must be in (0, 1], got {args.accept}")
    if not 0 <= args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    dataset = _single_dataset(args)
    from clipadapt.adapted import adapt

    adapted = adapt(
        _backend(args),
        dataset,
        args.out,
        method=args.method,
        shots=args.shots,
        seed=args.seed,
        views=args.views,
        augment=augment,
        templates=args.templates,
        split_seed=args.split_seed,
        test_fraction=args.test_fraction,
        on_too_few=args.on_too_few,
        selection=args.selection,
        cache=_cache(args),
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        ood_score=None if args.no_ood else args.ood_score,
        accept=args.accept,
        calibrate=args.calibrate,
    )
    if _other_rank():
        return  # another rank of a torchrun job; rank 0 reports and saves
    print(format_adapted(adapted))
    print(f"model saved to {args.out}; label images with: clipadapt predict {args.out} <images>")


def cmd_predict(args: argparse.Namespace) -> None:
    from clipadapt.saved import read_config

    read_config(args.model_dir)  # a missing or foreign model fails here, before torch loads
    paths = image_paths(args.images)
    from clipadapt.adapted import (
        check_backend,
        load_adapted,
        predict,
        predictions_csv,
        write_predictions,
    )
    from clipadapt.models import create_backend

    adapted = load_adapted(args.model_dir)
    backend = create_backend(adapted.info["model"]["spec"], args.device)
    check_backend(adapted, backend, args.model_dir)
    rows, skipped = predict(
        adapted,
        backend,
        paths,
        cache=_cache(args),
        skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    _print_skipped(skipped)
    if args.output:
        print(f"{len(rows)} predictions written to {write_predictions(rows, args.output)}")
    else:  # file names that are not UTF-8 go out as the bytes they are
        sys.stdout.flush()
        sys.stdout.buffer.write(predictions_csv(rows).encode("utf-8", "surrogateescape"))
        sys.stdout.buffer.flush()


def cmd_serve(args: argparse.Namespace) -> None:
    limits = _serve_limits(args)
    import uvicorn

    from clipadapt.serve import create_app

    app = create_app(
        args.model_dir,
        args.index,
        device=args.device,
        limits=limits,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
    )
    print(f"serving {args.model_dir} on http://{args.host}:{args.port}/ (Ctrl+C stops)")
    # connections past the queue (plus a few for /health and the page) get 503 unread, which
    # bounds the memory held by request bodies to about (max_queue + 8) x --max-upload-mb
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning" if args.quiet else "info",
        limit_concurrency=args.max_queue + 8,
    )


def _serve_limits(args: argparse.Namespace):
    """Check every ``serve`` argument without loading anything; the upload limits."""
    import importlib.util

    missing = [
        m for m in ("fastapi", "uvicorn", "python_multipart") if not importlib.util.find_spec(m)
    ]
    if missing:
        raise ValueError(
            f"clipadapt serve needs {', '.join(missing)}: pip install 'clipadapt[serve]'"
        )
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: use a port from 1 to 65535")
    if not _valid_host(args.host):
        raise ValueError(f"--host {args.host!r}: give an IP address or a host name")
    for flag, value, low in (
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 1),
        ("--max-files", args.max_files, 1),
        ("--max-wait-ms", args.max_wait_ms, 0),
    ):
        if value < low:
            raise ValueError(f"{flag} {value}: must be at least {low}")
    from PIL import Image

    pillow_cap = Image.MAX_IMAGE_PIXELS / 1e6
    if args.max_upload_mb <= 0 or not 0 < args.max_megapixels <= pillow_cap:
        raise ValueError(
            f"--max-upload-mb must be positive and --max-megapixels from 0 to {pillow_cap:.0f} "
            f"(Pillow's own decompression-bomb limit); got {args.max_upload_mb:g} and "
            f"{args.max_megapixels:g}"
        )
    from clipadapt.index import is_index_dir

    if args.index is not None and not is_index_dir(args.index):
        raise ValueError(f"--index {args.index} is not a clipadapt index directory")
    from clipadapt.saved import is_adapted_dir

    if not is_adapted_dir(args.model_dir):
        raise ValueError(
            f"{args.model_dir} is not a clipadapt adapted model (no config.json written by "
            "clipadapt adapt); give the --out directory of clipadapt adapt"
        )
    from clipadapt.serve.uploads import Limits

    return Limits(
        max_body_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_files=args.max_files,
        max_pixels=int(args.max_megapixels * 1_000_000),
    )


def _valid_host(host: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
        return len(host) <= 253 and re.fullmatch(rf"{label}(\.{label})*", host) is not None


def cmd_index(args: argparse.Namespace) -> None:
    from clipadapt.index import check_index_dir
    from clipadapt.index.collection import collection_paths, index_images
    from clipadapt.index.kinds import check_recall_target

    check_index_dir(args.out)
    check_recall_target(args.recall_target)
    csv_options = _csv_options(args) if str(args.data).lower().endswith(".csv") else {}
    paths = collection_paths(args.data, **csv_options)
    index, feats = index_images(
        _backend(args),
        paths,
        args.out,
        kind=args.kind,
        cache=_cache(args),
        skip_bad=args.skip_bad,
        seed=args.seed,
        recall_target=args.recall_target,
        progress=not args.quiet,
    )
    _print_skipped(feats.skipped)
    print(
        f"indexed {len(index)} images ({feats.cached} from cache, {feats.computed} computed, "
        f"{len(feats.skipped)} skipped) into {args.out}: {index.kind}"
    )
    if index.kind == "ivfpq":
        build = index.meta["build"]
        print(
            f"ivfpq: nlist {build['nlist']}, m {build['m']}, nbits {build['nbits']}, "
            f"nprobe {build['nprobe']} of {build['nlist']} cells, recall@10 "
            f"{build['recall@10']:.3f} against exact search ({build['recall_convention']})"
        )


def cmd_search(args: argparse.Namespace) -> None:
    from clipadapt.index import load_index
    from clipadapt.index.collection import check_query_backend, encode_query
    from clipadapt.models import create_backend

    if args.k < 1:
        raise ValueError(f"--k must be an integer >= 1, got {args.k}")
    if args.image is not None and not args.image.is_file():
        raise FileNotFoundError(f"--image {args.image} is not a file")
    if args.text is not None and not args.text.strip():
        raise ValueError("--text is empty; give the words to search for")
    index = load_index(args.index_dir)
    backend = create_backend(args.model or index.model_spec, args.device)
    check_query_backend(index, backend, str(args.index_dir))
    query = encode_query(backend, text=args.text, image=args.image)
    scores, ids = index.search(query, args.k)
    lines = [
        f"{rank}\t{score:.4f}\t{index.paths[row]}"
        for rank, (score, row) in enumerate(zip(scores[0], ids[0], strict=True), 1)
        if row >= 0
    ]
    sys.stdout.flush()  # file names that are not UTF-8 go out as the bytes they are
    sys.stdout.buffer.write(
        "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")
    )
    sys.stdout.buffer.flush()


def cmd_pairs(args: argparse.Namespace) -> None:
    from clipadapt.atomic import atomic_write_json
    from clipadapt.data.curation import balance, drop_exact_duplicates, read_entries
    from clipadapt.data.pair_sources import DEFAULT_PAIR_TEMPLATES, load_pairs
    from clipadapt.data.pairs import write_pairs_csv

    if (args.entries is not None or args.class_entries) != (args.cap is not None):
        raise ValueError("balancing needs --cap and entries (--entries FILE or --class-entries)")
    if args.entries is not None and args.class_entries:
        raise ValueError("give --entries or --class-entries, not both")
    for target in (args.out, args.report):
        if target is not None and target.exists():
            raise ValueError(f"{target} already exists; choose another file or remove it")
    entries = None if args.entries is None else read_entries(args.entries)
    options = {
        "templates": args.template or DEFAULT_PAIR_TEMPLATES,
        "one_per_image": args.one_per_image,
        "seed": args.seed,
        "extract_dir": args.extract_dir,
        "classnames_file": args.classnames,
        "skip_bad": args.skip_bad,
        **_csv_options(args),
    }
    pairs = load_pairs(args.data, **options)
    report: dict[str, Any] = {"loaded": len(pairs), "skipped": pairs.skipped}
    _print_skipped(pairs.skipped)
    if args.test:
        test = load_pairs(args.test, **options)
        pairs, dedup = drop_exact_duplicates(pairs, test)
        report["dedup"] = dedup.to_dict()
        print(
            f"dedup against {len(test.images)} test images ({dedup.method}): dropped "
            f"{dedup.dropped_images} of {dedup.train_images} images, {dedup.dropped_pairs} pairs"
        )
    if args.cap is not None:
        if args.class_entries and not pairs.classnames:
            raise ValueError("--class-entries needs labelled pairs; give --entries FILE")
        pairs, curation = balance(
            pairs, entries or pairs.classnames, cap=args.cap, seed=args.seed, plurals=args.plurals
        )
        report["balance"] = curation.to_dict()
        print(
            f"balanced with cap {curation.cap}: kept {curation.kept} of {curation.total} pairs "
            f"({curation.unmatched} matched no entry)"
        )
        for entry, (before, after) in curation.entries.items():
            print(f"  {entry}: {before} -> {after}")
    write_pairs_csv(pairs, args.out)
    print(f"wrote {len(pairs)} pairs of {len(pairs.images)} images to {args.out}")
    if args.report is not None:
        atomic_write_json(args.report, report)


def cmd_finetune(args: argparse.Namespace) -> None:
    from clipadapt.data.pair_sources import DEFAULT_PAIR_TEMPLATES, load_pairs
    from clipadapt.saved import check_model_dir
    from clipadapt.train.options import FinetuneOptions, parse_train
    from clipadapt.views import parse_augment

    check_model_dir(args.out, finetuned=True)  # every argument is checked before torch loads
    towers, mode = parse_train(args.train)
    options = FinetuneOptions(
        loss=args.loss,
        train=mode,
        towers=towers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        precision=args.precision,
        accumulate=args.accumulate,
        retention=args.retention,
        views=args.views,
        augment=parse_augment(args.augment),
        lora_rank=args.lora_rank,
        image_path=args.image_path,
    )
    for source in args.data:
        if not str(source).startswith("builtin:") and not Path(source).exists():
            raise FileNotFoundError(f"--data {source}: no such file or folder")
    from clipadapt.models.prompt_access import promptable_text
    from clipadapt.train.finetune import finetune_model

    backend = _backend(args)
    access = promptable_text(backend)
    pairs = load_pairs(
        args.data,
        templates=args.template or DEFAULT_PAIR_TEMPLATES,
        one_per_image=args.one_per_image,
        seed=args.seed,
        extract_dir=args.extract_dir,
        classnames_file=args.classnames,
        skip_bad=args.skip_bad,
        count_tokens=lambda text: access.count_tokens(text) + access.specials,
        max_tokens=access.max_length,
        **_csv_options(args),
    )
    _print_skipped(pairs.skipped)
    result = finetune_model(
        backend, pairs, options, args.out, cache=_cache(args), progress=not args.quiet
    )
    if _other_rank():
        return
    record = result.record
    seconds = record["epoch_seconds"]
    print(
        f"fine-tuned {'/'.join(result.towers)} ({options.train}, loss {options.loss}) on "
        f"{record['pairs']} pairs of {record['images']} images: {options.epochs} epochs"
        + (f", {sum(seconds) / len(seconds):.1f} s per epoch run here" if seconds else "")
        + f", final loss {record['final_loss']:.4f}"
    )
    print(f"model saved to {args.out}; use it anywhere as --model {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from clipadapt.atomic import atomic_write_json
    from clipadapt.demo import run_demo

    result = run_demo(
        args.output_dir,
        method=args.method,
        shots=args.shots,
        cache=_cache(args),
        progress=not args.quiet,
    )
    print(format_demo(result))
    written = atomic_write_json(args.output_dir / "result.json", result)
    print(f"results written to {written.parent}")


# -- helpers ----------------------------------------------------------------------------
def _print_skipped(skipped: list[dict[str, str]]) -> None:
    """One stderr line per image left out (its path already as ``display_path`` prints it)."""
    for item in skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)


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


def _single_dataset(args: argparse.Namespace) -> ImageDataset:
    datasets = _datasets(args)
    if len(datasets) > 1:
        raise DatasetError(
            f"{args.data} holds domains ({', '.join(datasets)}); give one domain's folder, "
            f"e.g. {Path(args.data) / next(iter(datasets)).split('/')[-1]}"
        )
    return next(iter(datasets.values()))


def _datasets(args: argparse.Namespace) -> dict[str, ImageDataset]:
    if not hasattr(args, "_datasets"):
        options = _csv_options(args) if str(args.data).lower().endswith(".csv") else {}
        loaded = load_dataset(
            args.data, classnames_file=args.classnames, skip_bad=args.skip_bad, **options
        )
        args._datasets = loaded if isinstance(loaded, dict) else {loaded.name: loaded}
    return args._datasets


def _slug(name: str) -> str:
    return name.replace("/", "_")


def _output_path(output: Path | None, name: str, count: int) -> Path | None:
    if output is None:
        return None
    return output if count == 1 else output / f"{_slug(name)}.json"


def format_adapted(adapted) -> str:
    """The held-out comparison of an adapted model against zero-shot, as text."""
    info, name = adapted.info, adapted.method.name
    fewshot = info["fewshot"]
    head = (
        f"{name}: {fewshot['shots']} shots per class (seed {fewshot['seed']}, "
        f"{fewshot['views']} augmented views), fitted in {info['fit_seconds'] * 1000:.0f} ms"
    )
    evaluation = info["evaluation"]
    if adapted.open_set is not None:
        o, about = adapted.open_set, info["open_set"]
        rate = about["false_unknown_rate"]
        head += (
            f"\nunknown threshold: {o.detector.name} score > {o.threshold:.4g} "
            f"({about['why']}); set to accept {o.accept:.0%} of {rate['n_val']} known-image "
            f"scores ({about['calibrated_on']}), so about {rate['expected']:.1%} of known-class "
            f"images will be called unknown ({rate['level']:.0%} interval "
            f"{rate['low']:.1%}-{rate['high']:.1%} at this calibration size)"
        )
    calibration = info.get("calibration") or {}
    if calibration.get("mode") == "temperature":
        head += f"\n{format_temperature(calibration)}"
    if evaluation is None:
        return head + "; no test split held out (--test-fraction 0), so no accuracy to report"
    zs, ours = evaluation["zeroshot"]["acc1"], evaluation[name]["acc1"]
    text = (
        f"{head}\ntest split ({evaluation['n']} images): zero-shot acc1 {zs:.4f}, "
        f"{name} acc1 {ours:.4f} ({(ours - zs) * 100:+.1f} points)"
    )
    if "known_accepted" in evaluation:
        text += f"; {evaluation['known_accepted']:.1%} of them accepted as known"
    scored = evaluation[name].get("calibration", {})
    if "temperature_scaled" in scored:
        before, after = scored["uncalibrated"]["ece"], scored["temperature_scaled"]["ece"]
        text += f"\ntest ECE (15 equal-width bins): {before:.4f} raw, {after:.4f} with T"
    return text


def format_temperature(calibration: dict[str, Any]) -> str:
    """How a saved temperature was fitted, as one line."""
    if calibration["reason"]:
        return f"temperature T = 1 ({calibration['reason']})"
    return (
        f"temperature T = {calibration['temperature']:.4g}, fitted on the "
        f"{calibration['fitted_on']} ({calibration['n']} images; NLL "
        f"{calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}); predict's "
        "scores are softmax(logits / T)"
    )


def format_demo(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']}: {result['n_test']} test images, {result['shots']} shots per class "
        f"(seed {result['seed']}), model {result['model_spec']}"
    ]
    keys = ("acc1", "mean_per_class_recall", "macro_f1")
    lines.append(f"{'method':16s}" + "".join(f"{k:>24s}" for k in keys))
    for name, metrics in result["metrics"].items():
        lines.append(f"{name:16s}" + "".join(f"{metrics[k]:24.4f}" for k in keys))
    lines.append(f"gain over zero-shot: {result['gain_acc1'] * 100:+.1f} acc1 points")
    if chosen := result.get("chosen"):
        scores = ", ".join(
            f"{name} {score:.3f}"
            for name, score in chosen["candidates"].items()
            if score is not None
        )
        lines.append(
            f"auto chose {chosen['value']} by {chosen.get('folds', 'no')}-fold cross-validation "
            f"on the labelled few-shot images only (acc1: {scores})"
        )
    return "\n".join(lines)


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
