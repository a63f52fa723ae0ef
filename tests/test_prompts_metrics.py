"""Prompt ensembles, descriptions and the classification metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

from clipadapt.metrics import classification_metrics
from clipadapt.prompts import PromptSet, class_embeddings, load_templates, make_prompt_set


def test_metrics_agree_with_scikit_learn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 6, generator=g)
    labels = torch.randint(0, 6, (200,), generator=g)
    m = classification_metrics(logits, labels)
    pred = logits.argmax(1).numpy()
    assert m["acc1"] == pytest.approx(float((pred == labels.numpy()).mean()))
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    top5 = logits.topk(5, dim=1).indices
    assert m["acc5"] == pytest.approx(float((top5 == labels[:, None]).any(1).float().mean()))
    assert np.array(m["confusion_matrix"]).sum() == 200


def test_metrics_hand_made_case():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    m = classification_metrics(logits, torch.tensor([0, 1, 2, 2]))
    assert m["acc1"] == 0.75
    assert m["mean_per_class_recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert m["acc5"] == 1.0  # top-min(5, C) with C = 3


def test_class_embeddings_average_normalised_prompt_embeddings(fake_backend):
    prompts = PromptSet(templates=("a photo of a {}.", "a {}."), descriptions={"dog": ["a pet"]})
    weights = class_embeddings(fake_backend, ["cat", "dog"], prompts)
    cat = fake_backend.encode_texts(["a photo of a cat.", "a cat."]).mean(0)
    dog = fake_backend.encode_texts(["a photo of a dog.", "a dog.", "a pet"]).mean(0)
    expected = torch.nn.functional.normalize(torch.stack([cat, dog]), dim=-1)
    assert torch.allclose(weights, expected, atol=1e-6)


def test_template_files_and_errors(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nart of {}\n")
    assert load_templates(str(tmp_path / "t.txt"))[0] == ("a photo of a {}.", "art of {}")
    (tmp_path / "bad.json").write_text(json.dumps(["no placeholder"]))
    with pytest.raises(ValueError, match="must be a string containing"):
        load_templates(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not a known set"):
        load_templates("nonexistent")


def test_descriptions_with_unknown_class_name_are_refused(tmp_path):
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"zebra": ["striped horse"]}))
    with pytest.raises(ValueError, match="unknown class names \\['zebra'\\]"):
        make_prompt_set("default", path, ["cat", "dog"])
