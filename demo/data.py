"""The demo's training set: RGB sample images that ship inside scikit-image (no network needed).

Each image is one class of the demo model. The same functions give the training script its augmented crops and the
tests their reference images, so "recognisable" is judged against exactly what the model was trained on.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: Training resolution in pixels (latent 16x16, 64 image tokens at patch size 2).
IMAGE_SIZE = 128


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        return image[index] if index is not None else image

    return load


#: class name -> loader of an HxWx3 uint8 image bundled with scikit-image.
SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "cat": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "galaxies": _skimage("hubble_deep_field"),
    "tissue": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "motorcycle": _skimage("stereo_motorcycle", 0),
}

CLASSES: list[str] = list(SOURCES)


def source_image(name: str) -> torch.Tensor:
    """The centre square crop of class ``name``'s image at full resolution, HWC float32 in 0..1."""
    array = SOURCES[name]()[..., :3]
    image = torch.from_numpy(np.ascontiguousarray(array)).float() / 255.0
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def _resize(image_hwc: torch.Tensor, size: int) -> torch.Tensor:
    chw = image_hwc.permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1)[0].permute(1, 2, 0)


def reference_image(name: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Class ``name``'s training image (whole centre square) as a ComfyUI IMAGE batch: (1, size, size, 3)."""
    return _resize(source_image(name), size).unsqueeze(0)


def augmented_crops(name: str, count: int, size: int = IMAGE_SIZE, min_scale: float = 0.85,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` random square crops (side ``min_scale``..1 of the square) resized to ``size``: (count, size, size, 3).

    No flips: the demo should reproduce its images recognisably, so augmentation only adds mild zoom/shift variety
    (different seeds give visibly different framings) without mirrored targets.
    """
    source = source_image(name)
    side = source.shape[0]
    crops = []
    for _ in range(count):
        scale = min_scale + (1.0 - min_scale) * torch.rand((), generator=generator).item()
        crop = max(8, int(round(side * scale)))
        top = int(torch.randint(0, side - crop + 1, (), generator=generator))
        left = int(torch.randint(0, side - crop + 1, (), generator=generator))
        crops.append(_resize(source[top:top + crop, left:left + crop], size))
    return torch.stack(crops)
