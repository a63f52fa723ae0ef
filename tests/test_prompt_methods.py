"""Prompt learning and tower tuning: token access, CoOp/KgCoOp/CoCoOp, LoRA, visual prompts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import save_tiny_hf_clip, save_tiny_open_clip

from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import METHODS, FitData, NearestClassMean, create_method, load_method
from clipadapt.methods.prompting.base import PRECISIONS, frozen
from clipadapt.methods.prompting.context import ClassPrompts, init_context
from clipadapt.methods.prompting.teacher import teacher_logits
from clipadapt.models import create_backend
from clipadapt.models.prompt_access import promptable_text, vit_image_tower
from clipadapt.prompts import PromptSet, class_embeddings
from clipadapt.views import augmented_view_name

NAMES = ["dog", "cat", "house"]


def relative_change(changed: torch.Tensor, reference: torch.Tensor) -> float:
    """``||changed - reference|| / ||reference||``: effects are asserted against this, with
    thresholds far below the effect and far above float32 rounding (~1e-7), so no CPU's
    arithmetic decides them."""
    return float((changed - reference).detach().norm() / reference.detach().norm())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def open_clip_backend(tmp_path_factory):
    return create_backend(f"local-dir:{save_tiny_open_clip(tmp_path_factory.mktemp('oc'))}")


@pytest.fixture(scope="module")
def hf_backend(tmp_path_factory):
    return create_backend(f"hf:{save_tiny_hf_clip(tmp_path_factory.mktemp('hf'))}")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Four random 40x40 images per class (structured by class so they are learnable)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for c in range(len(NAMES)):
        for i in range(4):
            pixels = rng.integers(0, 80, (40, 40, 3)) + np.array([0, 80, 160])[c]
            path = root / f"{c}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths.append(str(path))
    return paths


def fit_data(backend, paths: list[str], views: int = 1) -> FitData:
    text = class_embeddings(backend, NAMES, PromptSet(("a photo of a {}.",)))
    support = extract_features(backend, paths, progress=False).features
    aug = [
        extract_features(backend, paths, view=augmented_view_name(i), progress=False).features
        for i in range(views)
    ]
    return FitData(
        class_embeddings=text,
        logit_scale=backend.logit_scale,
        classnames=list(NAMES),
        support_features=support,
        support_labels=torch.arange(len(NAMES)).repeat_interleave(4),
        support_views=torch.stack(aug) if views else None,
        unlabeled_features=support,
        unlabeled_paths=list(paths),
        backend=backend,
        support_paths=paths,
    )


# -- token access ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["open_clip_backend", "hf_backend"])
def test_encoding_token_embeddings_equals_encoding_texts(which: str, request) -> None:
    backend = request.getfixturevalue(which)
    access = promptable_text(backend)
    texts = ["a photo of a dog.", "a cat."]
    tokens = access.tokenize(texts)
    with torch.no_grad():
        mine = access.encode_embedded(access.token_embedding(tokens.ids), tokens)
    assert torch.allclose(mine, backend.encode_text_batch(texts), atol=1e-5)


def test_context_initialised_from_the_template_reproduces_the_hand_made_prompt(
    open_clip_backend,
) -> None:
    access = promptable_text(open_clip_backend)
    prompts = ClassPrompts(access, NAMES, n_ctx=4)
    ctx = init_context(access, 4, "a photo of a", torch.Generator())
    hand = open_clip_backend.encode_texts([f"a photo of a {n}." for n in NAMES])
    assert torch.allclose(prompts.encode_chunked(ctx), hand, atol=1e-5)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_and_class_tokens_sit_where_coop_puts_them(position, open_clip_backend) -> None:
    access = promptable_text(open_clip_backend)
    prompts = ClassPrompts(access, ["dog", "guitar"], n_ctx=4, position=position)
    ctx = torch.randn(4, access.width)
    embeds = prompts.embeddings(ctx)[0]
    for c, name in enumerate(["dog", "guitar"]):
        name_ids = access.tokenize([name]).ids[0, 1:-1]
        name_embeds = access.token_embedding(name_ids)
        n = len(name_ids)
        ctx_at = {"end": [1, 2, 3, 4], "front": [1 + n + i for i in range(4)]}
        ctx_at["middle"] = [1, 2, 3 + n, 4 + n]
        name_at = {"end": 5, "front": 1, "middle": 3}[position]
        assert torch.equal(embeds[c, ctx_at[position]], ctx)
        assert torch.equal(embeds[c, name_at : name_at + n], name_embeds)


def test_gradients_reach_only_the_context(open_clip_backend) -> None:
    access = promptable_text(open_clip_backend)
    prompts = ClassPrompts(access, NAMES, n_ctx=4)
    ctx = init_context(access, 4, None, gen(0))
    target = torch.randn(len(NAMES), open_clip_backend.embed_dim, generator=gen(2))

    def objective(context: torch.Tensor) -> torch.Tensor:
        return (prompts.encode(context)[0] * target).sum()

    with frozen(access.module):
        objective(ctx).backward()
    assert all(p.grad is None for p in open_clip_backend.model.parameters())
    # the gradient is the context's own: it predicts how the objective changes along a random
    # direction (a constant shift would not do: the first LayerNorm removes it)
    direction = torch.randn(ctx.shape, generator=gen(1))
    direction *= float(ctx.detach().norm()) / direction.norm()  # a change of the context's size
    with torch.no_grad():
        step = 0.01 * direction
        change = objective(ctx + step) - objective(ctx - step)
        predicted = 2 * (ctx.grad * step).sum()
        assert abs(change - predicted) < 0.05 * abs(predicted)
        # and the context matters: a change of its size moves the output
        moved = prompts.encode(ctx + direction)
        assert relative_change(moved, prompts.encode(ctx)) > 0.05  # 0.3-0.5 on the tiny model


def test_chunked_backward_gives_the_same_gradient(open_clip_backend) -> None:
    access = promptable_text(open_clip_backend)
    prompts = ClassPrompts(access, [*NAMES, "tree", "car"], n_ctx=4)
    target = torch.randn(5, open_clip_backend.embed_dim, generator=torch.Generator().manual_seed(0))
    grads, values = [], []
    for chunk in (256, 2):
        ctx = init_context(access, 4, None, torch.Generator().manual_seed(0))
        with frozen(access.module):
            values.append(
                prompts.backward_chunked(ctx, lambda t: (t * target).sum().square(), chunk)
            )
        grads.append(ctx.grad)
    assert torch.allclose(values[0], values[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


# -- CoOp family -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,options",
    [
        ("coop", {}),
        ("coop", {"class_specific": True, "position": "middle", "ctx_init": None}),
        ("kgcoop", {}),
        ("cocoop", {}),
        ("lora_text", {}),
        ("lora_image", {"views": 1}),
        ("visual_prompt", {"size": 4}),
        ("coop_unsupervised", {"per_class": 2}),
        ("coop_unsupervised", {"objective": "entropy"}),
        ("prompt_distill", {"teacher": "ncm"}),
        ("maple", {"depth": 2}),
        ("ivlp", {"depth": 1, "src_text": 1.0, "src_image": 1.0, "src_kl": 1.0}),
    ],
)
def test_save_load_round_trip_gives_identical_logits(
    name, options, open_clip_backend, images, tmp_path
) -> None:
    data = fit_data(open_clip_backend, images)
    method = create_method(name, epochs=2, **options).fit(data)
    backend = method.feature_backend(open_clip_backend)
    features = extract_features(backend, images, progress=False).features
    loaded = load_method(method.save(tmp_path / name))
    if name == "cocoop":
        with pytest.raises(RuntimeError, match="attach"):
            loaded.predict_logits(features)
        loaded.attach(open_clip_backend)
    assert loaded.get_params() == method.get_params()
    assert torch.equal(loaded.predict_logits(features), method.predict_logits(features))
    again = create_method(name, epochs=2, **options).fit(data)
    assert torch.equal(again.predict_logits(features), method.predict_logits(features))


@pytest.mark.parametrize("name", ["coop", "visual_prompt"])
def test_bf16_autocast_trains_close_to_fp32(name, open_clip_backend, images, monkeypatch) -> None:
    data = fit_data(open_clip_backend, images)
    options = {"size": 4} if name == "visual_prompt" else {}
    autocast: list[torch.dtype | None] = []  # per loss evaluation: the autocast dtype, if on
    cross_entropy = F.cross_entropy

    def spy(*args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        autocast.append(torch.get_autocast_dtype("cpu") if on else None)
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    logits = []
    for precision in ("fp32", "bf16"):
        autocast.clear()
        method = create_method(name, epochs=2, precision=precision, **options).fit(data)
        assert autocast and set(autocast) == {PRECISIONS[precision]}
        backend = method.feature_backend(open_clip_backend)
        features = extract_features(backend, images, progress=False).features
        logits.append(method.predict_logits(features))
    full, mixed = logits
    assert (full - mixed).abs().max() < 0.01 * full.abs().max()  # observed: below 0.001
    with pytest.raises(ValueError, match="precision 'fp16'"):
        create_method(name, precision="fp16")


RESUMED = {
    "coop": {},
    "cocoop": {},
    "lora_text": {},
    "lora_image": {"views": 1},
    "visual_prompt": {"size": 4},
    "maple": {"depth": 2, "gpa_mean": 2.0, "gpa_std": 1.0},
}


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_resumed_training_equals_uninterrupted_training(
    name, open_clip_backend, images, tmp_path
) -> None:
    data = fit_data(open_clip_backend, images)
    options = RESUMED[name]
    whole = create_method(name, epochs=4, batch_size=5, **options).fit(data)
    data.checkpoint_dir = tmp_path

    def interrupt(epoch: int, seconds: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    first = create_method(name, epochs=4, batch_size=5, **options)
    first.on_epoch = interrupt
    with pytest.raises(KeyboardInterrupt):
        first.fit(data)
    resumed = create_method(name, epochs=4, batch_size=5, **options).fit(data)
    assert len(resumed.epoch_seconds) == 2  # epochs 2 and 3 only
    # PEFT's LoRA on nn.MultiheadAttention merges and unmerges the update at every forward,
    # which leaves float rounding in the copied weights: equal up to that rounding
    atol = 1e-6 if name.startswith("lora_") else 0.0
    for key in whole._state:
        assert torch.allclose(whole.state(key), resumed.state(key), rtol=0, atol=atol), key


def test_cached_and_reencoding_paths_agree(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images, views=2)
    cached = create_method("coop", epochs=3, batch_size=5).fit(data)
    fresh = create_method("coop", epochs=3, batch_size=5, image_path="reencode").fit(data)
    assert torch.allclose(cached.state("ctx"), fresh.state("ctx"), atol=1e-4)


def test_kgcoop_keeps_class_embeddings_near_the_hand_made_ones(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    data.support_labels = data.support_labels.roll(4)  # labels that pull away from the text
    drift = {}
    for name in ("coop", "kgcoop"):
        method = create_method(name, epochs=5, lr=2e-2).fit(data)
        drift[name] = (method.state("text") - data.class_embeddings).pow(2).sum(-1).mean()
    assert drift["kgcoop"] < 0.5 * drift["coop"]


def test_new_class_names_are_embedded_with_the_learned_context(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    method = create_method("coop", epochs=0).fit(data)
    novel = method.for_classes(open_clip_backend, ["tree", "car"])
    hand = open_clip_backend.encode_texts(["a photo of a tree.", "a photo of a car."])
    assert torch.allclose(novel.state("text"), hand, atol=1e-5)
    assert novel.predict_logits(data.support_features).shape == (12, 2)
    assert method.predict_logits(data.support_features).shape == (12, 3)
    specific = create_method("coop", epochs=1, class_specific=True).fit(data)
    with pytest.raises(ValueError, match="class-specific context cannot embed"):
        specific.for_classes(open_clip_backend, ["tree"])
    cocoop = create_method("cocoop", epochs=1).fit(data)
    assert cocoop.for_classes(open_clip_backend, ["tree"]).predict_logits(
        data.support_features
    ).shape == (12, 1)


@pytest.mark.parametrize("name", ["coop", "kgcoop", "cocoop", "lora_text", "visual_prompt"])
def test_runner_transfer_to_new_classes(name, open_clip_backend, images, tmp_path) -> None:
    data = fit_data(open_clip_backend, images)
    options = {"size": 4} if name == "visual_prompt" else {}
    method = create_method(name, epochs=1, **options).fit(data)
    novel = ["tree", "car"]
    text = class_embeddings(open_clip_backend, novel, PromptSet(("a photo of a {}.",)))
    features = data.support_features
    assert method.supports_new_classes
    with torch.inference_mode():  # as the runner calls it
        logits = method.transfer_logits(features, text, novel)
    assert logits.shape == (12, 2)
    loaded = load_method(method.save(tmp_path / name))
    if name != "visual_prompt":
        with pytest.raises(RuntimeError, match="attach"):
            loaded.transfer_logits(features, text, novel)
        loaded.attach(open_clip_backend)
    assert torch.allclose(loaded.transfer_logits(features, text, novel), logits, atol=1e-5)
    assert not create_method("coop", class_specific=True).supports_new_classes


# -- unlabeled images ---------------------------------------------------------------------
def test_distilled_student_follows_its_teacher(open_clip_backend, images, tmp_path) -> None:
    data = fit_data(open_clip_backend, images)
    teacher = create_method("coop", epochs=10, lr=5e-2, ctx_init=None).fit(data)
    data.unlabeled_includes_test = True
    student = create_method(
        "prompt_distill", teacher=str(teacher.save(tmp_path / "teacher")), epochs=10, lr=5e-2
    ).fit(data)
    assert student.selected["transductive"] is True
    features = data.unlabeled_features
    agree = (student.predict(features) == teacher.predict(features)).float().mean()
    zeroshot = (features @ data.class_embeddings.T).argmax(-1)
    assert agree >= (zeroshot == teacher.predict(features)).float().mean()
    loaded = load_method(student.save(tmp_path / "student"))
    assert loaded.selected["transductive"] is True


def test_distillation_fits_a_named_teacher_on_the_same_shots(
    open_clip_backend, images, tmp_path
) -> None:
    data = fit_data(open_clip_backend, images)
    data.checkpoint_dir = tmp_path / "ckpt"
    options = {"teacher": "coop", "teacher_params": {"epochs": 10, "lr": 5e-2, "ctx_init": None}}
    student = create_method("prompt_distill", epochs=10, lr=5e-2, **options).fit(data)
    teacher = create_method("coop", **options["teacher_params"]).fit(data)
    assert student.selected["teacher"] == {"method": "coop", "selected": teacher.selected}
    assert (tmp_path / "ckpt" / "teacher").is_dir()  # the teacher checkpoints apart
    features = data.unlabeled_features
    agree = (student.predict(features) == teacher.predict(features)).float().mean()
    zeroshot = (features @ data.class_embeddings.T).argmax(-1)
    assert agree >= (zeroshot == teacher.predict(features)).float().mean()
    # the teacher gets the labeled kinds it reads, and nothing unlabeled
    seen: list[FitData] = []

    class Spy(NearestClassMean):
        def fit(self, given: FitData) -> Spy:
            seen.append(given)
            return super().fit(given)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS, "spy", Spy)
        create_method("prompt_distill", teacher="spy", epochs=1).fit(data)
    assert seen[0].unlabeled_features is None and seen[0].backend is None
    assert torch.equal(seen[0].support_features, data.support_features)
    for teacher_name, match in (
        ("coop_unsupervised", "unlabeled images itself"),
        ("visual_prompt", "adapts the image tower"),
    ):
        with pytest.raises(ValueError, match=match):
            create_method("prompt_distill", teacher=teacher_name).fit(data)
    with pytest.raises(ValueError, match="teacher_params apply to a teacher fitted here"):
        create_method("prompt_distill", teacher=str(tmp_path), teacher_params={"a": 1}).fit(data)


def adapted_on(backend, method, directory: Path, classnames: list[str]) -> str:
    """Save ``method`` with the ``adapted`` block ``clipadapt adapt`` writes (the part a
    teacher reads: the backend's spec and image fingerprint, the class names)."""
    model = {"spec": backend.info.spec, "image_fingerprint": backend.image_fingerprint}
    block = {"model": model, "classes": {"classnames": classnames}}
    return str(method.save(directory, {"adapted": block}))


def test_distillation_from_a_model_adapted_on_another_backend(
    open_clip_backend, hf_backend, images, tmp_path
) -> None:
    hf_data = fit_data(hf_backend, images, views=0)
    teacher = create_method("ncm").fit(hf_data)
    out = adapted_on(hf_backend, teacher, tmp_path / "teacher", NAMES)
    data = fit_data(open_clip_backend, images)
    data.feature_cache = FeatureCache(tmp_path / "cache")
    student = create_method("prompt_distill", teacher=out, epochs=10, lr=5e-2).fit(data)
    assert student.selected["teacher"] == {"saved": out, "model": hf_backend.info.spec}
    target = teacher.predict(hf_data.support_features)
    agree = (student.predict(data.unlabeled_features) == target).float().mean()
    zeroshot = (data.unlabeled_features @ data.class_embeddings.T).argmax(-1)
    assert agree >= (zeroshot == target).float().mean()
    again = extract_features(hf_backend, images, cache=data.feature_cache, progress=False)
    assert again.cached == len(images)  # the teacher encoded through the configured cache
    data.unlabeled_paths = None
    with pytest.raises(ValueError, match="unlabeled_paths is needed"):
        create_method("prompt_distill", teacher=out, epochs=1).fit(data)
    data = fit_data(open_clip_backend, images)
    data.classnames = ["a", "b", "c"]
    with pytest.raises(ValueError, match="was adapted on classes"):
        create_method("prompt_distill", teacher=out, epochs=1).fit(data)
    moved = adapted_on(hf_backend, teacher, tmp_path / "moved", NAMES)
    config = json.loads((Path(moved) / "config.json").read_text())
    config["adapted"]["model"]["image_fingerprint"] = "other"
    (Path(moved) / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="adapt the teacher again"):
        create_method("prompt_distill", teacher=moved, epochs=1).fit(
            fit_data(open_clip_backend, images)
        )


def test_a_saved_image_side_teacher_encodes_the_images_itself(
    open_clip_backend, images, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "cache"))
    data = fit_data(open_clip_backend, images)  # FitData.feature_cache None: no cache
    prompt = create_method("visual_prompt", epochs=1, size=4).fit(data)
    saved = str(prompt.save(tmp_path / "teacher"))
    logits, record = teacher_logits("s", saved, {}, data, data.unlabeled_features)
    own = extract_features(prompt.feature_backend(open_clip_backend), images, progress=False)
    assert record == {"saved": saved}
    assert torch.allclose(logits, prompt.predict_logits(own.features), atol=1e-5)
    plain = prompt.predict_logits(data.unlabeled_features)
    assert relative_change(plain, logits) > 5e-4  # 0.007 on the tiny model
    assert not (tmp_path / "cache").exists()  # the default cache was not opened


def test_pseudo_labels_keep_the_most_confident_per_class(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    method = create_method("coop_unsupervised", per_class=1, epochs=1).fit(data)
    predicted = (data.unlabeled_features @ data.class_embeddings.T).argmax(-1)
    assert method.selected["pseudo_labelled"] == len(predicted.unique())
    assert method.selected["transductive"] is False


def test_unlabeled_methods_need_unlabeled_features(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    data.unlabeled_features = None
    with pytest.raises(ValueError, match=r"fit needs FitData\.unlabeled_features"):
        create_method("coop_unsupervised").fit(data)


# -- LoRA and visual prompts ---------------------------------------------------------------
def test_lora_trains_only_adapters_and_leaves_the_backend_untouched(
    open_clip_backend, images, tmp_path
) -> None:
    data = fit_data(open_clip_backend, images)
    reference = open_clip_backend.encode_texts(["a photo of a dog."])
    fingerprint = open_clip_backend.text_fingerprint
    method = create_method("lora_text", epochs=3, lr=1e-2).fit(data)
    assert torch.equal(open_clip_backend.encode_texts(["a photo of a dog."]), reference)
    del open_clip_backend._text_fp
    assert open_clip_backend.text_fingerprint == fingerprint
    lora = [k for k in method._state if k.startswith("lora.")]
    assert lora and all("lora_A" in k or "lora_B" in k for k in lora)
    assert any(method.state(k).abs().sum() > 0 for k in lora if "lora_B" in k)
    merged = method.merged_backend(open_clip_backend)
    assert merged.text_fingerprint != fingerprint
    merged_text = F.normalize(merged.encode_texts([f"a photo of a {n}." for n in NAMES]))
    assert torch.allclose(merged_text, method.state("text"), atol=1e-5)
    out = method.save_adapter(tmp_path / "adapter")
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    alone = type(method).from_adapter(out, open_clip_backend, NAMES)
    assert torch.allclose(alone.state("text"), method.state("text"), atol=1e-6)


def test_lora_runs_on_the_hugging_face_backend(hf_backend, images) -> None:
    data = fit_data(hf_backend, images, views=0)
    data.support_features = torch.randn(12, hf_backend.embed_dim)
    method = create_method("lora_text", epochs=1).fit(data)
    assert method.predict_logits(data.support_features).shape == (12, 3)


def test_visual_prompt_changes_only_its_border(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    method = create_method("visual_prompt", epochs=2, size=4, lr=0.1).fit(data)
    prompt = method.state("prompt")
    assert prompt[:, 4:-4, 4:-4].abs().sum() == 0 and prompt.abs().sum() > 0
    prompted = method.feature_backend(open_clip_backend)
    assert prompted.image_fingerprint != open_clip_backend.image_fingerprint
    plain = extract_features(open_clip_backend, images[:2], progress=False).features
    features = extract_features(prompted, images[:2], progress=False).features
    assert relative_change(features, plain) > 0.01  # 0.15 on the tiny model


# -- deep prompts on a ViT ----------------------------------------------------------------
def _deep_setup(open_clip_backend, coupled: bool):
    from clipadapt.methods.prompting.deep import IVLP, MaPLe

    method = (MaPLe if coupled else IVLP)(depth=2, n_ctx=2)
    access = promptable_text(open_clip_backend)
    _, _, width = method._check_depth(open_clip_backend, access)
    params = method._init(access, width, torch.Generator().manual_seed(0))
    return method, access, params


@pytest.mark.parametrize("coupled", [True, False])
def test_deep_vision_prompts_are_appended_and_replaced_per_layer(
    coupled, open_clip_backend
) -> None:
    from clipadapt.methods.prompting.deep import block_prompts

    method, _, params = _deep_setup(open_clip_backend, coupled)
    blocks = open_clip_backend.model.visual.transformer.resblocks
    seen = []
    handles = [b.register_forward_hook(lambda m, i, o: seen.append(o.clone())) for b in blocks]
    pixels = torch.randn(2, 3, 32, 32)
    vision = method._vision(params)
    with frozen(open_clip_backend.model), block_prompts(blocks, vision, "append"):
        out = open_clip_backend.encode_image_batch(pixels)
    for handle in handles:
        handle.remove()
    patches = (32 // 8) ** 2 + 1
    assert [s.shape[1] for s in seen] == [patches + 2, patches + 2]
    out.sum().backward()
    assert all(p.grad is None for p in open_clip_backend.model.parameters())
    trained = ["couple_w", "couple_b", "ctx", "text_deep"] if coupled else ["vision"]
    assert all(params[k].grad is not None and params[k].grad.abs().sum() > 0 for k in trained)
    with torch.no_grad():
        plain = open_clip_backend.encode_image_batch(pixels)
        noise = torch.Generator().manual_seed(1)  # not a constant: LayerNorm removes those
        shifted = [v + torch.randn(v.shape, generator=noise) for v in vision]
        with block_prompts(blocks, [vision[0], shifted[1]], "append"):
            deeper = open_clip_backend.encode_image_batch(pixels)
    assert relative_change(out, plain) > 1e-3  # 0.06 on the tiny model
    assert relative_change(deeper, out) > 1e-3  # 0.03-0.05


def test_deep_text_prompts_replace_the_context_states_after_the_first_layer(
    open_clip_backend,
) -> None:
    from clipadapt.methods.prompting.deep import block_prompts

    _, access, params = _deep_setup(open_clip_backend, coupled=False)
    prompts = ClassPrompts(access, NAMES, 2)
    blocks = open_clip_backend.model.transformer.resblocks
    deep = params["text_deep"][0]
    seen = []
    with torch.no_grad(), block_prompts(blocks, [params["ctx"], deep], "after_start"):
        # registered after the insertion hook, so it sees block 1's input after insertion
        handle = blocks[1].register_forward_pre_hook(
            lambda m, a, k: seen.append(a[0].clone()), with_kwargs=True
        )
        with_deep = prompts.encode(params["ctx"])
        handle.remove()
    assert torch.equal(seen[0][:, 1:3], deep.expand(3, -1, -1))
    with torch.no_grad():
        assert relative_change(with_deep, prompts.encode(params["ctx"])) > 0.01  # 0.27


def test_deep_prompt_errors(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    with pytest.raises(ValueError, match=r"depth 5 must be between 1 and the towers' 2 layers"):
        create_method("maple", depth=5).fit(data)


# -- bad input -----------------------------------------------------------------------------
def test_too_many_context_tokens_is_a_clear_error(hf_backend, images) -> None:
    data = fit_data(hf_backend, images, views=0)
    data.support_features = torch.randn(12, hf_backend.embed_dim)
    with pytest.raises(
        ValueError, match=r"35 context tokens \+ 6 tokens .* exceed .* maximum of 40"
    ):
        create_method("coop", n_ctx=35, ctx_init=None).fit(data)


def test_fit_without_the_backend_names_the_field(open_clip_backend, images) -> None:
    data = fit_data(open_clip_backend, images)
    data.backend = None
    with pytest.raises(ValueError, match=r"coop: fit needs FitData\.backend"):
        create_method("coop").fit(data)
    data.backend, data.support_paths = open_clip_backend, None
    with pytest.raises(ValueError, match=r"visual_prompt: fit needs FitData\.support_paths"):
        create_method("visual_prompt").fit(data)


def test_vit_only_methods_name_the_tower_on_a_cnn(open_clip_backend) -> None:
    class Fake:
        info = open_clip_backend.info

    with pytest.raises(ValueError, match="maple inserts prompts into a ViT image tower"):
        vit_image_tower(Fake(), "maple")
    assert vit_image_tower(open_clip_backend, "maple") is open_clip_backend.model.visual


def test_lite_text_access_matches_its_encoder() -> None:
    lite = create_backend("lite")
    access = promptable_text(lite)
    tokens = access.tokenize(["a photo of a dog."])
    with torch.no_grad():
        mine = access.encode_embedded(access.token_embedding(tokens.ids), tokens)
    assert torch.allclose(mine, lite.encode_text_batch(["a photo of a dog."]), atol=1e-5)
    with pytest.raises(ValueError, match=r"maple .* has a CNN"):
        vit_image_tower(lite, "maple")
    with pytest.raises(ValueError, match=r"ivlp inserts prompts into a ViT image tower, but lite"):
        create_method("ivlp").fit(
            FitData(
                class_embeddings=torch.eye(3, lite.embed_dim),
                logit_scale=10.0,
                classnames=NAMES,
                support_features=torch.eye(3, lite.embed_dim),
                support_labels=torch.arange(3),
                backend=lite,
                support_paths=["a", "b", "c"],
            )
        )


# -- LoRA on the image tower ----------------------------------------------------------------
@pytest.mark.parametrize("which", ["open_clip_backend", "hf_backend"])
def test_image_lora_trains_only_adapters_and_changes_the_image_features(
    which, images, request, tmp_path
) -> None:
    backend = request.getfixturevalue(which)
    data = fit_data(backend, images, views=0)
    plain = extract_features(backend, images, progress=False).features
    image_fp, text_fp = backend.image_fingerprint, backend.text_fingerprint
    method = create_method("lora_image", epochs=2, lr=1e-2, views=1).fit(data)
    # the backend itself is untouched
    del backend._image_fp, backend._text_fp
    assert (backend.image_fingerprint, backend.text_fingerprint) == (image_fp, text_fp)
    lora = [k for k in method._state if k.startswith("lora.")]
    assert lora and all("lora_A" in k or "lora_B" in k for k in lora)
    assert any(method.state(k).abs().sum() > 0 for k in lora if "lora_B" in k)
    assert torch.equal(extract_features(backend, images, progress=False).features, plain)
    # evaluation features go through the adapted tower, under their own fingerprint
    adapted = method.feature_backend(backend)
    assert adapted.image_fingerprint != image_fp
    assert adapted.text_fingerprint == text_fp
    features = extract_features(adapted, images, progress=False).features
    assert relative_change(features, plain) > 1e-3  # 0.03 on the tiny model
    # save/load and the adapter on its own give identical features and logits
    loaded = load_method(method.save(tmp_path / "saved"))
    again = loaded.feature_backend(backend)
    assert again.image_fingerprint == adapted.image_fingerprint
    assert torch.equal(extract_features(again, images, progress=False).features, features)
    assert torch.equal(loaded.predict_logits(features), method.predict_logits(features))
    out = method.save_adapter(tmp_path / "adapter")
    alone = type(method).from_adapter(out, backend, NAMES, data.class_embeddings)
    assert alone.feature_backend(backend).image_fingerprint == adapted.image_fingerprint
    assert torch.equal(alone.predict_logits(features), method.predict_logits(features))


def test_image_lora_gradients_reach_only_the_adapters(open_clip_backend) -> None:
    method = create_method("lora_image")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapted, module, targets = method._adapted(open_clip_backend)
    assert targets == ["attn"]
    for name, param in module.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                param.normal_()  # a non-zero update, so every adapter tensor gets a gradient
    pixels = torch.randn(2, 3, 32, 32)
    before = open_clip_backend.encode_images(pixels)
    adapted.encode_image_batch(pixels).square().sum().backward()
    grads = {n for n, p in adapted.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert {n for n, p in module.named_parameters() if p.requires_grad} <= {
        n.removeprefix("visual.") for n in grads
    }
    assert all(p.grad is None for p in open_clip_backend.model.parameters())
    assert relative_change(adapted.encode_images(pixels), before) > 0.01  # 0.37
    assert torch.equal(open_clip_backend.encode_images(pixels), before)


def test_image_lora_names_the_tower_on_a_cnn(open_clip_backend) -> None:
    class Fake:
        info = open_clip_backend.info
        image_tower = torch.nn.Conv2d(3, 4, 3)

    data = FitData(
        class_embeddings=torch.eye(3, 16),
        logit_scale=10.0,
        classnames=NAMES,
        support_features=torch.eye(3, 16),
        support_labels=torch.arange(3),
        backend=Fake(),
        support_paths=["a", "b", "c"],
    )
    with pytest.raises(ValueError, match=r"lora_image puts LoRA into .* has a CNN \(Conv2d\)"):
        create_method("lora_image").fit(data)
