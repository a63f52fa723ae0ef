"""The HTTP app over an adapted model: predict, search, health, model card, and the page.

Endpoints (JSON unless said otherwise; every refusal is ``{"error": message}`` with a 4xx,
or 503 with ``Retry-After`` while the batching queue is full):

- ``POST /predict``: multipart form with one or more image files -> ``{"predictions": [...]}``
  (name, label or ``unknown``, class_id, score, margin, top5, ood_score when the model has
  an "unknown" threshold).
- ``POST /search``: JSON ``{"text": ..., "k": 12}``, or a multipart form with one image file
  (and an optional ``k`` field) -> ``{"results": [{row, score, name, thumbnail}, ...]}``.
- ``GET /thumbnail/{row}``: a small JPEG of index row ``row``.
- ``GET /health``, ``GET /model`` (the model card), ``GET /`` (the page).

The model runs in one thread of its own; uploads are decoded in the thread pool.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from clipadapt.models.base import Backend
from clipadapt.serve.batching import Batcher, QueueFull
from clipadapt.serve.model import ServedModel
from clipadapt.serve.uploads import BadRequest, Limits, Part, decode_upload, parse_multipart
from clipadapt.serve.uploads import read_body as read_limited

STATIC = files("clipadapt.serve") / "static"
DEFAULT_K = 12
MAX_K = 100
RETRY_AFTER_S = 1
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    adapted_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str] | None = None,
    *,
    backend: Backend | None = None,
    device: str = "cpu",
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass
    max_batch: int = 16,
    max_wait_ms: float = 2.0,
    max_queue: int = 64,
) -> FastAPI:
    """Load the model (and index) now, so that a bad directory fails before serving."""
    model = ServedModel.load(adapted_dir, backend=backend, device=device)
    search = None
    if index_dir is not None:
        from clipadapt.serve.search import Search

        search = Search.load(index_dir, model.backend, limits.max_pixels)
    runner = ThreadPoolExecutor(1, thread_name_prefix="clipadapt-model")
    batcher = Batcher(
        model.predict, runner, max_batch=max_batch, max_wait=max_wait_ms / 1000, max_queue=max_queue
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            runner.shutdown(wait=True)

    app = FastAPI(
        title="clipadapt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(BadRequest)
    async def refuse(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def busy(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"error": f"the server is busy ({max_queue} requests queued); retry shortly"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def images(parts: list[Part]) -> tuple[list[str], torch.Tensor]:
        """The file parts' names and their preprocessed pixels (decoded in the thread pool)."""
        uploads = [part for part in parts if part.filename is not None]
        if not uploads:
            raise BadRequest(400, "no image file in the form; attach one or more image files")
        names = [part.filename or f"image {i + 1}" for i, part in enumerate(uploads)]

        def prepare() -> torch.Tensor:
            return torch.stack(
                [
                    model.preprocess(decode_upload(part.data, name, limits.max_pixels))
                    for part, name in zip(uploads, names, strict=True)
                ]
            )

        return names, await run_in_threadpool(prepare)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        return await read_limited(request.stream(), length, limits.max_body_bytes)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "queued": batcher.queue.qsize(),
            "max_queue": max_queue,
            "max_batch": max_batch,
            "batches_run": batcher.batches,
            "index": search is not None,
        }

    @app.get("/model")
    async def card() -> dict[str, Any]:
        return model.card() | {
            "index": None
            if search is None
            else {"images": len(search.index), "kind": search.index.kind},
            "limits": {
                "max_body_bytes": limits.max_body_bytes,
                "max_files": limits.max_files,
                "max_pixels": limits.max_pixels,
            },
        }

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await read_body(request)
        names, pixels = await images(
            parse_multipart(body, request.headers.get("content-type"), limits)
        )
        rows = await batcher.submit(pixels)
        return {
            "predictions": [
                _prediction_json(name, row) for name, row in zip(names, rows, strict=True)
            ]
        }

    @app.post("/search")
    async def search_index(request: Request) -> dict[str, Any]:
        if search is None:
            raise BadRequest(404, "no index is served; start the server with --index DIR")
        body = await read_body(request)
        content_type = request.headers.get("content-type") or ""
        if content_type.split(";")[0].strip().lower() == "application/json":
            text, k = _text_query(body, limits.max_text_chars)
            results = await _run(runner, search.text, text, k)
            return {"query": {"text": text, "k": k}, "results": results}
        parts = parse_multipart(body, content_type, limits)
        names, pixels = await images(parts)
        if len(names) != 1:
            raise BadRequest(400, f"search takes one query image, got {len(names)}")
        fields = {part.field: part.data for part in parts if part.filename is None}
        k = _k(fields.get("k", str(DEFAULT_K).encode()).decode("utf-8", "replace"))
        results = await _run(runner, search.image, pixels, k)
        return {"query": {"image": names[0], "k": k}, "results": results}

    @app.get("/thumbnail/{row}")
    async def thumbnail(row: int) -> Response:
        if search is None:
            raise BadRequest(404, "no index is served; start the server with --index DIR")
        jpeg = await run_in_threadpool(search.thumbnail, row)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


async def _run(runner: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in the model thread (models run one forward at a time)."""
    return await asyncio.get_running_loop().run_in_executor(runner, fn, *args)


def _prediction_json(name: str, row: dict[str, Any]) -> dict[str, Any]:
    answer = {
        "name": name,
        "label": row["label"],
        "unknown": row.get("unknown", False),
        "class_id": row["class_id"],
        "score": row["score"],
        "margin": row["margin"],
        "top5": [{"label": label, "score": score} for label, score in row["top5"]],
    }
    if "ood_score" in row:
        answer["ood_score"] = row["ood_score"]
    return answer


def _text_query(body: bytes, max_chars: int) -> tuple[str, int]:
    """``text`` and ``k`` of a JSON search body; 400 naming the field that is wrong."""
    try:
        query = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f'search body is not JSON ({exc}); send {{"text": ...}}') from exc
    if not isinstance(query, dict):
        raise BadRequest(400, 'search body must be a JSON object like {"text": "a dog", "k": 12}')
    text = query.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(400, 'search field "text" must be a non-empty string')
    if len(text) > max_chars:
        raise BadRequest(400, f'search field "text" is over {max_chars} characters')
    return text.strip(), _k(query.get("k", DEFAULT_K))


def _k(value: Any) -> int:
    """A result count from 1 to ``MAX_K``; 400 otherwise."""
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if isinstance(value, bool | float) or not 1 <= k <= MAX_K:
        raise BadRequest(400, f'search field "k" must be a whole number from 1 to {MAX_K}')
    return k
