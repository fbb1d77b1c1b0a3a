"""Decoding and the paper's augmentation, on uint8 images (docs/paper.md section 3).

Training: a random-sized crop (8-100% of the area, aspect 3/4-4/3, GoogLeNet section 6) resized
to `train_crop`, a horizontal flip, and a photometric distortion whose strength the experiment
sets (section 4.2.1 "reduce the photometric distortions"). Evaluation: shorter side to
`eval_resize`, centre `eval_crop`. Everything here stays uint8: the workers crop, resize and flip,
and hand over each image's colour parameters (`color_params`, a row of numbers); the training
process applies the colour to the whole batch on its device, fused with the normalisation
(`distort_color_batch`, called by engine.Runtime.inputs). `apply_color` is the same distortion on
one image: the per-image reference the batched one is tested against.

Speed: only the crop's pixels are resized (never the whole image), JPEGs are decoded by
libjpeg-turbo (simplejpeg) at the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the crop
at least the output size, and the resize is torch's uint8 antialiased bilinear kernel.

Randomness comes only from the `numpy.random.Generator` passed in, which the dataset derives
from (seed, epoch, index): the same sample gets the same augmentation whatever the worker count.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from bnrepro.errors import ConfigError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in original-image pixels

# Photometric distortion at strength 1: TF-slim's inception_preprocessing.distort_color with
# fast_mode=False, the published Inception pipeline (the paper gives no values): brightness
# +-32/255, saturation and contrast x[0.5, 1.5], hue +-0.2 of the colour circle, in one of its four
# orderings, each op as TensorFlow defines it (tf.image.adjust_*), clipped once at the end.
BRIGHTNESS = 32.0  # in 0-255 pixel units
SATURATION = 0.5
CONTRAST = 0.5
HUE = 0.2
COLOR_ORDERINGS = (  # distort_color's color_ordering 0-3
    ("brightness", "saturation", "hue", "contrast"),
    ("saturation", "brightness", "contrast", "hue"),
    ("contrast", "hue", "brightness", "saturation"),
    ("hue", "saturation", "contrast", "brightness"),
)
# A sample's colour as the workers send it (`color_params`): its ordering (-1: none), then the
# four values by name. NO_COLOR leaves an image as it is (evaluation, MNIST, strength 0).
COLOR_COLUMNS = ("ordering", "brightness", "saturation", "hue", "contrast")
NO_COLOR = (-1.0, 0.0, 1.0, 0.0, 1.0)


@dataclass(frozen=True)
class Augment:
    """The training augmentation's knobs (configs/data/*.yaml `augment`)."""

    min_area: float = 0.08
    max_area: float = 1.0
    min_aspect: float = 3 / 4
    max_aspect: float = 4 / 3
    flip: bool = True
    color_strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.min_area <= self.max_area <= 1:
            raise ConfigError(
                "data.augment.min_area and data.augment.max_area must satisfy 0 < min_area <= "
                f"max_area <= 1 (fractions of the image), got {self.min_area} and {self.max_area}"
            )
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ConfigError(
                "data.augment.min_aspect and data.augment.max_aspect must satisfy 0 < min_aspect "
                f"<= max_aspect, got {self.min_aspect} and {self.max_aspect}"
            )
        if not 0 <= self.color_strength <= 2:
            raise ConfigError(
                f"data.augment.color_strength must be in [0, 2], got {self.color_strength}"
            )


@dataclass(frozen=True)
class TrainParams:
    """One sample's augmentation, drawn before any pixel is decoded."""

    box: Box
    flip: bool
    color_ops: tuple[tuple[str, float], ...]  # e.g. (("hue", 0.1), ("contrast", 1.2), ...)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the file header, without decoding."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return w, h
    except ValueError:  # not a JPEG (ImageNet has a PNG and some CMYK files): ask PIL
        return Image.open(io.BytesIO(data)).size


def decode(data: bytes, min_width: int = 0, min_height: int = 0) -> np.ndarray:
    """RGB uint8 [H, W, 3], decoded at the smallest power-of-2 DCT scale that keeps the result at
    least min_width x min_height (0 = full size). Raises on corrupt, truncated or non-image data."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return _decode_pil(data, min_width, min_height)
    factor = 8 if min_width > 0 or min_height > 0 else 1
    while factor > 1 and (w // factor < min_width or h // factor < min_height):
        factor //= 2
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            fastdct=True,  # each a few % faster, differences below JPEG noise (simplejpeg docs)
            fastupsample=True,
            min_width=math.ceil(w / factor),
            min_height=math.ceil(h / factor),
        )
    except ValueError:  # CMYK/YCCK, which libjpeg-turbo cannot convert to RGB; truncated files
        return _decode_pil(data, min_width, min_height)


def _decode_pil(data: bytes, min_width: int, min_height: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (min_width, min_height))  # reduced DCT scale, as above
    return np.array(img.convert("RGB"))  # writable, as torch.from_numpy wants


def resized_crop(img: np.ndarray, box: Box, orig_size: tuple[int, int], out: int) -> torch.Tensor:
    """The `box` (in original-image pixels) of an image decoded at a possibly reduced scale,
    resized to out x out: uint8 [3, out, out]."""
    sx, sy = img.shape[1] / orig_size[0], img.shape[0] / orig_size[1]
    x0, y0 = int(box[0] * sx), int(box[1] * sy)
    x1 = max(x0 + 1, round(box[2] * sx))
    y1 = max(y0 + 1, round(box[3] * sy))
    crop = torch.from_numpy(img[y0:y1, x0:x1]).permute(2, 0, 1)[None]
    # torch's uint8 bilinear kernel is fastest on contiguous channels-last input.
    crop = crop.contiguous(memory_format=torch.channels_last)
    if crop.shape[-2:] != (out, out):
        crop = F.interpolate(crop, size=(out, out), mode="bilinear", antialias=True)
    return crop[0].contiguous()  # CHW: the colour operations work on whole channels


def sample_crop(width: int, height: int, aug: Augment, rng: np.random.Generator) -> Box:
    """Random-sized crop (GoogLeNet section 6): area uniform in [min_area, max_area] of the image,
    log-uniform aspect ratio; 10 tries, then the centre crop of the nearest allowed aspect. The
    same rule as torchvision's RandomResizedCrop."""
    area = width * height
    log_lo, log_hi = math.log(aug.min_aspect), math.log(aug.max_aspect)
    for _ in range(10):
        target = area * rng.uniform(aug.min_area, aug.max_area)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            return x, y, x + w, y + h
    aspect = min(max(width / height, aug.min_aspect), aug.max_aspect)
    w, h = (
        (width, round(width / aspect))
        if width / height < aspect
        else (round(height * aspect), height)
    )
    x, y = (width - w) // 2, (height - h) // 2
    return x, y, x + w, y + h


def sample_color(aug: Augment, rng: np.random.Generator) -> tuple[tuple[str, float], ...]:
    """One of distort_color's four orderings, with brightness, saturation, hue and contrast drawn
    from its ranges scaled by color_strength."""
    s = aug.color_strength
    if s == 0:
        return ()
    order = COLOR_ORDERINGS[int(rng.integers(len(COLOR_ORDERINGS)))]
    ranges = {
        "brightness": (-BRIGHTNESS * s, BRIGHTNESS * s),
        "saturation": (1 - SATURATION * s, 1 + SATURATION * s),
        "hue": (-HUE * s, HUE * s),
        "contrast": (1 - CONTRAST * s, 1 + CONTRAST * s),
    }
    return tuple((name, float(rng.uniform(*ranges[name]))) for name in order)


def sample_train(width: int, height: int, aug: Augment, rng: np.random.Generator) -> TrainParams:
    box = sample_crop(width, height, aug, rng)
    flip = bool(aug.flip and rng.random() < 0.5)
    return TrainParams(box, flip, sample_color(aug, rng))


def color_params(ops: tuple[tuple[str, float], ...]) -> tuple[float, ...]:
    """One sample's colour ops as a row of COLOR_COLUMNS: what a worker sends with its image."""
    if not ops:
        return NO_COLOR
    values = dict(ops)
    ordering = COLOR_ORDERINGS.index(tuple(values))  # ValueError for an order TF-slim never uses
    return (float(ordering), *(float(values[name]) for name in COLOR_COLUMNS[1:]))


def color_ops(params) -> tuple[tuple[str, float], ...]:
    """The colour ops of one row of COLOR_COLUMNS (color_params' inverse)."""
    ordering = int(params[0])
    if ordering < 0:
        return ()
    values = dict(zip(COLOR_COLUMNS[1:], (float(v) for v in params[1:]), strict=True))
    return tuple((name, values[name]) for name in COLOR_ORDERINGS[ordering])


# TensorFlow's colour operations on float RGB images [..., 3, H, W] (any range: TF clips only at
# the end). `v` is a number, or a tensor [N, 1, 1, 1] with one value per image of a batch.


def adjust_brightness(x: torch.Tensor, delta) -> torch.Tensor:
    """tf.image.adjust_brightness: x + delta."""
    return x + delta


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """tf.image.adjust_contrast: each channel scaled about its own mean over the image."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return x * factor + mean * (1 - factor)  # = (x - mean) * factor + mean, in one pass over x


def _max_min(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's largest and smallest channel, [..., 1, H, W] (faster than amax/amin here)."""
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)


def adjust_saturation(x: torch.Tensor, factor) -> torch.Tensor:
    """tf.image.adjust_saturation: HSV saturation x factor, clipped to [0, 1]; hue and value kept.

    Without the HSV round trip: a pixel's channels lie between its value V (max) and V - C
    (C = max - min, S = C / V), so scaling S moves every channel's distance below V by the same
    factor, min(factor, V / C) where S would pass 1, and 0 where V <= 0 (TF's S = 0 there)."""
    value, low = _max_min(x)
    # C = 0 makes every channel V (nothing to scale): a tiny C keeps the ratio finite there
    scale = (value / (value - low).clamp_(min=1e-12)).clamp_(max=factor).clamp_(min=0)
    return value - scale * (value - x)


def adjust_hue(x: torch.Tensor, delta) -> torch.Tensor:
    """tf.image.adjust_hue: the HSV hue turned by delta of a full circle; max and min kept.

    Branch-free (torch.where is slow on the CPU): the hue H in sextants [0, 6) as TF's
    rgb_to_hv_range computes it, then channel n = min + C x clip(d_n - 1, 0, 1), where d_n is the
    distance round the circle (0-3) from the new hue to the hue at which channel n is smallest."""
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    value, low = _max_min(x)
    chroma = value - low
    is_r = (r - value).sign_().add_(1)  # 1 where R is the max, else 0
    is_g = (g - value).sign_().add_(1).mul_(1 - is_r)  # 1 where G is the max and R is not
    is_b = 1 - is_r - is_g
    hue = is_r * (g - b) + is_g * (b - r + 2 * chroma) + is_b * (r - g + 4 * chroma)
    hue = hue.div_(chroma.clamp(min=1e-12)).add_(6 * delta)  # where C = 0 every channel is V
    hue -= 6 * torch.floor(hue / 6)  # [0, 6)
    out = torch.empty_like(x)
    # One channel at a time (broadcasting [1, H, W] against [3, 1, 1] is ~5x slower on the CPU).
    # R is smallest at cyan (H = 3), G at magenta (5), B at yellow (1).
    for n, anchor in enumerate((3.0, 5.0, 1.0)):
        apart = (hue - anchor).abs_()  # in [0, 5]: d_n = min(apart, 6 - apart)
        rise = torch.minimum(apart - 1, 5 - apart).clamp_(0, 1)  # clip(d_n - 1, 0, 1)
        torch.add(low, chroma * rise, out=out[..., n : n + 1, :, :])
    return out


COLOR_OPS = {
    "brightness": adjust_brightness,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
    "contrast": adjust_contrast,
}


def distort_color(x: torch.Tensor, ops: tuple[tuple[str, float], ...]) -> torch.Tensor:
    """Float RGB [..., 3, H, W] through `ops` in order, unclipped (TF-slim clips once, after)."""
    for name, v in ops:
        x = COLOR_OPS[name](x, v)
    return x


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    y = x.clamp_(0, 255).add_(0.5)  # the truncating cast then rounds
    if y.is_cuda:
        return y.to(torch.uint8)
    return torch.from_numpy(y.numpy().astype(np.uint8))  # 3x faster than torch's cast here


def apply_color(img: torch.Tensor, ops: tuple[tuple[str, float], ...]) -> torch.Tensor:
    """uint8 [3, H, W] (any device) through the colour distortion, clipped and rounded: one image
    at a time, as the workers did before the colour moved to the device; the reference the
    batched path (distort_color_batch) is tested against."""
    if not ops:
        return img
    return _to_uint8(distort_color(img.float(), ops)).view(img.shape)


# [ours] On the CPU a batch is coloured a few images at a time, about this many bytes of floats:
# they stay in cache through the ~40 passes of the four ops (about 2x faster at 224 px than the
# whole batch at once; at 64 px about 20 images make one chunk). A GPU takes the whole batch.
CPU_COLOR_CHUNK_BYTES = 1 << 20


def distort_color_batch(x: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Float RGB [N, 3, H, W] (0-255, any device), image i through its row of `color` [N, 5]
    (COLOR_COLUMNS, on the CPU: the rows are grouped by ordering on the host, with no device
    sync), unclipped: one pass of each op per ordering present, not one per image. Rows of
    ordering -1 are left as they are. May modify `x`."""
    per_image = x[0].numel() * x.element_size() if len(x) else 1
    chunk = max(1, CPU_COLOR_CHUNK_BYTES // per_image) if x.device.type == "cpu" else len(x)
    if chunk >= len(x):
        return _distort_rows(x, color)
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        x[rows] = _distort_rows(x[rows], color[rows])
    return x


def _distort_rows(x: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    orderings = color[:, 0].tolist()
    for ordering, names in enumerate(COLOR_ORDERINGS):
        rows = [i for i, o in enumerate(orderings) if o == ordering]
        if not rows:
            continue
        values = color[rows, 1:].to(x.device, non_blocking=True).view(len(rows), 4, 1, 1, 1)
        by_name = dict(zip(COLOR_COLUMNS[1:], values.unbind(1), strict=True))  # each [n, 1, 1, 1]
        ops = tuple((name, by_name[name]) for name in names)
        if len(rows) == len(orderings):  # one ordering for all of them: no gather
            return distort_color(x, ops)
        index = torch.tensor(rows, device=x.device)
        x[index] = distort_color(x[index], ops)
    return x


class TrainTransform:
    """File bytes -> (cropped, resized, flipped uint8 [3, size, size], its colour parameters):
    the colour itself is applied later, to the whole batch on the training device."""

    def __init__(self, size: int, aug: Augment):
        self.size, self.aug = size, aug

    def __call__(
        self, data: bytes, rng: np.random.Generator
    ) -> tuple[torch.Tensor, tuple[float, ...]]:
        w, h = image_size(data)
        p = sample_train(w, h, self.aug, rng)
        bw, bh = p.box[2] - p.box[0], p.box[3] - p.box[1]
        img = decode(data, math.ceil(self.size * w / bw), math.ceil(self.size * h / bh))
        out = resized_crop(img, p.box, (w, h), self.size)
        if p.flip:
            out = out.flip(-1)
        return out, color_params(p.color_ops)


def eval_box(width: int, height: int, resize: int, crop: int) -> Box:
    """The centre crop `crop` of the image resized to shorter side `resize`, in original pixels."""
    side = crop * min(width, height) / resize
    x0, y0 = (width - side) / 2, (height - side) / 2
    return round(x0), round(y0), round(x0 + side), round(y0 + side)


class EvalTransform:
    """File bytes -> uint8 [3, crop, crop]: shorter side to `resize`, centre `crop`."""

    def __init__(self, resize: int, crop: int):
        if not 0 < crop <= resize:
            raise ConfigError(
                f"data.eval_crop must be in [1, data.eval_resize={resize}], got {crop}: the centre "
                "crop of the image resized to shorter side data.eval_resize"
            )
        self.resize, self.crop = resize, crop

    def __call__(self, data: bytes) -> torch.Tensor:
        w, h = image_size(data)
        box = eval_box(w, h, self.resize, self.crop)
        side = box[2] - box[0]
        img = decode(data, math.ceil(self.crop * w / side), math.ceil(self.crop * h / side))
        return resized_crop(img, box, (w, h), self.crop)
