"""Fault injection: SIGKILL ``embed``, ``bench`` and a prompt learner mid-run, recover, compare.

Three scenarios, each on a small temporary copy of the data (default: PACS-100 photo and
sketch, 7 classes, the first 8 images of each class in name order: 112 images), with every
cache and output directory in a temporary folder ($CLIPADAPT_CACHE_DIR too), so the user's
cache is never touched:

- ``embed``: ``clipadapt embed --model lite --data SUBSET --cache-dir C --output F``.
- ``bench``: ``clipadapt bench --config bench.yaml``: single_source from photo (tested on
  photo's test split and all of sketch), methods ncm, gda, tip_adapter_f and coop
  (``epochs: 3``), shots [2], seeds [1], views 1.
- ``coop_resume``: the same bench with coop alone, trained longer (``--coop-epochs``, default
  12, batch 4) on a warm feature cache, so that the kill lands inside CoOp's training loop: the
  harness waits for the first per-epoch checkpoint (``<out>/checkpoints/.../coop.ckpt``) and
  kills after a random share of the training time the clean run took from that point.

For each scenario a clean reference runs first in fresh directories. Then, N times: fresh
cache and output directories are made, the command starts in a new process (its own
process group) and is killed with SIGKILL at a moment drawn from a seeded RNG. ``embed`` and
``bench``: once the run has written its first file (the cache database, a split file;
before that it only imports and loads the model, whose duration varies most on a shared
machine), after a delay drawn over the span the clean reference took from that point to its
end; ``coop_resume``: as above. Trial i of N draws uniformly within the i-th of N equal
parts of the span, so the kills cover all of it, its last part (the fits, and the result
writes) included.
The killed run's directories are kept as they are (cache, split files, results, checkpoint)
and the same command runs again to completion (the recovery). After it, the checks:

- embed: the ``--output`` features ``torch.equal`` to the reference's, same ``paths`` order;
- bench: every result JSON equal to the reference's except ``timing``, ``created`` and
  ``peak_memory_mb`` (so ``metrics``, ``selected``, hyperparameters, sizes, config hash all
  equal); split files byte-equal;
- all: the feature-cache rows (model, view, content hash -> vector bytes, and the file-hash
  index) equal to the reference cache's; ``PRAGMA integrity_check`` is ``ok`` and
  ``clipadapt cache show --cache-dir C`` exits 0; the files left in the output and cache
  directories are the reference's files (no temporary file, no checkpoint left behind;
  SQLite's own ``-wal``/``-shm`` files are allowed and listed);
- coop_resume: besides, the recovery must really resume. Every run but ``cache show`` goes
  through a launcher that calls the CLI's ``main`` as the console script does and only
  observes: it records the epoch ``_resume`` in ``clipadapt.train.loop``
  returns. When the kill left a checkpoint of epoch k, the recovery must start from k.

A kill "lands" when the process was still running (it died of SIGKILL); a kill drawn after
the process finished is counted apart, and its recovery is a plain re-run, checked the same.
Results: benchmarks/results/fault_injection.json. Exit status 1 on any mismatch or failure.

    .venv/bin/python benchmarks/fault_injection.py    # N=5 each: 5.5 min on 2 busy cores
    .venv/bin/python benchmarks/fault_injection.py --n 2 --output /tmp/fi.json  # a quick try
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from clipadapt.atomic import atomic_write_json

OUT = Path(__file__).parent / "results" / "fault_injection.json"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
VOLATILE = ("timing", "created", "peak_memory_mb")  # differ between any two runs
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

LAUNCHER = '''\
"""Runs the clipadapt CLI exactly as the console script does; it only records, for the
fault-injection harness, the epoch each checkpointed training loop starts from."""
import os
import sys

import clipadapt.train.loop as loop

_resume = loop._resume


def recording_resume(checkpoint, key, *args, **kwargs):
    start = _resume(checkpoint, key, *args, **kwargs)
    with open(os.environ["FI_RESUME_LOG"], "a") as log:
        log.write(f"{os.path.basename(str(checkpoint))} {start}\\n")
    return start


loop._resume = recording_resume
from clipadapt.cli import main  # noqa: E402

sys.exit(main())
'''


# -- processes --------------------------------------------------------------------------


class Runner:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.launcher = work / "launcher.py"
        self.launcher.write_text(LAUNCHER)
        self.env = dict(os.environ, CLIPADAPT_CACHE_DIR=str(work / "user-cache"))
        self.env.pop("PYTHONPATH", None)
        self.logs = work / "logs"
        self.logs.mkdir()
        self.count = 0

    def start(
        self, args: list[str], resume_log: Path, plain: bool = False
    ) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        log = self.logs / f"{self.count:03d}.log"
        handle = log.open("w")
        entry = ["-m", "clipadapt.cli"] if plain else [str(self.launcher)]
        proc = subprocess.Popen(
            [sys.executable, *entry, "-q", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.env | {"FI_RESUME_LOG": str(resume_log)},
            cwd=self.work,
            start_new_session=True,  # its own process group: the kill reaches every child
        )
        handle.close()
        return proc, log

    def complete(
        self, args: list[str], resume_log: Path, timeout: float = 600, plain: bool = False
    ) -> dict:
        """Run to the end; ``plain``: through the CLI itself, not the launcher (which imports
        torch up front, seconds that ``cache show`` does not otherwise spend)."""
        began = time.perf_counter()
        proc, log = self.start(args, resume_log, plain)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        out = {"rc": rc, "seconds": round(time.perf_counter() - began, 2)}
        if rc != 0:
            out["log_tail"] = log.read_text(errors="replace")[-1500:]
        return out


def kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc``'s group; True when it was still running (it died of the signal)."""
    with contextlib.suppress(ProcessLookupError):  # it ended (and was reaped) meanwhile
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait() == -signal.SIGKILL


# -- state of directories ---------------------------------------------------------------


def cache_rows(directory: Path) -> dict[str, Any]:
    """Feature rows and file-hash index of the cache in ``directory`` (read-only)."""
    db = sqlite3.connect(f"file:{directory / 'features.sqlite'}?mode=ro", uri=True)
    try:
        features = {
            (m, v, c): bytes(vec)
            for m, v, c, vec in db.execute("SELECT model, view, content, vec FROM features")
        }
        files = {
            bytes(p): (s, c) for p, s, c in db.execute("SELECT path, stamp, content FROM files")
        }
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    return {"features": features, "files": files, "integrity": integrity}


def count_rows(directory: Path) -> int | None:
    path = directory / "features.sqlite"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as err:
        return f"unreadable: {err}"  # type: ignore[return-value]


def listing(root: Path) -> dict[str, list[str]]:
    """Files (relative paths) under ``root``: ordinary, temporary (dot files) and SQLite's."""
    out: dict[str, list[str]] = {"files": [], "temporary": [], "sqlite_side": [], "dirs": []}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            (out["temporary"] if path.name.startswith(".") else out["dirs"]).append(rel + "/")
        elif path.name.startswith(".") or path.name.endswith(".tmp"):
            out["temporary"].append(rel)
        elif path.name.endswith(SQLITE_SIDE_FILES):
            out["sqlite_side"].append(rel)
        else:
            out["files"].append(rel)
    return out


def checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").rglob("*.ckpt")) if (out / "checkpoints").is_dir() else []


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return None


def read_safetensors(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8 : 8 + size]).get("__metadata__", {})
    return load_safetensors(blob)["features"], meta


def embedded(out: Path) -> dict[str, tuple[torch.Tensor, dict[str, str]]]:
    """The ``--output`` files of ``embed`` (one per domain), by name."""
    return {p.name: read_safetensors(p) for p in sorted((out / "features").glob("*.safetensors"))}


def results(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.rglob("K*_s*.json")):
        if "splits" in path.relative_to(out).parts:
            continue
        found[str(path.relative_to(out))] = json.loads(path.read_text())
    return found


def results_in(out: Path) -> bool:
    return out.is_dir() and any(
        "splits" not in p.relative_to(out).parts for p in out.rglob("K*_s*.json")
    )


def splits(out: Path) -> dict[str, bytes]:
    root = out / "splits"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.json"))}


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


# -- comparisons ------------------------------------------------------------------------


def compare_cache(ref: dict, directory: Path, problems: list[str]) -> dict:
    rows = cache_rows(directory)
    if rows["integrity"] != "ok":
        problems.append(f"cache integrity_check: {rows['integrity']}")
    if rows["features"] != ref["features"]:
        missing = set(ref["features"]) - set(rows["features"])
        extra = set(rows["features"]) - set(ref["features"])
        differ = [
            k
            for k in set(ref["features"]) & set(rows["features"])
            if ref["features"][k] != rows["features"][k]
        ]
        problems.append(
            f"cache features: {len(missing)} missing, {len(extra)} extra, "
            f"{len(differ)} with other bytes than the reference"
        )
    if rows["files"] != ref["files"]:
        problems.append("cache file-hash index differs from the reference")
    return {"feature_rows": len(rows["features"]), "integrity": rows["integrity"]}


def compare_listing(ref: dict, got: dict, where: str, problems: list[str]) -> None:
    if got["temporary"]:
        problems.append(f"{where}: temporary files left: {got['temporary']}")
    if got["files"] != ref["files"]:
        problems.append(
            f"{where}: files differ from the reference: "
            f"missing {sorted(set(ref['files']) - set(got['files']))}, "
            f"extra {sorted(set(got['files']) - set(ref['files']))}"
        )


def compare_bench(ref_out: Path, out: Path, problems: list[str]) -> dict:
    want, got = results(ref_out), results(out)
    if set(want) != set(got):
        problems.append(f"result files differ: reference {sorted(want)}, recovered {sorted(got)}")
    compared = {}
    for name in sorted(set(want) & set(got)):
        a, b = strip(want[name]), strip(got[name])
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        compared[name] = {
            "metrics_equal": a.get("metrics") == b.get("metrics"),
            "selected_equal": a.get("selected") == b.get("selected"),
            "other_keys_differing": [k for k in differing if k not in ("metrics", "selected")],
        }
        if differing:
            problems.append(f"{name}: differs from the reference in {differing}")
    if splits(ref_out) != splits(out):
        problems.append("split files differ from the reference")
    return compared


def stratified(rng: random.Random, lo: float, hi: float, index: int, n: int) -> float:
    """Uniform within the ``index``-th of ``n`` equal parts of [lo, hi]: the N kills cover the
    whole window, its start and its end, whatever the seed."""
    return lo + (index + rng.random()) / n * (hi - lo)


# -- scenarios --------------------------------------------------------------------------


class Scenario:
    """A command, its clean reference, and the N kill/recover trials."""

    name = ""
    prefilled = False  # whether the cache starts warm (its file then is no first write)

    def __init__(self, runner: Runner, work: Path, data: Path, rng: random.Random) -> None:
        self.runner, self.work, self.data, self.rng = runner, work / self.name, data, rng
        self.work.mkdir()

    def dirs(self, tag: str) -> dict[str, Path]:
        root = self.work / tag
        root.mkdir()
        return {"root": root, "cache": root / "cache", "out": root / "out"}

    def args(self, d: dict[str, Path]) -> list[str]:
        raise NotImplementedError

    def prepare(self, d: dict[str, Path]) -> None:
        """Set up a fresh trial's directories before its first start."""

    def reference(self) -> dict:
        """The clean run; the kill window spans from its first write to its end."""
        self.ref = self.dirs("reference")
        self.prepare(self.ref)
        began = time.perf_counter()
        proc, log = self.runner.start(self.args(self.ref), self.ref["root"] / "resume.log")
        first_write = first_result = None
        while proc.poll() is None:
            if first_result is None and results_in(self.ref["out"]):
                first_result = time.perf_counter() - began
            if first_write is None and self.wrote(self.ref):
                first_write = time.perf_counter() - began
            time.sleep(0.02)
        seconds = time.perf_counter() - began
        if proc.returncode != 0:
            raise SystemExit(f"{self.name}: the clean reference failed:\n{log.read_text()[-1500:]}")
        first_write = seconds if first_write is None else first_write
        self.window = (0.0, seconds - first_write)  # delays after the first write
        self.ref_cache = cache_rows(self.ref["cache"])
        self.ref_listing = {k: listing(self.ref[k]) for k in ("out", "cache")}
        return {
            "seconds": round(seconds, 2),
            "first_write_s": round(first_write, 2),
            "first_result_s": None if first_result is None else round(first_result, 2),
            "feature_rows": len(self.ref_cache["features"]),
            "files": self.ref_listing["out"]["files"],
        }

    def wrote(self, d: dict[str, Path]) -> bool:
        """Whether the run has written a file to its cache or output directory yet."""
        return any(
            f
            for k in ("out", "cache")
            for f in listing(d[k])["files"]
            if f != "features.sqlite" or not self.prefilled
        )

    def kill_moment(self, proc: subprocess.Popen, began: float, d: dict[str, Path]) -> dict:
        """Wait for the run's first write, then a delay drawn over the span the clean run took
        from its first write to its end (the i-th of N parts for trial i); say what was drawn.
        Anchoring on the live first write takes the start-up time (imports, model loading:
        seconds, and the most variable part on a shared machine) out of the draw."""
        first = None
        while proc.poll() is None and first is None:
            if self.wrote(d):
                first = time.perf_counter() - began
            else:
                time.sleep(0.01)
        delay = stratified(self.rng, *self.window, self.index, self.n)
        time.sleep(delay)
        return {
            "first_write_s": None if first is None else round(first, 3),
            "drawn_delay_after_first_write_s": round(delay, 3),
        }

    def attempt_state(self, d: dict[str, Path]) -> dict:
        return {
            "cache_rows": count_rows(d["cache"]),
            "results": len(results(d["out"])) if d["out"].exists() else 0,
            "checkpoints": {
                str(p.relative_to(d["out"])): checkpoint_epoch(p) for p in checkpoints(d["out"])
            },
            "temporary": listing(d["root"])["temporary"],
        }

    def trial(self, index: int, n: int) -> dict:
        self.index, self.n = index, n
        d = self.dirs(f"trial{index}")
        self.prepare(d)
        resume_log = d["root"] / "resume.log"
        began = time.perf_counter()
        proc, _ = self.runner.start(self.args(d), d["root"] / "killed-resume.log")
        drawn = self.kill_moment(proc, began, d)
        killed_at = time.perf_counter() - began
        landed = kill_group(proc)
        record: dict[str, Any] = {
            **drawn,
            "killed_at_s": round(killed_at, 3),
            "reaped_after_s": round(time.perf_counter() - began - killed_at, 3),
            "landed": landed,
            "exit_status_of_attempt": proc.returncode,
        }
        record["state_after_kill"] = self.attempt_state(d)
        recovery = self.runner.complete(self.args(d), resume_log)
        record["recovery"] = recovery
        problems: list[str] = []
        if recovery["rc"] != 0:
            problems.append(f"recovery exited {recovery['rc']}: {recovery.get('log_tail', '')}")
        else:
            listed = {key: listing(d[key]) for key in ("out", "cache")}  # before any read here
            for key, got in listed.items():
                compare_listing(self.ref_listing[key], got, key, problems)
                if got["sqlite_side"]:
                    record.setdefault("sqlite_side_files", []).extend(got["sqlite_side"])
            self.check(d, record, problems)
            shown = self.runner.complete(
                ["cache", "show", "--cache-dir", str(d["cache"])],
                d["root"] / "show.log",
                plain=True,
            )
            record["cache_show"] = shown
            if shown["rc"] != 0:
                problems.append(f"clipadapt cache show exited {shown['rc']}")
            record["cache"] = compare_cache(self.ref_cache, d["cache"], problems)
            record["resumed_from"] = resume_log.read_text().split() if resume_log.exists() else []
        record["mismatches"] = problems
        shutil.rmtree(d["root"])  # trials only add up on disk
        record["trial_seconds"] = round(time.perf_counter() - began, 2)
        return record

    def check(self, d: dict[str, Path], record: dict, problems: list[str]) -> None:
        raise NotImplementedError


class Embed(Scenario):
    name = "embed"

    def args(self, d: dict[str, Path]) -> list[str]:
        return [
            "embed", "--model", "lite", "--data", str(self.data),
            "--cache-dir", str(d["cache"]), "--output", str(d["out"] / "features"),
        ]  # fmt: skip

    def reference(self) -> dict:
        info = super().reference()
        self.ref_features = embedded(self.ref["out"])
        return info | {"features": {k: list(f.shape) for k, (f, _) in self.ref_features.items()}}

    def check(self, d: dict[str, Path], record: dict, problems: list[str]) -> None:
        got = embedded(d["out"])
        if set(got) != set(self.ref_features):
            problems.append(f"feature files {sorted(got)}, reference {sorted(self.ref_features)}")
        record["features_bit_equal"] = record["paths_equal"] = True
        for name in sorted(set(got) & set(self.ref_features)):
            (features, meta), (want, want_meta) = got[name], self.ref_features[name]
            if not torch.equal(features, want):
                record["features_bit_equal"] = False
                diff = (
                    (features - want).abs().max().item()
                    if features.shape == want.shape
                    else "shape"
                )
                problems.append(f"{name}: features differ from the reference (max abs diff {diff})")
            if meta.get("paths") != want_meta.get("paths"):
                record["paths_equal"] = False
                problems.append(f"{name}: paths differ from the reference")


BENCH_METHODS = {"ncm": {}, "gda": {}, "tip_adapter_f": {}, "coop": {"epochs": 3}}


class Bench(Scenario):
    name = "bench"
    methods: dict[str, dict] = BENCH_METHODS

    def config(self, d: dict[str, Path]) -> Path:
        path = d["root"] / "bench.yaml"
        if not path.exists():
            lines = [
                "model: lite",
                f"data: {json.dumps(str(self.data))}",
                "protocol: single_source",
                "sources: [photo]",
                f"methods: {json.dumps(self.methods)}",
                "shots: [2]",
                "seeds: [1]",
                "views: 1",
                f"out: {json.dumps(str(d['out']))}",
                f"cache_dir: {json.dumps(str(d['cache']))}",
            ]
            path.write_text("\n".join(lines) + "\n")
        return path

    def args(self, d: dict[str, Path]) -> list[str]:
        return ["bench", "--config", str(self.config(d))]

    def reference(self) -> dict:
        info = super().reference()
        ref_results = results(self.ref["out"])
        return info | {
            "results": {
                name: {"metrics_summary": r.get("summary"), "selected": r.get("selected")}
                for name, r in ref_results.items()
            }
        }

    def check(self, d: dict[str, Path], record: dict, problems: list[str]) -> None:
        compared = compare_bench(self.ref["out"], d["out"], problems)
        record["results_compared"] = len(compared)
        record["metrics_equal"] = all(c["metrics_equal"] for c in compared.values())
        record["selected_equal"] = all(c["selected_equal"] for c in compared.values())
        if checkpoints(d["out"]):
            problems.append(f"checkpoints left: {checkpoints(d['out'])}")


class CoopResume(Bench):
    name = "coop_resume"
    prefilled = True

    def __init__(self, *args: Any, epochs: int, warm_cache: Path) -> None:
        super().__init__(*args)
        self.methods = {"coop": {"epochs": epochs, "batch_size": 4}}
        self.warm_cache = warm_cache

    def prepare(self, d: dict[str, Path]) -> None:
        """A warm feature cache (the bench reference's), so the run is mostly training."""
        d["cache"].mkdir()
        source = sqlite3.connect(f"file:{self.warm_cache / 'features.sqlite'}?mode=ro", uri=True)
        target = sqlite3.connect(d["cache"] / "features.sqlite")
        source.backup(target)
        source.close()
        target.close()

    def reference(self) -> dict:
        """The clean run, timing when its checkpoint first appears and last changes."""
        self.ref = self.dirs("reference")
        self.prepare(self.ref)
        began = time.perf_counter()
        proc, log = self.runner.start(self.args(self.ref), self.ref["root"] / "resume.log")
        seen: dict[tuple, float] = {}
        while proc.poll() is None:
            for path in checkpoints(self.ref["out"]):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                seen.setdefault((st.st_ino, st.st_mtime_ns), time.perf_counter() - began)
            time.sleep(0.005)
        seconds = time.perf_counter() - began
        if proc.returncode != 0:
            raise SystemExit(f"coop_resume: the clean reference failed:\n{log.read_text()[-1500:]}")
        if not seen:
            raise SystemExit("coop_resume: no checkpoint was seen during the clean run")
        times = sorted(seen.values())
        self.ckpt_span = times[-1] - times[0]
        self.ref_cache = cache_rows(self.ref["cache"])
        self.ref_listing = {k: listing(self.ref[k]) for k in ("out", "cache")}
        ref_results = results(self.ref["out"])
        return {
            "seconds": round(seconds, 2),
            "checkpoint_writes_seen": len(times),
            "first_checkpoint_s": round(times[0], 3),
            "last_checkpoint_s": round(times[-1], 3),
            "files": self.ref_listing["out"]["files"],
            "results": {
                name: {"metrics_summary": r.get("summary"), "selected": r.get("selected")}
                for name, r in ref_results.items()
            },
        }

    def kill_moment(self, proc: subprocess.Popen, began: float, d: dict[str, Path]) -> dict:
        """Wait for the first checkpoint, then a random share of the training that follows."""
        first = None
        while proc.poll() is None and first is None:
            if checkpoints(d["out"]):
                first = time.perf_counter() - began
            else:
                time.sleep(0.005)
        delay = stratified(self.rng, 0.0, self.ckpt_span, self.index, self.n)
        time.sleep(delay)
        return {
            "first_checkpoint_s": None if first is None else round(first, 3),
            "drawn_delay_after_first_checkpoint_s": round(delay, 3),
        }

    def trial(self, index: int, n: int) -> dict:
        record = super().trial(index, n)
        left = record["state_after_kill"]["checkpoints"]
        if record["recovery"]["rc"] == 0 and left:
            epoch = next(iter(left.values()))
            resumed = record["resumed_from"]
            record["checkpoint_epoch_left"] = epoch
            # the launcher logs "<file> <start epoch>" for each training loop run
            starts = [int(x) for x in resumed[1::2]]
            if epoch is None:
                record["mismatches"].append("the checkpoint left by the kill is unreadable")
            elif epoch not in starts:
                record["mismatches"].append(
                    f"recovery did not resume from the checkpoint of epoch {epoch} "
                    f"(training started at {starts})"
                )
        return record


# -- main -------------------------------------------------------------------------------


def subset(source: Path, domains: list[str], per_class: int, target: Path) -> int:
    count = 0
    for domain in domains:
        for cls in sorted(p for p in (source / domain).iterdir() if p.is_dir()):
            dest = target / domain / cls.name
            dest.mkdir(parents=True)
            for image in sorted(p for p in cls.iterdir() if p.is_file())[:per_class]:
                shutil.copy2(image, dest / image.name)
                count += 1
    return count


def summarize(name: str, command: str, reference: dict, trials: list[dict], extra: dict) -> dict:
    landed = [t for t in trials if t["landed"]]
    return {
        "command": command,
        "reference": reference,
        **extra,
        "kills_attempted": len(trials),
        "kills_landed_while_running": len(landed),
        "kills_after_finish": len(trials) - len(landed),
        "recoveries": sum(t["recovery"]["rc"] == 0 for t in trials),
        "kills_survived": sum(
            t["landed"] and t["recovery"]["rc"] == 0 and not t["mismatches"] for t in trials
        ),
        "mismatches": sum(len(t["mismatches"]) for t in trials),
        "kill_moments_s": [t["killed_at_s"] for t in trials],
        "recovery_seconds": [t["recovery"]["seconds"] for t in trials],
        "trials": trials,
    }


def git_state() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head, "src_has_uncommitted_changes": bool(dirty)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5, help="kills per scenario (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--data", type=Path, default=DATA, help="domain-folders dataset")
    parser.add_argument("--domains", default="photo,sketch")
    parser.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    parser.add_argument("--coop-epochs", type=int, default=12)
    parser.add_argument("--scenarios", default="embed,bench,coop_resume")
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="clipadapt-faults-"))
    rng = random.Random(args.seed)
    wanted = args.scenarios.split(",")
    report: dict[str, Any] = {}
    try:
        data = work / "data" / "subset"
        images = subset(args.data, args.domains.split(","), args.per_class, data)
        runner = Runner(work)
        bench = Bench(runner, work, data, rng)
        for name in [s for s in ("embed", "bench", "coop_resume") if s in wanted]:
            if name == "embed":
                scenario: Scenario = Embed(runner, work, data, rng)
            elif name == "bench":
                scenario = bench
            else:  # on a copy of the bench reference's (warm) feature cache
                if not hasattr(bench, "ref"):
                    bench.reference()
                scenario = CoopResume(
                    runner, work, data, rng, epochs=args.coop_epochs, warm_cache=bench.ref["cache"]
                )
            began = time.perf_counter()
            print(f"[{scenario.name}] clean reference ...", flush=True)
            reference = scenario.reference()
            print(f"[{scenario.name}] reference {reference['seconds']} s", flush=True)
            trials = []
            for i in range(args.n):
                trial = scenario.trial(i, args.n)
                trials.append(trial)
                print(
                    f"[{scenario.name}] trial {i}: killed at {trial['killed_at_s']} s, "
                    f"landed={trial['landed']}, recovery {trial['recovery']['seconds']} s, "
                    f"mismatches {trial['mismatches']}",
                    flush=True,
                )
            extra: dict[str, Any] = {"seconds": round(time.perf_counter() - began, 1)}
            if isinstance(scenario, CoopResume):
                extra["kill_rule"] = (
                    "after the first coop checkpoint appears, a delay in "
                    f"[0, {scenario.ckpt_span:.2f}] s (the clean run's "
                    "first-to-last checkpoint span), uniform within the "
                    "i-th of N equal parts for trial i"
                )
                extra["checkpoint_epochs_left"] = [t.get("checkpoint_epoch_left") for t in trials]
                extra["resumed_from"] = [t.get("resumed_from") for t in trials]
            else:
                lo, hi = scenario.window
                extra["kill_rule"] = (
                    "after the run's first write to its cache or output directory, a delay in "
                    f"[{lo:.2f}, {hi:.2f}] s (the clean run's first-write-to-end span), uniform "
                    "within the i-th of N equal parts for trial i"
                )
            command = "clipadapt " + " ".join(
                a if not a.startswith(str(work)) else a.replace(str(work), "$TMP")
                for a in scenario.args(scenario.ref)
            )
            if isinstance(scenario, Bench):
                command += (
                    f"  (methods {json.dumps(scenario.methods)}; shots [2], seeds [1], "
                    "views 1, single_source from photo)"
                )
            report[scenario.name] = summarize(scenario.name, command, reference, trials, extra)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    total = {
        "kills_attempted": sum(s["kills_attempted"] for s in report.values()),
        "kills_landed_while_running": sum(s["kills_landed_while_running"] for s in report.values()),
        "kills_survived": sum(s["kills_survived"] for s in report.values()),
        "recoveries": sum(s["recoveries"] for s in report.values()),
        "mismatches": sum(s["mismatches"] for s in report.values()),
    }
    document = {
        "what": "SIGKILL at random moments, then recovery; checked against a clean run",
        "command": "python benchmarks/fault_injection.py " + " ".join(sys.argv[1:]),
        "n_per_scenario": args.n,
        "seed": args.seed,
        "data": {
            "source": str(args.data),
            "domains": args.domains.split(","),
            "images_per_class": args.per_class,
            "images": images,
        },
        "totals": total,
        "scenarios": report,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "code": git_state(),
    }
    atomic_write_json(args.output, document)
    print(json.dumps(total), f"in {document['wall_seconds']} s; written to {args.output}")
    vacuous = [name for name, s in report.items() if not s["kills_landed_while_running"]]
    if vacuous:
        print(f"no kill landed while {vacuous} ran: nothing was tested there")
    failed = total["mismatches"] or total["recoveries"] != total["kills_attempted"] or vacuous
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
