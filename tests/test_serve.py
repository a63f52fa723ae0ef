"""``clipadapt serve``: the HTTP app over an adapted model, its limits and its batching."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="clipadapt serve needs the 'serve' extra (fastapi)")
pytest.importorskip("httpx", reason="the serve tests talk HTTP with httpx")

import httpx
import torch
from bench_fakes import ColorBackend, make_folder
from PIL import Image
from serve_helpers import huge_png, live_server, png_bytes

from clipadapt.adapted import adapt, load_adapted, predict
from clipadapt.cli import main
from clipadapt.data import load_dataset
from clipadapt.serve import Limits, create_app
from clipadapt.serve.batching import Batcher, QueueFull
from clipadapt.serve.search import Search

RED, BLUE = (200, 40, 40), (40, 40, 200)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tip_adapter model with a knn "unknown" threshold on colour swatches (fake backend)."""
    root = tmp_path_factory.mktemp("serve")
    folder = make_folder(root / "colors", dict.fromkeys(["blue", "green", "red"], 16))
    out = root / "model"
    adapt(ColorBackend(), load_dataset(folder), out, method="tip_adapter", shots=4, views=0,
          progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def index_dir(model_dir: Path) -> Path:
    """A FAISS index of the swatches the model was adapted on (same fake image tower)."""
    pytest.importorskip("faiss", reason="searching needs the 'index' extra (faiss-cpu)")
    from clipadapt.features import extract_features
    from clipadapt.index import build_index

    backend = ColorBackend()
    paths = sorted((model_dir.parent / "colors").rglob("*.png"))
    features = extract_features(backend, paths, progress=False).features.numpy()
    out = model_dir.parent / "index"
    build_index(
        features, paths, out, model_spec="fake", image_fingerprint=backend.image_fingerprint
    )
    return out


@pytest.fixture(scope="module")
def url(model_dir: Path, index_dir: Path):
    app = create_app(model_dir, index_dir, backend=ColorBackend(), limits=Limits(max_files=4))
    with live_server(app) as address:
        yield address


def upload(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def test_predict_answers_the_rows_predict_gives_for_the_same_files(model_dir, url, tmp_path):
    paths = []
    for name, color in (("red", RED), ("blue", BLUE)):
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(png_bytes(color))
    response = httpx.post(f"{url}/predict", files=upload(*(p.read_bytes() for p in paths)))
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    rows, _ = predict(load_adapted(model_dir), ColorBackend(), paths, progress=False)
    assert [a["name"] for a in answers] == ["0.png", "1.png"]
    assert [a["label"] for a in answers] == [r["label"] for r in rows] == ["red", "blue"]
    for answer, row in zip(answers, rows, strict=True):
        assert answer["unknown"] is False and "ood_score" in answer
        assert answer["score"] == pytest.approx(float(row["score"]), abs=1e-5)
        assert answer["ood_score"] == pytest.approx(float(row["ood_score"]), rel=1e-4, abs=1e-5)
        assert [t["label"] for t in answer["top5"]] == [
            item.rsplit(":", 1)[0] for item in row["top5"].split(";")
        ]


def test_model_card_and_health(url, model_dir) -> None:
    card = httpx.get(f"{url}/model").json()
    info = load_adapted(model_dir).info
    assert card["method"] == "tip_adapter" and card["fewshot"]["shots"] == 4
    assert card["data"]["fingerprint"] == info["data"]["fingerprint"]
    assert card["evaluation"]["tip_adapter"]["acc1"] == info["evaluation"]["tip_adapter"]["acc1"]
    assert card["unknown"]["detector"] == "knn" and card["unknown"]["threshold"] > 0
    assert card["index"] == {"images": 48, "kind": "flat"} and "root" not in card["data"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["index"] is True


def test_page_and_static_files_are_served(url) -> None:
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'id="drop"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "function predict" in httpx.get(f"{url}/static/app.js").text
    assert httpx.get(f"{url}/static/../../adapted.py").status_code == 404


def truncated_png() -> bytes:
    data = png_bytes(size=256)  # noisy enough to need several hundred bytes
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("case", "files", "status", "says"),
    [
        ("not an image", [("image", ("notes.png", b"hello, not a picture", "image/png"))],
         422, "notes.png: not a readable image"),
        ("truncated", [("image", ("cut.png", None, "image/png"))], 422, "cut.png: not a readable"),
        ("40,000 x 40,000 PNG", [("image", ("bomb.png", huge_png(), "image/png"))], 422,
         "over the limit of 40,000,000 pixels"),
        ("empty file", [("image", ("empty.png", b"", "image/png"))], 422, "empty file"),
        ("no file", [("note", (None, b"hi"))], 400, "no image file in the form"),
        ("too many files", upload(*[png_bytes()] * 5), 413, "more than 4 files"),
    ],
)  # fmt: skip
def test_bad_uploads_get_a_4xx_and_the_server_keeps_serving(url, case, files, status, says):
    if case == "truncated":
        files = [("image", ("cut.png", truncated_png(), "image/png"))]
    response = httpx.post(f"{url}/predict", files=files)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert httpx.post(f"{url}/predict", files=upload(png_bytes())).json()["predictions"]


def test_a_50_mb_body_gets_413_and_the_server_keeps_serving(url) -> None:
    body = b"\0" * (50 * 1024 * 1024)
    response = httpx.post(f"{url}/predict", files=upload(body), timeout=60)
    assert response.status_code == 413 and "over the limit of" in response.json()["error"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert httpx.post(f"{url}/predict", files=upload(png_bytes())).status_code == 200


def test_requests_that_are_not_multipart_or_not_json_are_refused(url) -> None:
    response = httpx.post(
        f"{url}/predict", content=png_bytes(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]
    broken = httpx.post(
        f"{url}/predict",
        content=b"--b\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n\r\nxx",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert broken.status_code == 400 and "malformed multipart" in broken.json()["error"]
    not_json = httpx.post(
        f"{url}/search", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]


def test_without_an_index_search_is_404_and_a_smaller_pixel_limit_holds(model_dir) -> None:
    from fastapi.testclient import TestClient

    app = create_app(model_dir, backend=ColorBackend(), limits=Limits(max_pixels=32 * 32))
    with TestClient(app) as client:
        assert client.post("/predict", files=upload(png_bytes(size=32))).status_code == 200
        refused = client.post("/predict", files=upload(png_bytes(size=33)))
        assert refused.status_code == 422 and "33 x 33 is over the limit of 1,024" in refused.text
        assert client.post("/search", json={"text": "red"}).status_code == 404
        assert client.get("/thumbnail/0").status_code == 404
        assert client.get("/model").json()["index"] is None


# -- search --------------------------------------------------------------------------------
def test_text_search_finds_the_named_colour_and_thumbnails_are_small_jpegs(url) -> None:
    answer = httpx.post(f"{url}/search", json={"text": "a red thing", "k": 5}).json()
    results = answer["results"]
    assert answer["query"] == {"text": "a red thing", "k": 5} and len(results) == 5
    assert [r["name"].split("/")[0] for r in results] == ["red"] * 5
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    thumbnail = httpx.get(f"{url}{results[0]['thumbnail']}")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(thumbnail.content))
    assert image.format == "JPEG" and max(image.size) <= 160


def test_image_search_and_bad_search_requests(url) -> None:
    files = [*upload(png_bytes(BLUE)), ("k", (None, b"3"))]
    answer = httpx.post(f"{url}/search", files=files).json()
    assert answer["query"] == {"image": "0.png", "k": 3}
    assert [r["name"].split("/")[0] for r in answer["results"]] == ["blue"] * 3
    everything = httpx.post(f"{url}/search", json={"text": "red", "k": 100}).json()["results"]
    assert len(everything) == 48  # k over the index size: every row once, no padding
    for body, says in (
        ({"text": ""}, '"text" must be a non-empty string'),
        ({"text": "red", "k": 0}, '"k" must be a whole number'),
        ({"text": "red", "k": "many"}, '"k" must be a whole number'),
        ({"text": "x" * 1001}, "over 1000 characters"),
        (["red"], "JSON object"),
    ):
        response = httpx.post(f"{url}/search", json=body)
        assert response.status_code == 400 and says in response.json()["error"]
    assert httpx.get(f"{url}/thumbnail/48").status_code == 404
    assert httpx.get(f"{url}/thumbnail/-1").status_code == 404
    assert httpx.get(f"{url}/thumbnail/red.png").status_code == 422  # a row number only


def test_an_index_of_another_image_tower_is_refused_at_startup(model_dir, index_dir) -> None:
    from clipadapt.index import load_index

    other = ColorBackend(seed=1)
    assert load_index(index_dir).image_fingerprint != other.image_fingerprint
    with pytest.raises(ValueError, match="holds image features of 'fake'"):
        Search.load(index_dir, other, 1000)


# -- batching ------------------------------------------------------------------------------
def run_batcher(max_batch: int, sizes: list[int]) -> tuple[list[int], list[list[float]]]:
    """Submit requests of ``sizes`` images at once; the batch sizes the forward saw and
    what each request got back."""
    seen: list[int] = []

    def forward(pixels: torch.Tensor) -> list[dict]:
        seen.append(len(pixels))
        return [{"value": float(v)} for v in pixels.flatten(1)[:, 0]]

    async def go() -> list[list[float]]:
        batcher = Batcher(forward, ThreadPoolExecutor(1), max_batch=max_batch, max_wait=0.05)
        batcher.start()
        jobs = [batcher.submit(torch.full((n, 1), float(i))) for i, n in enumerate(sizes)]
        answers = await asyncio.gather(*jobs)
        await batcher.stop()
        return [[row["value"] for row in rows] for rows in answers]

    return seen, asyncio.run(go())


def test_batcher_groups_queued_requests_and_answers_each_its_own_rows() -> None:
    seen, answers = run_batcher(4, [1, 2, 1, 3, 5])
    assert answers == [[0.0], [1.0, 1.0], [2.0], [3.0] * 3, [4.0] * 5]
    assert seen == [4, 3, 5]  # 1+2+1; 3 alone (5 would overflow); 5 alone, never split
    seen, answers = run_batcher(1, [1, 2, 1])
    assert seen == [1, 2, 1] and answers == [[0.0], [1.0, 1.0], [2.0]]


def test_a_full_queue_refuses_at_once() -> None:
    release = threading.Event()

    def forward(pixels: torch.Tensor) -> list[dict]:
        release.wait(10)
        return [{}] * len(pixels)

    async def go() -> None:
        batcher = Batcher(forward, ThreadPoolExecutor(1), max_batch=1, max_queue=1)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0.05)  # the worker took it: the queue is empty again
        waiting = asyncio.ensure_future(batcher.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(torch.zeros(1, 1))
        release.set()
        assert len(await running) == len(await waiting) == 1
        await batcher.stop()

    asyncio.run(go())


# -- the command -----------------------------------------------------------------------------
def test_serve_command_validates_arguments_before_loading_anything(
    model_dir, tmp_path, monkeypatch, capsys
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("clipadapt.models.create_backend", no_model)
    monkeypatch.setattr("clipadapt.serve.create_app", no_model)
    cases = [
        ([str(tmp_path)], "is not a clipadapt adapted model"),
        ([str(model_dir), "--index", str(tmp_path / "none")], "--index"),
        ([str(model_dir), "--port", "70000"], "--port 70000"),
        ([str(model_dir), "--host", "not a host!"], "--host"),
        ([str(model_dir), "--max-batch", "0"], "--max-batch"),
        ([str(model_dir), "--max-megapixels", "500"], "Pillow's own decompression-bomb limit"),
    ]
    for args, says in cases:
        assert main(["serve", *args]) == 2
        assert says in capsys.readouterr().err


def test_serve_command_starts_uvicorn_on_the_given_address_with_the_app(
    model_dir, index_dir, monkeypatch
) -> None:
    from fastapi.testclient import TestClient

    started = {}
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device: ColorBackend())
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: started.update(kwargs, app=app))
    args = ["-q", "serve", str(model_dir), "--index", str(index_dir), "--port", "8123"]
    assert main([*args, "--max-batch", "1", "--max-files", "2"]) == 0
    assert started["host"] == "127.0.0.1" and started["port"] == 8123
    with TestClient(started.pop("app")) as client:
        assert client.get("/health").json() | {"batches_run": 0} == {
            "status": "ok", "queued": 0, "max_queue": 64, "max_batch": 1, "batches_run": 0,
            "index": True,
        }  # fmt: skip
        assert client.get("/model").json()["limits"]["max_files"] == 2
