"""The main job on embedded defaults: adapt ``lite`` to the bundled textile inspection images.

``run_demo`` fits ``DEMO_METHOD`` (``auto``: the training-free or linear method with the best
cross-validated accuracy on the labelled few-shot images, never the test split) on 16 images
per class of ``builtin:textile`` (nominal,
local defect, global defect), saves the adapted model, labels the held-out test images with
the saved model through the same path as ``clipadapt predict``, and returns a result
comparing it with zero-shot CLIP on those test images. Heavy imports happen inside the
function so that ``clipadapt --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_DATA = "builtin:textile"
DEMO_MODEL = "lite"
DEMO_METHOD = "auto"  # chooses by cross-validation on the 16 + 4 labelled images per class
DEMO_SHOTS = 16


def run_demo(
    output_dir: str | Path,
    *,
    method: str = DEMO_METHOD,
    shots: int = DEMO_SHOTS,
    cache=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Adapt, save to ``<output_dir>/model``, predict the test split into
    ``<output_dir>/predictions.csv``; return the comparison as a result dict."""
    from clipadapt.adapted import (
        SPLIT_FILE,
        adapt,
        check_backend,
        load_adapted,
        predict,
        write_predictions,
    )
    from clipadapt.data import load_dataset, load_split
    from clipadapt.models import create_backend
    from clipadapt.pipeline.results import base_result

    output_dir = Path(output_dir)
    backend = create_backend(DEMO_MODEL)
    dataset = load_dataset(DEMO_DATA)
    model_dir = output_dir / "model"
    adapt(
        backend,
        dataset,
        model_dir,
        method=method,
        shots=shots,
        cache=cache,
        progress=progress,
        ood_score=None,  # the demo compares closed-set accuracy with zero-shot
    )
    adapted = load_adapted(model_dir)  # predict through the saved model, as a user would
    check_backend(adapted, backend, model_dir)
    test = load_split(model_dir / SPLIT_FILE, dataset).test
    rows, _ = predict(
        adapted, backend, [dataset.samples[i].path for i in test], cache=cache, progress=progress
    )
    predictions = write_predictions(rows, output_dir / "predictions.csv")
    info = adapted.info
    evaluation = info["evaluation"]
    gain = evaluation[method]["acc1"] - evaluation["zeroshot"]["acc1"]
    chosen = adapted.method.selected.get("method")  # what auto chose, and on what scores
    return base_result(
        task="fewshot_classification",
        dataset=dataset.name,
        backend=backend,
        metrics={"zeroshot": evaluation["zeroshot"], method: evaluation[method]},
        method=method,
        selected=adapted.method.selected,
        **({"chosen": chosen} if chosen else {}),
        shots=shots,
        seed=info["fewshot"]["seed"],
        views=info["fewshot"]["views"],
        n_test=evaluation["n"],
        gain_acc1=gain,
        fit_seconds=info["fit_seconds"],
        model_dir=str(model_dir),
        split_file=str(model_dir / SPLIT_FILE),
        predictions=str(predictions),
        data_fingerprint=info["data"]["fingerprint"],
    )
