"""A forgetting regulariser in the spirit of ZSCL (Zheng et al. 2023) and LwF.

While a tower is fine-tuned, the tuned model's distribution over a reference vocabulary
(ImageNet's 1,000 class names by default, never the user's test classes) is pulled towards
the original model's on the same training images:

``R = 1/N sum_i KL( softmax(s f0(x_i) . T) || softmax(s f(x_i) . T) )``

with ``f0`` the original and ``f`` the tuned image embeddings, ``T`` the original model's
text embeddings of the vocabulary and ``s`` its logit scale. ZSCL distils on a separate
reference image set; here the training images themselves serve, as in LwF, so no other
data is needed.
"""

from __future__ import annotations

import torch

from clipadapt.models.base import Backend

REFERENCE_TEMPLATE = "a photo of a {}."


def reference_vocabulary(backend: Backend, texts: list[str] | None = None) -> torch.Tensor:
    """The original model's embeddings of ``texts`` (default: ImageNet class prompts)."""
    if texts is None:
        from clipadapt.models.lite_alignment import imagenet_classnames

        texts = [REFERENCE_TEMPLATE.format(c) for c in imagenet_classnames()]
    return backend.encode_texts(texts).clone()  # a normal tensor, usable under autograd


def retention_kl(
    original: torch.Tensor, tuned: torch.Tensor, vocabulary: torch.Tensor, scale: float
) -> torch.Tensor:
    """``R`` above for normalised image embeddings ``original`` (no gradient) and ``tuned``."""
    teacher = (scale * original @ vocabulary.T).softmax(-1)
    student = (scale * tuned @ vocabulary.T.to(tuned.dtype)).log_softmax(-1)
    return (torch.xlogy(teacher, teacher) - teacher * student).sum(-1).mean()
