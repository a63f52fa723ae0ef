"""What a user waits for: process start, one-image predict, the cold demo; before and after.

Every figure is a whole new process, timed from outside (``os.wait4``: wall, user and system
CPU time, peak resident memory). "before" runs the same commands on an earlier checkout's
``src`` (``--before``, e.g. ``git worktree add /tmp/before d16a412``) with this venv, "after"
on this tree; the two alternate run by run (before, after, before, ...) so that load on the
machine falls on both alike; medians are reported.

- ``help``: ``clipadapt --help``; ``bad_argument``: ``clipadapt adapt --method foo ...``
  (must fail with exit code 2 before any model loads).
- ``predict``: ``clipadapt -q predict MODEL one.jpg --no-cache`` (the image is encoded, as a
  new image would be), MODEL a GDA model adapted by the same code on 4 textile shots.
- ``cold_demo``: ``clipadapt demo`` with an empty feature cache (``$CLIPADAPT_CACHE_DIR``).

    .venv/bin/python benchmarks/startup.py --before /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "startup.json"


def timed(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``command`` in a new process: wall, user and system seconds, peak RSS, exit code."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.stderr.close()
    return {
        "wall_s": round(wall, 3),
        "user_s": round(usage.ru_utime, 3),
        "sys_s": round(usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit_code": os.waitstatus_to_exitcode(status),
    }


def summary(runs: list[dict[str, float]]) -> dict:
    keys = ("wall_s", "user_s", "sys_s", "peak_rss_mb")
    return {
        **{f"median_{k}": statistics.median(r[k] for r in runs) for k in keys},
        "exit_codes": sorted({r["exit_code"] for r in runs}),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="an earlier checkout's src/")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--demo-repeats", type=int, default=2)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "clipadapt.cli"]
    work = Path(tempfile.mkdtemp(prefix="clipadapt-startup-"))
    envs = {
        "before": {**os.environ, "PYTHONPATH": str(args.before.resolve())},
        "after": {**os.environ, "PYTHONPATH": str(HERE.parent / "src")},
    }
    image = None
    for side, env in envs.items():  # one adapted model per side, warm cache for the adapt
        model = work / f"model_{side}"
        adapt = ["adapt", "--data", "builtin:textile", "--shots", "4", "--method", "gda"]
        subprocess.run(
            [*cli, "-q", *adapt, "--out", str(model)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if image is None:  # a held-out test image of the first model
            root = json.loads((model / "config.json").read_text())["adapted"]["data"]["root"]
            test = json.loads((model / "split.json").read_text())["test"][0]["path"]
            image = str(Path(root) / test)
    bad = ["adapt", "--data", "x", "--out", str(work / "no"), "--method", "foo"]
    predict = ["-q", "predict", "--no-cache"]
    commands = {
        "help": lambda side: [*cli, "--help"],
        "bad_argument": lambda side: [*cli, *bad],
        "predict": lambda side: [*cli, *predict, str(work / f"model_{side}"), image],
    }
    results: dict[str, dict] = {}
    for name, command in commands.items():
        runs: dict[str, list] = {side: [] for side in envs}
        for _ in range(args.repeats):
            for side, env in envs.items():
                runs[side].append(timed(command(side), env))
        results[name] = {side: summary(r) for side, r in runs.items()}
    demo: dict[str, list] = {side: [] for side in envs}
    for i in range(args.demo_repeats):
        for side, env in envs.items():
            cache = work / f"cache_{side}_{i}"
            out = work / f"demo_{side}_{i}"
            env = {**env, "CLIPADAPT_CACHE_DIR": str(cache)}
            demo[side].append(timed([*cli, "-q", "demo", "--output-dir", str(out)], env))
    results["cold_demo"] = {side: summary(r) for side, r in demo.items()}
    for side in envs:
        cold = results["cold_demo"][side]
        cold["sys_over_user"] = round(cold["median_sys_s"] / cold["median_user_s"], 3)
    report = {
        "method": __doc__.split("\n\n")[1],
        "before": str(args.before),
        "image": image,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        **results,
    }
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    for name, sides in results.items():
        line = ", ".join(
            f"{side} {s['median_wall_s']:.2f} s / {s['median_peak_rss_mb']:.0f} MB"
            for side, s in sides.items()
        )
        print(f"{name}: {line}")


if __name__ == "__main__":
    main()
