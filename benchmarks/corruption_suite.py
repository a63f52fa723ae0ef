"""The corruption suite benchmark: wall time from a cold and a warm cache, mCE table, report.

Run from the repository root (defaults: the PACS-100 photo suite of the issue):

    .venv/bin/python benchmarks/corruption_suite.py
    .venv/bin/python benchmarks/corruption_suite.py --severities 1,3,5   # a smaller grid

Steps, each through the ``clipadapt`` command a user would type:
1. cold: ``clipadapt bench`` with an empty feature cache (a fresh temporary directory): every
   clean and corrupted test image and every few-shot image is decoded, corrupted and
   embedded, then every method is fitted and scored;
2. warm: the same command into an emptied results directory with that cache: no image is
   read, only cached features and the fits;
3. ``clipadapt report`` into ``--report`` (tables, heat maps, severity curves);
4. a JSON summary: both wall times, the machine's load, and per method the clean accuracy,
   mean corruption accuracy, mCE and relative mCE (mean and std over seeds).
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
import tempfile
import time
from pathlib import Path

from clipadapt.bench.aggregate import aggregate, corruption_errors, load_results
from clipadapt.bench.config import BenchConfig, read_config_file
from clipadapt.bench.protocols import CLEAN, CORRUPTION_MEAN, EXTRA_CORRUPTION_MEAN
from clipadapt.bench.runner import check_results_dir

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "clipadapt.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "pacs100_corruptions.yaml")
    parser.add_argument("--report", type=Path, default=HERE / "results" / "pacs100_corruptions")
    parser.add_argument(
        "--summary", type=Path, default=HERE / "results" / "corruption_suite_pacs100.json"
    )
    parser.add_argument("--corruptions", help="override the config's corruptions")
    parser.add_argument("--severities", help="override the config's severities")
    args = parser.parse_args()
    values = read_config_file(args.config)
    overrides = []
    for name in ("corruptions", "severities"):
        if getattr(args, name):
            values[name] = getattr(args, name)
            overrides += [f"--{name}", getattr(args, name)]
    config = BenchConfig.from_mapping(values, where=str(args.config))
    cache = Path(tempfile.mkdtemp(prefix="clipadapt-corruption-cache-"))
    bench = [*CLI, "-q", "bench", "--config", str(args.config), *overrides]
    bench += ["--cache-dir", str(cache)]
    try:
        walls = {}
        for state in ("cold", "warm"):
            if config.out.exists():
                check_results_dir(config.out)  # only ever delete a bench results directory
                shutil.rmtree(config.out)
            start = time.perf_counter()
            subprocess.run(bench, check=True)
            walls[state] = round(time.perf_counter() - start, 1)
            walls[f"load_average_after_{state}"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    subprocess.run([*CLI, "report", str(config.out), "--out", str(args.report)], check=True)
    summary = {
        "command": " ".join(["python benchmarks/corruption_suite.py", *overrides]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "a shared machine: other jobs ran alongside (see the load averages)",
        },
        "corruptions": list(config.corruptions),
        "severities": list(config.severities),
        "wall_seconds": walls,
        "headline": _headline(config),
        "report": str(args.report.resolve().relative_to(HERE.parent)),
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _headline(config: BenchConfig) -> dict:
    """Per source and method at the largest K: clean acc1, mCA, extra mean, mCE, rel. mCE."""
    results = load_results(config.out)
    cells = aggregate(results)
    top = max(r.shots for r in results)
    out: dict[str, dict] = {}
    for key, cell in cells.items():
        if key.shots == top and key.role in (CLEAN, CORRUPTION_MEAN, EXTRA_CORRUPTION_MEAN):
            row = out.setdefault(key.group, {}).setdefault(key.method, {})
            row[key.role] = _stats(cell.values)
    for group, rows in out.items():
        for method, row in rows.items():
            errors = corruption_errors(cells, group, method, top)
            if errors is not None:
                row["mCE"] = _stats([v for v in errors.mce if v is not None])
                row["relative_mCE"] = _stats([v for v in errors.relative_mce if v is not None])
    return {"shots": top, "baseline": "zeroshot", "by_source": out}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}


if __name__ == "__main__":
    main()
