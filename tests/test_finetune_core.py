"""Fine-tuning on image-text pairs: what is trained, the model directory, resume, accumulation,
memory errors, every loss in the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clipadapt.train.contrastive as contrastive
import clipadapt.train.loop as loop
from clipadapt.data.pair_sources import load_pairs
from clipadapt.feature_cache import FeatureCache
from clipadapt.models import create_backend
from clipadapt.models.finetuned import save_finetuned
from clipadapt.models.towers import tower, tower_state
from clipadapt.saved import FINETUNE_CHECKPOINT, check_model_dir
from clipadapt.train.contrastive import BatchMemoryError, finetune_pairs
from clipadapt.train.finetune import finetune_model
from clipadapt.train.options import FinetuneOptions, parse_train
from clipadapt.train.tuning import plan_training
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from tests.tiny_models import save_tiny_open_clip

    return create_backend(f"local-dir:{save_tiny_open_clip(tmp_path_factory.mktemp('oc'))}")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory):
    root = make_image_folder(tmp_path_factory.mktemp("pairs"), {"cat": 4, "dog": 4, "fish": 4})
    return load_pairs([root])


def _params(backend, name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tower_state(backend, name).items()}


def test_parse_train_forms() -> None:
    assert parse_train("all") == (("image", "text"), "all")
    assert parse_train("text") == (("text",), "all")
    assert parse_train("image:last:2") == (("image",), "last:2")
    assert parse_train("lora") == (("image", "text"), "lora")
    for bad in ("last:0", "text:bogus", "both"):
        with pytest.raises(ValueError, match="--train"):
            parse_train(bad)


def test_plan_trains_only_what_it_names(tiny) -> None:
    image = tower(tiny, "image")
    plan = plan_training(tiny, "last:1", ("image",))
    trainable = {id(p) for p in plan.params}
    assert trainable == {id(p) for p in image.parameters_of_last(1)}
    assert all(not p.requires_grad for p in tower(tiny, "text").module.parameters())
    assert all(p.requires_grad == (id(p) in trainable) for p in image.module.parameters())
    plan.finish()
    assert not any(p.requires_grad for p in image.module.parameters())


def test_lora_merges_into_a_plain_tower(tiny, pairs) -> None:
    original = _params(tiny, "image")
    options = FinetuneOptions(
        train="lora", towers=("image", "text"), epochs=1, batch_size=6, lr=1e-2
    )
    result = finetune_pairs(tiny, pairs, options, progress=False)
    names = [n for n, _ in result.backend.model.named_modules()]
    assert not any("lora" in n for n in names)  # adapters merged and taken out
    before, after = _params(tiny, "image"), _params(result.backend, "image")
    assert before.keys() == after.keys()  # the same plain weights, updated
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(original[k], before[k]) for k in before)  # the original untouched


def test_saved_model_reloads_identically_and_keeps_its_base(tiny, pairs, tmp_path: Path) -> None:
    options = FinetuneOptions(train="all", towers=("image",), epochs=1, batch_size=6, lr=1e-3)
    result = finetune_pairs(tiny, pairs, options, progress=False)
    out = save_finetuned(result.backend, tmp_path / "ft", ["image"], result.record)
    loaded = create_backend(str(out))
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded.encode_images(images), result.backend.encode_images(images))
    assert not torch.equal(loaded.encode_images(images), tiny.encode_images(images))
    assert loaded.image_fingerprint != tiny.image_fingerprint
    assert loaded.text_fingerprint == tiny.text_fingerprint
    assert loaded.logit_scale == pytest.approx(result.backend.logit_scale)
    again = finetune_pairs(
        loaded, pairs, FinetuneOptions(towers=("text",), epochs=1), progress=False
    )
    second = save_finetuned(again.backend, tmp_path / "ft2", ["text"], again.record)
    record = create_backend(str(second)).finetuned
    assert record["base"] == tiny.info.spec and record["towers"] == ["image", "text"]
    assert len(record["training"]) == 2


def _interrupt_after_first_checkpoint(monkeypatch) -> None:
    real = loop.atomic_write

    def write_then_die(path, write):
        real(path, write)
        raise KeyboardInterrupt  # as if the process were killed after epoch 1

    monkeypatch.setattr(loop, "atomic_write", write_then_die)


def test_a_killed_run_resumes_to_the_same_weights(tiny, pairs, tmp_path, monkeypatch) -> None:
    options = FinetuneOptions(towers=("image", "text"), epochs=3, batch_size=5, lr=1e-3)
    whole = finetune_model(tiny, pairs, options, tmp_path / "whole", progress=False)
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            finetune_model(tiny, pairs, options, tmp_path / "killed", progress=False)
    assert [p.name for p in (tmp_path / "killed").iterdir()] == [FINETUNE_CHECKPOINT]
    check_model_dir(tmp_path / "killed", finetuned=True)  # resumable: not refused
    resumed = finetune_model(tiny, pairs, options, tmp_path / "killed", progress=False)
    assert len(resumed.log.seconds) == 2  # epochs 2 and 3 only
    for name in ("image", "text"):
        a, b = _params(whole.backend, name), _params(resumed.backend, name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed" / FINETUNE_CHECKPOINT).exists()


def test_finetune_refuses_a_folder_of_user_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a clipadapt model"):
        check_model_dir(tmp_path, finetuned=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _gradients(backend, pairs, monkeypatch, **options) -> list[torch.Tensor]:
    grads: list[list[torch.Tensor]] = []

    def one_step(params, batch_loss, n, **_):
        value = batch_loss(0, torch.arange(n))
        if value.requires_grad:
            value.backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
        return loop.TrainLog(seconds=[0.0], losses=[float(value.detach())])

    monkeypatch.setattr(contrastive, "train_epochs", one_step)
    finetune_pairs(backend, pairs, FinetuneOptions(epochs=1, **options), progress=False)
    return grads[0]


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulation_gives_the_whole_batch_gradient(tiny, pairs, monkeypatch, loss) -> None:
    whole = _gradients(tiny, pairs, monkeypatch, loss=loss, batch_size=12)
    chunked = _gradients(tiny, pairs, monkeypatch, loss=loss, batch_size=12, accumulate=3)
    assert any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["clip", "siglip", "infoloob", "cwcl", "supervised", "distill"])
def test_every_loss_trains_the_text_tower_from_cached_images(tiny, pairs, loss, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    options = FinetuneOptions(loss=loss, towers=("text",), epochs=1, batch_size=6, lr=1e-3)
    result = finetune_pairs(tiny, pairs, options, cache=cache, progress=False)
    assert all(torch.isfinite(torch.tensor(result.log.losses)))
    assert result.backend.text_fingerprint != tiny.text_fingerprint
    assert result.backend.image_fingerprint == tiny.image_fingerprint  # LiT: image locked
    assert sum(s.entries for s in cache.summary()) == len(pairs.images)  # encoded once, cached


def test_supervised_loss_needs_labelled_pairs(tiny, pairs) -> None:
    unlabelled = contrastive.PairDataset(pairs.name, pairs.root, pairs.pairs, [])
    with pytest.raises(ValueError, match="class-labelled pairs"):
        finetune_pairs(tiny, unlabelled, FinetuneOptions(loss="supervised"), progress=False)


def test_a_batch_that_does_not_fit_says_what_to_change(tiny, pairs, monkeypatch) -> None:
    def no_memory(*_):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(type(tiny), "encode_image_batch", no_memory)
    options = FinetuneOptions(towers=("image",), epochs=1, batch_size=8)
    with pytest.raises(BatchMemoryError, match=r"--batch-size.*--accumulate"):
        finetune_pairs(tiny, pairs, options, progress=False)
    assert issubclass(BatchMemoryError, ValueError)  # the CLI prints it as a one-line error


def test_retention_regulariser_changes_training(tiny, pairs) -> None:
    texts = ["a photo of a tree.", "a photo of a car.", "a photo of a boat."]
    plain = FinetuneOptions(towers=("image",), epochs=1, batch_size=6, lr=1e-3)
    kept = FinetuneOptions(towers=("image",), epochs=1, batch_size=6, lr=1e-3, retention=5.0)
    a = finetune_pairs(tiny, pairs, plain, progress=False)
    b = finetune_pairs(tiny, pairs, kept, reference_texts=texts, progress=False)
    assert a.log.losses[0] == pytest.approx(b.log.losses[0])  # KL is 0 before the first step
    assert a.log.losses[1:] != b.log.losses[1:]
