"""The trainable parts of a backend's towers, named the same way for every model family.

Fine-tuning (``clipadapt.train``) needs, per tower, the module that holds its weights, its
blocks in order (to train the last N) and the output-side layers after the last block (a
final norm or projection, trained with the last blocks). ``tower_state`` / ``load_tower_state``
read and write a tower's weights as one flat mapping, which a fine-tuned model directory
stores (``clipadapt.models.finetuned``).

``lite``: the image tower is EfficientNet-Lite0 with its BatchNorms folded into the
convolutions (so BatchNorm statistics stay frozen whatever is trained); its blocks are the
16 MBConv blocks, then the 1x1 head convolution. The text tower is MiniLM's BERT encoder; the
fixed kernel map into the image space (``lite_alignment``) has no weights to train.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn

from clipadapt.catalog import TOWERS
from clipadapt.models.base import Backend


@dataclass
class Tower:
    """One tower: ``module`` holds every weight it uses; ``blocks`` in forward order;
    ``head`` the modules or parameters after the last block."""

    module: nn.Module
    blocks: list[nn.Module]
    head: list[nn.Module | nn.Parameter] = field(default_factory=list)

    def parameters_of_last(self, n: int) -> list[nn.Parameter]:
        """The parameters of the last ``n`` blocks and of the head (n >= 1)."""
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"last:N needs 1 <= N <= {len(self.blocks)} blocks, got {n}")
        params: list[nn.Parameter] = []
        for part in [*self.blocks[-n:], *self.head]:
            params += [part] if isinstance(part, nn.Parameter) else list(part.parameters())
        return params


def tower(backend: Backend, name: str) -> Tower:
    """Tower ``name`` ("image" or "text") of ``backend``; an error for a backend without
    trainable towers."""
    if name not in TOWERS:
        raise ValueError(f"tower {name!r}: use one of {TOWERS}")
    kind = type(backend).__name__
    if kind == "LiteBackend":
        return _lite(backend, name)
    if kind == "OpenClipBackend":
        return _open_clip(backend.model, name)
    if kind == "HFClipBackend":
        return _hf(backend.model, name)
    raise ValueError(f"{backend.info.spec}: {kind} has no trainable towers to fine-tune")


def _lite(backend: Backend, name: str) -> Tower:
    if name == "image":
        net = backend.image_tower
        return Tower(net, list(net._blocks), [net._conv_head])
    backend.alignment  # noqa: B018 - fixed to the pretrained text tower before it changes
    bert = backend.text_tower.bert
    return Tower(bert, list(bert.encoder.layer))


def _open_clip(model: nn.Module, name: str) -> Tower:
    if name == "image":
        visual = model.visual
        blocks = list(getattr(getattr(visual, "transformer", None), "resblocks", []))
        head = [
            getattr(visual, n) for n in ("ln_post", "proj") if getattr(visual, n, None) is not None
        ]
        return Tower(visual, blocks, head)
    text = nn.ModuleDict(
        {n: m for n, m in model.named_children() if n not in ("visual",)}
    )  # transformer, token_embedding, ln_final (parameters on the model itself below)
    for pname in ("positional_embedding", "text_projection"):
        param = getattr(model, pname, None)
        if isinstance(param, nn.Parameter):
            text.register_parameter(pname, param)
    head = [model.ln_final] + (
        [model.text_projection] if isinstance(model.text_projection, nn.Parameter) else []
    )
    return Tower(text, list(model.transformer.resblocks), head)


def _hf(model: nn.Module, name: str) -> Tower:
    if name == "image":
        vision = model.vision_model
        module = nn.ModuleDict(
            {"vision_model": vision, "visual_projection": model.visual_projection}
        )
        return Tower(
            module,
            list(vision.encoder.layers),
            [vision.post_layernorm, model.visual_projection],
        )
    text = model.text_model
    module = nn.ModuleDict({"text_model": text, "text_projection": model.text_projection})
    return Tower(module, list(text.encoder.layers), [text.final_layer_norm, model.text_projection])


def tuned_copy(backend: Backend, towers: tuple[str, ...] = TOWERS) -> Backend:
    """A copy of ``backend`` whose ``towers`` have weights of their own, to train or load
    new weights into; every other tensor is shared with ``backend``, left untouched."""
    modules = [tower(backend, name).module for name in towers]
    own = {id(t) for m in modules for t in chain(m.parameters(), m.buffers())}
    shared: dict[int, object] = {}
    for value in vars(backend).values():
        tensors = (
            chain(value.parameters(), value.buffers()) if isinstance(value, nn.Module) else [value]
        )
        for t in tensors:
            if isinstance(t, torch.Tensor) and id(t) not in own:
                shared[id(t)] = t
    tuned = copy.deepcopy(backend, shared)
    for attr in ("_image_fp", "_text_fp"):
        tuned.__dict__.pop(attr, None)
    return tuned


def tower_state(backend: Backend, name: str) -> dict[str, torch.Tensor]:
    """Tower ``name``'s weights as ``{"<tower>.<key>": tensor}`` (detached, CPU, contiguous)."""
    state = tower(backend, name).module.state_dict()
    return {f"{name}.{k}": v.detach().cpu().contiguous() for k, v in state.items()}


@torch.no_grad()
def load_tower_state(backend: Backend, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Load the towers present in ``tensors`` (keys as ``tower_state`` writes them) into
    ``backend``, strictly; returns the towers loaded. Resets the backend's fingerprints."""
    loaded = []
    for name in TOWERS:
        prefix = f"{name}."
        part = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if not part:
            continue
        module = tower(backend, name).module
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(
                f"the saved {name} tower does not fit {backend.info.spec}: {first}"
            ) from None
        loaded.append(name)
    for attr in ("_image_fp", "_text_fp"):
        backend.__dict__.pop(attr, None)
    return loaded
