"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) at severities 1-5.

The definitions and constants are those of the PyPI package ``imagecorruptions`` 1.1.2
(which generalises the ImageNet-C code to any image size); that package does not run with
NumPy 2 and current scikit-image (``np.float_``, ``multichannel=``), so they are written
here in NumPy, PIL and SciPy, drawing every random number from the ``rng`` passed in;
``frost`` and ``spatter`` call OpenCV's own operators as the package does (the extra
``clipadapt[corruptions]``; imported when one of them runs).
``benchmarks/corruption_reference_check.py`` compares them with the package's outputs given
the same random draws (``benchmarks/results/corruption_reference_check.json``): identical
bytes except ``impulse_noise`` (the package's draws cannot be seeded; the changed fraction
agrees) and at most 1 grey level of float rounding before truncation.

* ``COMMON``: the 15 corruptions of ImageNet-C; mean corruption accuracy and mCE average them.
* ``EXTRA``: ImageNet-C's held-out validation corruptions, reported apart.
* ``glass_blur`` keeps the reference's in-place "swap", which copies the neighbour pixel
  onto the current one (the ImageNet-C data were made with it).
* ``frost`` blends one of the frost photographs shipped inside ``imagecorruptions``, read
  from that installed package's folder (``pip install --no-deps imagecorruptions``; it is
  never imported), resized with OpenCV's bicubic.
* ``spatter`` is water drops at severities 1-3 and mud at 4-5, as in the package.

``STYLES`` are style changes without severity for crafted validation shifts (``grayscale``,
``edges``: dark Sobel edges on white, ``posterize``: 2 bits per channel); ``STYLE_VERSION``
keys their cache entries.

Images are corrupted on a ``CANVAS`` x ``CANVAS`` RGB canvas (the constants are in pixels of
ImageNet-C's 224 crops); ``corrupt`` returns uint8, truncated as the package does.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

VERSION = "imagenet-c/imagecorruptions-1.1.2/v2"
"""Part of every corruption view's cache key: change it whenever a definition changes."""
STYLE_VERSION = "style/v1"
CANVAS = 224
SEVERITIES = (1, 2, 3, 4, 5)
COMMON = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
NEEDS_OPENCV = ("frost", "spatter")
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray | Image.Image]


def corrupt(pixels: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``pixels`` (H, W, 3) uint8 under corruption ``name`` at ``severity`` (1-5), uint8."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be 1-5, got {severity}")
    out = CORRUPTIONS[name](pixels, severity, rng)
    return np.asarray(out).astype(np.uint8)


# -- helpers ------------------------------------------------------------------------------
def _gaussian(x: np.ndarray, sigma, *, channels: bool, mode: str = "nearest", truncate=4.0):
    """scikit-image's ``gaussian`` (scipy's filter; the channel axis not blurred)."""
    from scipy.ndimage import gaussian_filter

    sigmas = (sigma, sigma, 0) if channels else sigma
    return gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    from scipy.ndimage import zoom

    h = math.ceil(x.shape[0] / factor)
    w = math.ceil(x.shape[1] / factor)
    top, left = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
    return zoom(x[top : top + h, left : left + w], (factor, factor, 1), order=1)


def _shift(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``x`` moved by (dx, dy) pixels, edges replicated."""
    rows = np.clip(np.arange(x.shape[0]) - dy, 0, x.shape[0] - 1)
    cols = np.clip(np.arange(x.shape[1]) - dx, 0, x.shape[1] - 1)
    return x[rows][:, cols]


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided Gaussian-weighted line of shifted copies along ``angle`` degrees."""
    width = 2 * radius + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel /= kernel.sum()
    py, px = width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle))
    hypot = math.hypot(py, px)
    blurred = np.zeros(x.shape, np.float64)
    for i in range(width):
        dy = -math.ceil(i * py / hypot - 0.5)
        dx = -math.ceil(i * px / hypot - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break
        blurred += kernel[i] * _shift(x, dx, dy)
    return blurred


def _disk(radius: int, alias_blur: float) -> np.ndarray:
    """An anti-aliased disk kernel (OpenCV's GaussianBlur of an aliased disk)."""
    from scipy.ndimage import correlate1d

    span = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = 3 if radius <= 8 else 5
    xx, yy = np.meshgrid(span, span)
    disk = np.asarray(xx**2 + yy**2 <= radius**2, np.float32)
    disk /= disk.sum()
    taps = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    taps /= taps.sum()
    for axis in (0, 1):  # OpenCV's default border is reflect-101, scipy's "mirror"
        disk = correlate1d(disk, taps, axis=axis, mode="mirror")
    return disk


def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's ``rgb2hsv`` (hue in [0, 1))."""
    value = rgb.max(-1)
    delta = np.ptp(rgb, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(delta == 0, 0.0, delta / value)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        hue = np.zeros_like(value)
        hue = np.where(r == value, (g - b) / delta, hue)
        hue = np.where(g == value, 2.0 + (b - r) / delta, hue)
        hue = np.where(b == value, 4.0 + (r - g) / delta, hue)
    hue = np.where(delta == 0, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, saturation, value], -1)


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's ``hsv2rgb``."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = np.stack([sector] * 3, -1).astype(np.uint8) % 6
    table = np.stack(
        [
            np.stack((v, t, p), -1),
            np.stack((q, v, p), -1),
            np.stack((p, v, t), -1),
            np.stack((p, q, v), -1),
            np.stack((t, p, v), -1),
            np.stack((v, p, q), -1),
        ]
    )
    return np.choose(sector, table)


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A diamond-square height map in [0, 1], ``size`` a power of two."""
    field = np.zeros((size, size))
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = field[0:size:step, 0:size:step]
        total = corners + np.roll(corners, -1, axis=0)
        total += np.roll(total, -1, axis=1)
        field[half:size:step, half:size:step] = noisy_mean(total)
        centres = field[half:size:step, half:size:step]
        corners = field[0:size:step, 0:size:step]
        total = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        field[0:size:step, half:size:step] = noisy_mean(total)
        total = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        field[half:size:step, 0:size:step] = noisy_mean(total)
        step //= 2
        wibble /= decay
    field -= field.min()
    return field / field.max()


def frost_directory() -> Path:
    """The frost photographs inside the installed ``imagecorruptions`` (not imported)."""
    spec = importlib.util.find_spec("imagecorruptions")
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    if folder is None or not all((folder / f).is_file() for f in FROST_FILES):
        raise FileNotFoundError(
            "the frost corruption blends the frost photographs shipped in the PyPI package "
            "imagecorruptions: pip install --no-deps imagecorruptions (or leave frost out)"
        )
    return folder


def opencv(name: str) -> ModuleType:
    """OpenCV (``cv2``), which corruption ``name`` uses as the reference does."""
    try:
        import cv2
    except ImportError:
        raise ValueError(
            f"the {name} corruption needs OpenCV: pip install 'clipadapt[corruptions]' "
            f"(or leave {name} out)"
        ) from None
    return cv2


def require(name: str) -> None:
    """Fail now, naming what to install, when corruption ``name`` needs a missing part."""
    if name == "frost":
        frost_directory()
    if name in NEEDS_OPENCV:
        opencv(name)


# -- the corruptions ----------------------------------------------------------------------
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [60, 25, 12, 5, 3][severity - 1]
    x = x / 255.0
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on a fraction ``c`` of the values (scikit-image's ``s&p``)."""
    c = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    x = x / 255.0
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return x * 255


def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    x = x / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [1, 2, 3, 4, 6][severity - 1]
    return np.clip(_gaussian(x / 255.0, c, channels=True), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][
        severity - 1
    ]
    x = (_gaussian(x / 255.0, sigma, channels=True) * 255).astype(np.uint8)
    height, width = x.shape[:2]
    hs = range(height - delta, delta, -1)
    ws = range(width - delta, delta, -1)
    moves = rng.integers(-delta, delta, size=(iterations * len(hs) * len(ws), 2)).tolist()
    source = list(range(height * width))  # which original pixel each position now holds
    k = 0
    for _ in range(iterations):
        for h in hs:
            for w in ws:
                dx, dy = moves[k]
                k += 1
                source[h * width + w] = source[(h + dy) * width + w + dx]
    x = x.reshape(-1, x.shape[2])[source].reshape(x.shape)
    return np.clip(_gaussian(x / 255.0, sigma, channels=True), 0, 1) * 255


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import correlate

    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    kernel = _disk(radius, alias)
    x = x / 255.0
    out = np.stack([correlate(x[..., d], kernel, mode="mirror") for d in range(3)], -1)
    return np.clip(out, 0, 1) * 255


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angle = rng.uniform(-45, 45)
    return np.clip(_motion_blur(x, radius, sigma, angle), 0, 255)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factors = [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ][severity - 1]
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        layer = _clipped_zoom(x, factor)[: x.shape[0], : x.shape[1]]
        out[: layer.shape[0], : layer.shape[1]] += layer
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, cut, radius, sigma, keep = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ][severity - 1]
    x = np.asarray(x, np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
    layer = _clipped_zoom(layer[..., None], zoom)
    layer[layer < cut] = 0
    layer = np.clip(layer.squeeze(), 0, 1)
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45))
    layer = (np.round(layer * 255).astype(np.uint8) / 255.0)[..., None]
    layer = layer[: x.shape[0], : x.shape[1]]
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)  # OpenCV's RGB2GRAY
    x = keep * x + (1 - keep) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    keep, amount = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    name = FROST_FILES[int(rng.integers(5))]
    with Image.open(frost_directory() / name) as image:
        overlay = image.convert("RGB")
    fw, fh = overlay.size
    height, width = x.shape[:2]
    scale = 1.1 * max(1.0, height / fh, width / fw)
    cv2 = opencv("frost")
    size = (math.ceil(fw * scale), math.ceil(fh * scale))
    frost_pixels = cv2.resize(np.asarray(overlay), size, interpolation=cv2.INTER_CUBIC)
    top = int(rng.integers(0, frost_pixels.shape[0] - height))
    left = int(rng.integers(0, frost_pixels.shape[1] - width))
    crop = frost_pixels[top : top + height, left : left + width]
    return np.clip(keep * x + amount * crop, 0, 255)


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Thresholded blurred noise as pale turquoise water drops (severities 1-3: embossed
    distance to the drops' Canny edges) or as brown mud blobs (4-5)."""
    cv2 = opencv("spatter")
    loc, scale, sigma, cut, amount, mud = [
        (0.65, 0.3, 4, 0.69, 0.6, False),
        (0.65, 0.3, 3, 0.68, 0.6, False),
        (0.65, 0.3, 2, 0.68, 0.5, False),
        (0.65, 0.3, 1, 0.65, 1.5, True),
        (0.67, 0.4, 1, 0.65, 1.5, True),
    ][severity - 1]
    x = np.asarray(x, np.float32) / 255.0
    liquid = _gaussian(rng.normal(size=x.shape[:2], loc=loc, scale=scale), sigma, channels=False)
    liquid[liquid < cut] = 0
    if mud:
        blobs = _gaussian((liquid > cut).astype(np.float32), amount, channels=False)
        blobs[blobs < 0.8] = 0
        brown = np.array([63, 42, 20]) / 255.0 * blobs[..., None]
        return np.clip(x * (1 - blobs[..., None]) + brown, 0, 1) * 255
    liquid = (liquid * 255).astype(np.uint8)
    dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
    dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
    drops = liquid * dist
    # products of uint8 values: the floor of 1 changes nothing but 0 / 0 when there is no drop
    drops = drops / max(float(drops.max()), 1.0) * amount
    turquoise = (np.array([175, 238, 238]) / 255.0).astype(np.float32)
    return np.clip(x + drops[..., None] * turquoise, 0, 1) * 255


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    amount, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    height, width = x.shape[:2]
    size = 1 << (max(x.shape) - 1).bit_length()
    x = x / 255.0
    peak = x.max()
    x = x + amount * _plasma_fractal(size, decay, rng)[:height, :width][..., None]
    return np.clip(x * peak / (peak + amount), 0, 1) * 255


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    hsv = _rgb2hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(_hsv2rgb(hsv), 0, 1) * 255


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor, shift = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][severity - 1]
    hsv = _rgb2hsv(x / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor + shift, 0, 1)
    return np.clip(_hsv2rgb(hsv), 0, 1) * 255


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    x = x / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    x = np.asarray(x, np.float32) / 255.0
    shape = x.shape
    sigma = np.array(shape[:2]) * 0.01
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    most = shape[0] * 0.005
    dx, dy = (
        (
            _gaussian(
                rng.uniform(-most, most, size=shape[:2]),
                sigma,
                channels=False,
                mode="reflect",
                truncate=3,
            )
            * alpha
        ).astype(np.float32)[..., None]
        for _ in range(2)
    )
    cols, rows, chans = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = [np.reshape(rows + dy, -1), np.reshape(cols + dx, -1), np.reshape(chans, -1)]
    warped = map_coordinates(x, coords, order=1, mode="reflect").reshape(shape)
    return np.clip(warped, 0, 1) * 255


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> Image.Image:
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    height, width = x.shape[:2]
    small = Image.fromarray(x).resize((int(width * c), int(height * c)), Image.BOX)
    return small.resize((width, height), Image.NEAREST)


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> Image.Image:
    quality = [25, 18, 15, 10, 7][severity - 1]
    buffer = BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}


def grayscale(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (PIL's ``L``) in all three channels."""
    gray = np.asarray(Image.fromarray(x).convert("L"))
    return np.repeat(gray[..., None], 3, axis=2)


def edges(x: np.ndarray) -> np.ndarray:
    """Edges only: the Sobel gradient magnitude of the luma, dark on white, scaled so the
    99th percentile is black."""
    from scipy.ndimage import sobel

    gray = grayscale(x)[..., 0].astype(np.float64)
    magnitude = np.hypot(sobel(gray, axis=0), sobel(gray, axis=1))
    scale = max(float(np.percentile(magnitude, 99)), 1e-6)
    out = 255 * (1 - np.clip(magnitude / scale, 0, 1))
    return np.repeat(out.astype(np.uint8)[..., None], 3, axis=2)


def posterize(x: np.ndarray) -> np.ndarray:
    """2 bits per channel (PIL's ``ImageOps.posterize``)."""
    from PIL import ImageOps

    return np.asarray(ImageOps.posterize(Image.fromarray(x), 2))


STYLES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "grayscale": grayscale,
    "edges": edges,
    "posterize": posterize,
}
