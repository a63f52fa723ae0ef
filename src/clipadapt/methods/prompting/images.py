"""Support-set image features for prompt training: from the cache, or re-encoded each step.

The cached path reads ``FitData.support_features`` and ``support_views`` (the centre view and
the augmented views ``aug0, aug1, ...`` that the feature cache holds). The re-encoding path
decodes the support images once and, at every step, applies the same view's transform and
runs the frozen image tower, as the original CoOp code does; it gives the same features and
exists to measure what the cache saves, and for methods that train the image side.
"""

from __future__ import annotations

import torch

from clipadapt.data.images import load_image
from clipadapt.methods.base import FitData
from clipadapt.methods.common import support_sets
from clipadapt.models.base import Backend
from clipadapt.views import CENTER, DEFAULT_AUGMENT, augmented_view_name, view_transform

IMAGE_PATHS = ("cached", "reencode")


class SupportPixels:
    """Decoded support images; ``pixels(view, rows)`` applies view ``view`` (0 = centre)."""

    def __init__(
        self,
        backend: Backend,
        paths: list[str],
        n_views: int,
        augment: tuple[str, ...] = DEFAULT_AUGMENT,
    ) -> None:
        self.backend = backend
        # one read per file: a view's augmentation is seeded by the hash of these very pixels
        loaded = [load_image(path) for path in paths]
        self.images = [image for image, _ in loaded]
        self.hashes = [digest for _, digest in loaded]
        names = [CENTER] + [augmented_view_name(i, augment) for i in range(n_views)]
        self.transforms = [view_transform(backend.preprocess, name) for name in names]

    @property
    def n_sets(self) -> int:
        return len(self.transforms)

    def pixels(self, view: int, rows: torch.Tensor) -> torch.Tensor:
        transform = self.transforms[view % self.n_sets]
        batch = [transform(self.images[i], self.hashes[i]) for i in rows.tolist()]
        return torch.stack(batch).to(self.backend.device)


class SupportFeatures:
    """Frozen image features of the support set for epoch ``e`` (view ``e mod (1 + V)``)."""

    def __init__(self, data: FitData, image_path: str, method: str) -> None:
        if image_path not in IMAGE_PATHS:
            raise ValueError(f"{method}: image_path {image_path!r}: use one of {IMAGE_PATHS}")
        self.sets = support_sets(data)
        self.pixels = None
        if image_path == "reencode":
            self.pixels = SupportPixels(
                require_backend(data, method),
                require_paths(data, method),
                len(self.sets) - 1,
                data.augment,
            )

    def __call__(self, epoch: int, rows: torch.Tensor) -> torch.Tensor:
        if self.pixels is None:
            return self.sets[epoch % len(self.sets)][rows]
        # encode_images runs in inference mode; clone to use the result under autograd
        return self.pixels.backend.encode_images(self.pixels.pixels(epoch, rows)).clone()


def require_backend(data: FitData, method: str) -> Backend:
    if data.backend is None:
        raise ValueError(
            f"{method}: fit needs FitData.backend (the method reads 'tower': it runs the text "
            "or image tower while training), but it is None"
        )
    return data.backend


def require_paths(data: FitData, method: str) -> list[str]:
    if data.support_paths is None or len(data.support_paths) != len(data.support_labels):
        raise ValueError(
            f"{method}: fit needs FitData.support_paths, one image file per support example "
            "(the method reads 'support_images'), but it is missing or of the wrong length"
        )
    return [str(p) for p in data.support_paths]
