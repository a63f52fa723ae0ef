"""The few-shot grid benchmark: wall time from a warm cache, fit times, peak memory, report.

Run from the repository root (defaults: the PACS-100 single-source grid of the issue):

    .venv/bin/python benchmarks/fewshot_grid.py
    .venv/bin/python benchmarks/fewshot_grid.py \
        --config benchmarks/digits_single_source.yaml --headline-source mnist \
        --report benchmarks/results/digits_fewshot \
        --summary benchmarks/results/fewshot_grid_digits.json

Steps, each through the ``clipadapt`` command a user would type:
1. ``clipadapt bench --prepare-only``: fill the feature cache (plain and augmented views);
2. ``clipadapt bench`` into an emptied results directory, in a child process whose wall
   time and peak resident memory (``wait4``) are measured: the "warm cache" figures;
3. ``clipadapt report`` into ``--report``;
   (``--selection cv`` runs the same grid choosing hyperparameters by cross-validation, into
   ``<out>_cv``);
4. a JSON summary: wall time, per-method median fit and predict times, peak RSS, and the
   headline rows (``--headline-source`` at the largest shot count: in-domain and the mean
   over the other domains for every method).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from clipadapt.bench.aggregate import aggregate, load_results
from clipadapt.bench.config import BenchConfig, read_config_file
from clipadapt.bench.protocols import IN_DOMAIN, OTHERS_MEAN
from clipadapt.bench.runner import check_results_dir
from clipadapt.pipeline.results import RunResult

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "clipadapt.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "pacs100_single_source.yaml")
    parser.add_argument("--report", type=Path, default=HERE / "results" / "pacs100_fewshot")
    parser.add_argument(
        "--summary", type=Path, default=HERE / "results" / "fewshot_grid_pacs100.json"
    )
    parser.add_argument("--headline-source", default="photo")
    parser.add_argument("--resume", action="store_true", help="keep finished runs (no timing)")
    parser.add_argument(
        "--selection",
        choices=("validation", "cv"),
        help="override the config's hyperparameter selection (results go to <out>_<selection>)",
    )
    args = parser.parse_args()
    values = read_config_file(args.config)
    overrides = []
    if args.selection:
        values |= {"selection": args.selection, "out": f"{values['out']}_{args.selection}"}
        overrides = ["--selection", args.selection, "--out", values["out"]]
    config = BenchConfig.from_mapping(values, where=str(args.config))
    if config.out.exists() and not args.resume:
        check_results_dir(config.out)  # only ever delete a bench results directory
        shutil.rmtree(config.out)

    bench = [*CLI, "-q", "bench", "--config", str(args.config), *overrides]
    start = time.perf_counter()
    subprocess.run([*bench, "--prepare-only"], check=True)
    prepare_seconds = time.perf_counter() - start

    start = time.perf_counter()
    child = subprocess.Popen(bench)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"clipadapt bench failed with status {status}")
    subprocess.run([*CLI, "report", str(config.out), "--out", str(args.report)], check=True)

    results = load_results(config.out)
    summary = {
        "command": " ".join(
            ["clipadapt -q bench --config", _relative(args.config), *overrides[:2]]
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "runs": len(results),
        "prepare_seconds": round(prepare_seconds, 1),
        "wall_seconds_warm_cache": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        **_timings(results),
        "headline": _headline(results, args.headline_source),
        "report": _relative(args.report),
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _relative(path: Path) -> str:
    """``path`` relative to the repository root (for the summary)."""
    return str(path.resolve().relative_to(HERE.parent))


def _timings(results: list[RunResult]) -> dict:
    """Median fit and predict seconds per method, over all runs and at the largest K."""
    top = max(r.shots for r in results)
    fit, fit_top, predict = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in results:
        fit[r.method].append(r.timing["fit_seconds"])
        predict[r.method].append(r.timing["predict_seconds"])
        if r.shots == top:
            fit_top[r.method].append(r.timing["fit_seconds"])
    ms = lambda values: round(statistics.median(values) * 1000, 2)  # noqa: E731
    return {
        "fit_ms_median": {m: ms(v) for m, v in fit.items()},
        f"fit_ms_median_at_{top}_shots": {m: ms(v) for m, v in fit_top.items()},
        "predict_ms_median": {m: ms(v) for m, v in predict.items()},
    }


def _headline(results: list[RunResult], source: str) -> dict:
    """In-domain and other-domain acc1 (mean, std over seeds) of ``source`` at the largest K."""
    top = max(r.shots for r in results)
    rows: dict[str, dict] = defaultdict(dict)
    for key, cell in aggregate(results).items():
        if key.group == source and key.shots == top and key.role in (IN_DOMAIN, OTHERS_MEAN):
            rows[key.method][key.role] = {"mean": round(cell.mean, 4), "std": round(cell.std, 4)}
    return {"source": source, "shots": top, "acc1": dict(rows)}


if __name__ == "__main__":
    main()
