"""Test-time crops: 1, 10 and 144 views of an image (GoogLeNet section 7; docs/paper.md section 5).

Geometry and cutting are separate. `crop_boxes` is a pure function of the image size: it says
where every crop lies in the image resized to one of the scales. `cut_crops` applies it to a
decoded image tensor on whatever device the tensor is on: it resizes the image once per scale
and slices the crops out of the resized tensor, so nothing is decoded twice.

Sizes follow a base resolution (the network's input side, 224 in the paper): the scales are
base x {256, 288, 320, 352} / 224, so a small-scale model at 64 px sees the same geometry.

    >>> crop_boxes(480, 640, n_crops=144, base=224)[0]
    Crop(scale=256, top=0, left=0, size=224, flip=False)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

CROP_COUNTS = (1, 10, 144)
PAPER_BASE = 224  # the crop side the paper's numbers refer to
SINGLE_SCALE = 256  # 1 and 10 crops: shorter side 256, crops 224 (docs/paper.md section 5)
MULTI_SCALES = (256, 288, 320, 352)  # 144 crops: GoogLeNet section 7


class Crop(NamedTuple):
    """One view: the square [top:top+size, left:left+size] of the image resized so that its
    shorter side is `scale`; resized to the base side if `size` is not it; mirrored if `flip`."""

    scale: int
    top: int
    left: int
    size: int
    flip: bool


def scaled(side: int, base: int) -> int:
    """A side length of the paper's 224-px geometry at another base resolution."""
    return round(side * base / PAPER_BASE)


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) after resizing so that the shorter side is `shorter`, aspect kept."""
    if height <= width:
        return shorter, max(shorter, round(width * shorter / height))
    return max(shorter, round(height * shorter / width)), shorter


def _five(top: int, left: int, side: int, base: int) -> list[tuple[int, int]]:
    """Top-left corners of the 4 corner crops and the centre crop of a square."""
    far, mid = side - base, (side - base) // 2
    return [(top, left), (top, left + far), (top + far, left), (top + far, left + far)] + [
        (top + mid, left + mid)
    ]


def crop_boxes(height: int, width: int, n_crops: int, base: int = PAPER_BASE) -> list[Crop]:
    """Every crop of an image of this size, unmirrored views first, then the same views mirrored.

    1: shorter side base*256/224, the centre base x base crop.
    10: at that size, the 4 corner and the centre crops, and their mirrors.
    144: at shorter sides base*{256,288,320,352}/224, the left, centre and right squares (top,
    centre, bottom for portrait images); from each square its 4 corner and centre base crops and
    the whole square (resized to base); and the mirrors: 4 x 3 x 6 x 2 = 144.
    """
    if n_crops not in CROP_COUNTS:
        raise ValueError(f"crops must be one of {CROP_COUNTS}, got {n_crops}")
    if min(height, width) < 1:
        raise ValueError(f"an image of {height}x{width} pixels has nothing to crop")
    if n_crops == 1:
        scale = scaled(SINGLE_SCALE, base)
        h, w = resized_size(height, width, scale)
        return [Crop(scale, (h - base) // 2, (w - base) // 2, base, False)]

    views = []
    if n_crops == 10:
        scale = scaled(SINGLE_SCALE, base)
        h, w = resized_size(height, width, scale)
        # the whole resized image is the "square" here: its corners and centre
        corners = [(0, 0), (0, w - base), (h - base, 0), (h - base, w - base)]
        corners.append(((h - base) // 2, (w - base) // 2))
        views = [Crop(scale, t, left, base, False) for t, left in corners]
    else:
        for scale in (scaled(s, base) for s in MULTI_SCALES):
            h, w = resized_size(height, width, scale)
            long_side = max(h, w) - scale
            for offset in (0, long_side // 2, long_side):  # left/centre/right or top/centre/bottom
                top, left = (0, offset) if w >= h else (offset, 0)
                views += [
                    Crop(scale, t, lft, base, False) for t, lft in _five(top, left, scale, base)
                ]
                views.append(Crop(scale, top, left, scale, False))  # the whole square
    return views + [v._replace(flip=True) for v in views]


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing (as PIL) on float [N, C, H, W]."""
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def cut_crops(image: torch.Tensor, n_crops: int, base: int = PAPER_BASE) -> torch.Tensor:
    """The crops of one decoded image: uint8 [C, H, W] -> uint8 [n_crops, C, base, base], in
    `crop_boxes` order, computed on the image's device (one resize per scale)."""
    if image.dim() != 3 or image.dtype != torch.uint8:
        raise ValueError(
            f"expected a decoded uint8 image [C, H, W], got {image.dtype} {tuple(image.shape)}"
        )
    channels, height, width = image.shape
    boxes = crop_boxes(height, width, n_crops, base)
    views = [b for b in boxes if not b.flip]  # crop_boxes puts the mirrors last, same order
    out = torch.empty(len(boxes), channels, base, base, dtype=torch.uint8, device=image.device)
    source = image[None].float()
    for scale in dict.fromkeys(v.scale for v in views):  # scales in order, each once
        resized = _resize(source, resized_size(height, width, scale))[0]
        rounded = resized.round().to(torch.uint8)
        whole = []  # (index, square) of the squares that are resized to base
        for i, v in enumerate(views):
            if v.scale != scale:
                continue
            if v.size == base:
                out[i] = rounded[:, v.top : v.top + base, v.left : v.left + base]
            else:
                whole.append((i, resized[:, v.top : v.top + v.size, v.left : v.left + v.size]))
        if whole:  # one resize for all whole squares of this scale
            small = _resize(torch.stack([sq for _, sq in whole]), (base, base)).round_()
            for (i, _), square in zip(whole, small, strict=True):
                out[i] = square
    if len(boxes) > len(views):
        out[len(views) :] = out[: len(views)].flip(-1)
    return out
