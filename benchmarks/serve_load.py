"""Load test of ``clipadapt serve``: server-side batching against none, side by side.

Adapts the built-in ``lite`` model on PACS-100 photos (4 shots per class, knn "unknown"
threshold; or takes ``--model-dir``), then starts two servers on 127.0.0.1 only, each a
``clipadapt serve`` process on a free port: one batching (``--max-batch``, default 16) and
one not (``--max-batch 1``). Both are warmed up, then sent the same requests in alternating
blocks of ``--block`` requests (batching first, then none, then batching, ...), so that a
drift of the machine's load touches both alike. Every request is a ``POST /predict`` of one
PACS photo (cycled, read into memory beforehand) from ``--concurrency`` clients at once
(httpx). The run is bounded by ``--requests`` per mode and ``--max-seconds`` of wall time
in all; requests not sent by then are not counted.

Reported per mode: requests, errors (any non-200 or transport error), latency p50 and p99
(ms, from sending the request to reading the whole answer, nearest-rank percentiles),
throughput (answered requests per second of the blocks' wall time) and the mean images per
forward pass the server ran (from ``/health``). Results: benchmarks/results/serve_load.json.

    .venv/bin/python benchmarks/serve_load.py [--requests 500] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from clipadapt.atomic import atomic_write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "pacs100" / "photo"
OUT = HERE / "results" / "serve_load.json"
CLI = [sys.executable, "-m", "clipadapt.cli"]
WARMUP = 16
START_TIMEOUT_S = 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="per mode")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--block", type=int, default=50, help="requests per alternating block")
    parser.add_argument("--max-batch", type=int, default=16, help="of the batching server")
    parser.add_argument("--max-seconds", type=float, default=600, help="wall-time cap")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model-dir", type=Path, help="an adapted model (default: adapt one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data} is absent (PACS-100 lives in ../shared/data beside the repo)")
    images = [p.read_bytes() for p in sorted(args.data.rglob("*.jpg"))[:200]]
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        model = args.model_dir or adapt_model(args.data, Path(tmp) / "model")
        modes = {"batching": args.max_batch, "none": 1}
        servers = {name: start_server(model, batch) for name, batch in modes.items()}
        try:
            for _, url in servers.values():
                asyncio.run(send(url, images, WARMUP, args.concurrency))
            before = {name: batches_run(url) for name, (_, url) in servers.items()}
            results = asyncio.run(alternate(servers, images, args))
            for name, (_, url) in servers.items():
                forwards = batches_run(url) - before[name]
                answered = results[name]["requests"] - results[name]["errors"]
                results[name]["images_per_forward"] = round(answered / max(forwards, 1), 2)
                results[name]["max_batch"] = modes[name]
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)
    summary = {
        "benchmark": "serve_load",
        "endpoint": "POST /predict, one PACS-100 photo (227x227 JPEG) per request",
        "model": "lite, tip_adapter, 4 shots per class, knn unknown threshold"
        if args.model_dir is None
        else str(args.model_dir),
        "concurrency": args.concurrency,
        "requests_per_mode": args.requests,
        "design": f"alternating blocks of {args.block} requests, batching first; "
        f"wall-time cap {args.max_seconds:g} s",
        "latency": "ms from sending a request to reading its whole answer; nearest-rank "
        "percentiles",
        "throughput": "answered requests per second of the blocks' wall time",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
    }
    atomic_write_json(args.out, summary)
    for name, figures in results.items():
        print(name, figures)
    print(f"written to {args.out}")


def adapt_model(data: Path, out: Path) -> Path:
    subprocess.run(
        [*CLI, "-q", "adapt", "--model", "lite", "--data", str(data), "--method", "tip_adapter",
         "--shots", "4", "--views", "0", "--test-fraction", "0", "--out", str(out)],
        check=True,
    )  # fmt: skip
    return out


def start_server(model: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:  # a free port now; the server binds it a moment later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*CLI, "-q", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--max-batch", str(max_batch)],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server with --max-batch {max_batch} exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    sys.exit(f"the server with --max-batch {max_batch} did not start in {START_TIMEOUT_S} s")


def batches_run(url: str) -> int:
    return httpx.get(f"{url}/health").json()["batches_run"]


async def send(url: str, images: list[bytes], count: int, concurrency: int) -> list[float | None]:
    """Latencies (s) of ``count`` requests, ``concurrency`` at a time; None for a failure."""
    latencies: list[float | None] = []
    turn = iter(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            for i in turn:
                files = {"image": (f"{i}.jpg", images[i % len(images)], "image/jpeg")}
                start = time.perf_counter()
                try:
                    ok = (await client.post("/predict", files=files)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start if ok else None)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def alternate(servers: dict, images: list[bytes], args: argparse.Namespace) -> dict:
    latencies: dict[str, list[float | None]] = {name: [] for name in servers}
    seconds = dict.fromkeys(servers, 0.0)
    started = time.monotonic()
    while any(len(v) < args.requests for v in latencies.values()):
        for name, (_, url) in servers.items():
            count = min(args.block, args.requests - len(latencies[name]))
            if count <= 0 or time.monotonic() - started > args.max_seconds:
                continue
            begin = time.perf_counter()
            latencies[name] += await send(url, images, count, args.concurrency)
            seconds[name] += time.perf_counter() - begin
        if time.monotonic() - started > args.max_seconds:
            break
    return {name: figures(values, seconds[name]) for name, values in latencies.items()}


def figures(latencies: list[float | None], seconds: float) -> dict:
    ok = sorted(value for value in latencies if value is not None)
    return {
        "requests": len(latencies),
        "errors": len(latencies) - len(ok),
        "p50_ms": round(1000 * percentile(ok, 50), 2) if ok else None,
        "p99_ms": round(1000 * percentile(ok, 99), 2) if ok else None,
        "throughput_rps": round(len(ok) / seconds, 2) if seconds else None,
    }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


if __name__ == "__main__":
    main()
