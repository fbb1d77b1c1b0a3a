"""Decoding and the paper's augmentation, on uint8 images (docs/paper.md section 3).

Training: a random-sized crop (8-100% of the area, aspect 3/4-4/3, GoogLeNet section 6) resized
to `train_crop`, a horizontal flip, and a photometric distortion whose strength the experiment
sets (section 4.2.1 "reduce the photometric distortions"). Evaluation: shorter side to
`eval_resize`, centre `eval_crop`. Everything stays uint8; normalisation happens on the device.

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

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in original-image pixels

# Photometric distortion at strength 1: TF-slim's inception_preprocessing.distort_color, the
# published Inception pipeline (the paper gives no values): brightness +-32/255, saturation and
# contrast x[0.5, 1.5], hue +-0.2 of the colour circle, applied in a random order.
BRIGHTNESS = 32.0  # in 0-255 pixel units
SATURATION = 0.5
CONTRAST = 0.5
HUE = 0.2
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL and TF's grayscale
_GREY = np.tile(_LUMA, (3, 1))  # x -> its grey level, in all three channels
# A hue shift by angle t is a rotation of the I-Q plane of YIQ [ours: a linear stand-in for TF's
# HSV hue shift, so that all four distortions compose into one 3x4 colour matrix]:
# YIQ2RGB @ rot(t) @ RGB2YIQ = _GREY_YIQ + cos(t) * _HUE_COS + sin(t) * _HUE_SIN.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)
_GREY_YIQ = _YIQ2RGB[:, :1] @ _RGB2YIQ[:1]
_HUE_COS = _YIQ2RGB[:, 1:] @ _RGB2YIQ[1:]
_HUE_SIN = _YIQ2RGB[:, 1:] @ np.array([[0.0, -1.0], [1.0, 0.0]]) @ _RGB2YIQ[1:]


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
            raise ValueError(
                f"data.augment needs 0 < min_area <= max_area <= 1, got {self.min_area}, "
                f"{self.max_area}"
            )
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ValueError(
                f"data.augment needs 0 < min_aspect <= max_aspect, got {self.min_aspect}, "
                f"{self.max_aspect}"
            )
        if not 0 <= self.color_strength <= 2:
            raise ValueError(
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
    return crop[0].contiguous()  # CHW: the colour matrix product is ~10x faster on it


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
    """Brightness, saturation, hue and contrast, each scaled by color_strength, in a random
    order (TF-slim distort_color picks one of four orders; we draw any of the 24)."""
    s = aug.color_strength
    if s == 0:
        return ()
    ops = {
        "brightness": rng.uniform(-BRIGHTNESS * s, BRIGHTNESS * s),
        "saturation": rng.uniform(1 - SATURATION * s, 1 + SATURATION * s),
        "hue": rng.uniform(-HUE * s, HUE * s),
        "contrast": rng.uniform(1 - CONTRAST * s, 1 + CONTRAST * s),
    }
    order = rng.permutation(len(ops))
    names = list(ops)
    return tuple((names[i], float(ops[names[i]])) for i in order)


def sample_train(width: int, height: int, aug: Augment, rng: np.random.Generator) -> TrainParams:
    box = sample_crop(width, height, aug, rng)
    flip = bool(aug.flip and rng.random() < 0.5)
    return TrainParams(box, flip, sample_color(aug, rng))


def color_matrix(ops: tuple[tuple[str, float], ...], mean_rgb: np.ndarray) -> np.ndarray:
    """The distortions composed into one affine map [3, 4] (pixel units, 0-255): every one is
    affine in RGB, so composing first and clipping once at the end is exact (TF-slim also clips
    only at the end). Contrast blends with the mean grey of the image as it is at that point."""
    lin, off = np.eye(3), np.zeros(3)  # the map so far: x -> lin @ x + off
    for name, v in ops:
        if name == "brightness":
            off = off + v
        elif name == "saturation":  # blend with grey: v * x + (1 - v) * grey(x)
            step = v * np.eye(3) + (1 - v) * _GREY
            lin, off = step @ lin, step @ off
        elif name == "hue":  # rotate I-Q by v of a full turn
            t = 2 * math.pi * v
            step = _GREY_YIQ + math.cos(t) * _HUE_COS + math.sin(t) * _HUE_SIN
            lin, off = step @ lin, step @ off
        elif name == "contrast":  # v * x + (1 - v) * mean grey of the current image
            grey = _LUMA @ (lin @ mean_rgb + off)
            lin, off = v * lin, v * off + (1 - v) * grey
        else:
            raise ValueError(f"unknown colour op {name!r}")
    return np.concatenate([lin, off[:, None]], axis=1)


def apply_color(img: torch.Tensor, ops: tuple[tuple[str, float], ...]) -> torch.Tensor:
    """uint8 [3, H, W] (any device) through the composed colour map, rounded and clipped."""
    if not ops:
        return img
    mean = img[:, ::4, ::4].float().mean(dim=(1, 2))  # for contrast; 1/16 of the pixels suffice
    m = color_matrix(ops, mean.cpu().double().numpy())
    m[:, 3] += 0.5  # so that the truncating cast to uint8 rounds
    m = torch.from_numpy(m).float().to(img.device)
    y = torch.addmm(m[:, 3:], m[:, :3], img.reshape(3, -1).float()).clamp_(0, 255)
    if y.is_cuda:
        return y.to(torch.uint8).view(img.shape)
    return torch.from_numpy(y.numpy().astype(np.uint8)).view(img.shape)  # 3x torch's cast here


class TrainTransform:
    """File bytes -> augmented uint8 [3, size, size]."""

    def __init__(self, size: int, aug: Augment):
        self.size, self.aug = size, aug

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        w, h = image_size(data)
        p = sample_train(w, h, self.aug, rng)
        bw, bh = p.box[2] - p.box[0], p.box[3] - p.box[1]
        img = decode(data, math.ceil(self.size * w / bw), math.ceil(self.size * h / bh))
        out = resized_crop(img, p.box, (w, h), self.size)
        if p.flip:
            out = out.flip(-1)
        return apply_color(out, p.color_ops)


def eval_box(width: int, height: int, resize: int, crop: int) -> Box:
    """The centre crop `crop` of the image resized to shorter side `resize`, in original pixels."""
    side = crop * min(width, height) / resize
    x0, y0 = (width - side) / 2, (height - side) / 2
    return round(x0), round(y0), round(x0 + side), round(y0 + side)


class EvalTransform:
    """File bytes -> uint8 [3, crop, crop]: shorter side to `resize`, centre `crop`."""

    def __init__(self, resize: int, crop: int):
        if crop > resize:
            raise ValueError(f"data.eval_crop ({crop}) must be <= data.eval_resize ({resize})")
        self.resize, self.crop = resize, crop

    def __call__(self, data: bytes) -> torch.Tensor:
        w, h = image_size(data)
        box = eval_box(w, h, self.resize, self.crop)
        side = box[2] - box[0]
        img = decode(data, math.ceil(self.crop * w / side), math.ceil(self.crop * h / side))
        return resized_crop(img, box, (w, h), self.crop)
