"""A small ImageNet-shaped tree of real JPEG files, so that the whole pipeline runs anywhere.

    root/train/<wnid>/<wnid>_<k>.JPEG      varied sizes and aspect ratios, like ImageNet's
    root/val/ILSVRC2012_val_<8 digits>.JPEG  flat, classes interleaved
    root/LOC_val_solution.csv              Kaggle's val labels (wnid and the object's box)
    root/manifest.json                     the generator's parameters, written last

A class is a shape (disc, square, triangle, ring, cross) filled with a texture (solid, horizontal
or vertical stripes, checks, dots), plus a colour family when there are more than 25 classes.
Position, size, rotation, colours, background gradient and noise are random, so neither the mean
colour nor any single pixel gives the class away: a small conv net learns it in a few hundred
steps at 64 px, not in twenty.

Generated once: built in a temporary folder and renamed into place, so an interrupted run or a
second rank never sees half a tree. A tree made with other parameters is regenerated.
    bnrepro-synthetic --out /tmp/synthetic --classes 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from bnrepro.config import CONFIG_DIR
from bnrepro.errors import ConfigError, DataError, UserError


class NotASyntheticTree(UserError, FileExistsError):
    """data.root holds other files: the generator never writes over them."""


VERSION = 2  # bump when the images change for the same parameters
SHAPES = ("disc", "square", "triangle", "ring", "cross")
TEXTURES = ("solid", "hstripes", "vstripes", "checks", "dots")


def class_specs(num_classes: int, seed: int) -> list[tuple[str, str, str, int]]:
    """(wnid, shape, texture, colour family or -1) per class, in sorted-wnid order."""
    if num_classes < 2:
        raise ConfigError(f"data.num_classes must be >= 2 for data=synthetic, got {num_classes}")
    rng = np.random.default_rng([seed, 0])
    combos = [(s, t) for s in SHAPES for t in TEXTURES]
    families = math.ceil(num_classes / len(combos))
    picks = rng.permutation(len(combos) * families)[:num_classes]
    wnids = set()
    while len(wnids) < num_classes:  # ImageNet-like names: n + 8 digits, starting n0
        wnids.add(f"n0{rng.integers(1_000_000, 9_999_999)}")
    specs = []
    for wnid, p in zip(sorted(wnids), picks, strict=True):
        shape, texture = combos[p % len(combos)]
        specs.append((wnid, shape, texture, int(p // len(combos)) if families > 1 else -1))
    return specs


def _colour(rng: np.random.Generator, family: int, families: int) -> np.ndarray:
    if family < 0:
        return rng.uniform(0, 255, 3)
    hue = (family + rng.uniform(0.15, 0.85)) / families  # within the family's slice of hues
    rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0, 2 / 3, 1 / 3])))
    return 255 * (0.2 + 0.7 * rgb)


def _shape_mask(
    shape: str, w: int, h: int, cx: float, cy: float, r: float, angle: float
) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)

    def poly(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]

    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    elif shape == "square":
        draw.polygon(poly([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]), fill=255)
    elif shape == "triangle":
        draw.polygon(poly([(0, -1), (0.95, 0.7), (-0.95, 0.7)]), fill=255)
    else:  # cross
        draw.polygon(poly([(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)]), fill=255)
        draw.polygon(poly([(-0.3, -1), (0.3, -1), (0.3, 1), (-0.3, 1)]), fill=255)
    return np.asarray(mask) > 127


def _texture(texture: str, w: int, h: int, period: float, angle: float) -> np.ndarray:
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    c, s = math.cos(angle), math.sin(angle)  # small tilt: stripes stay horizontal/vertical
    u, v = (x * c - y * s) / period % 1, (x * s + y * c) / period % 1
    if texture == "solid":
        return np.ones((h, w), bool)
    if texture == "hstripes":
        return v < 0.5
    if texture == "vstripes":
        return u < 0.5
    if texture == "checks":
        return (u < 0.5) ^ (v < 0.5)
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.09  # dots


def draw_image(spec: tuple, families: int, min_side: int, max_side: int, rng: np.random.Generator):
    """One RGB image of the class `spec` and its object's box (x0, y0, x1, y1)."""
    _, shape, texture, family = spec
    w, h = (int(rng.integers(min_side, max_side + 1)) for _ in range(2))
    # Background: a linear gradient between two random colours, in a random direction.
    a = rng.uniform(0, 2 * np.pi)
    t = math.cos(a) * np.arange(w, dtype=np.float32) / w + math.sin(a) * np.arange(h)[:, None] / h
    t = ((t - t.min()) / max(np.ptp(t), 1e-6)).astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    img = c0 + (c1 - c0) * t[..., None]
    # The object: a textured shape in two colours, of random size, position and rotation.
    side = min(w, h)
    r = side * rng.uniform(0.28, 0.45)
    cx, cy = rng.uniform(r * 0.8, w - r * 0.8), rng.uniform(r * 0.8, h - r * 0.8)
    mask = _shape_mask(shape, w, h, cx, cy, r, rng.uniform(0, 2 * np.pi))
    tex = _texture(texture, w, h, r * rng.uniform(0.35, 0.6), rng.uniform(-0.2, 0.2))
    img[mask & tex] = _colour(rng, family, families)
    img[mask & ~tex] = _colour(rng, family, families) * 0.35  # the texture's darker colour
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(4, 16)
    box = (max(0, int(cx - r)), max(0, int(cy - r)), min(w, int(cx + r)), min(h, int(cy + r)))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)), box


def generate(out: Path, params: dict) -> None:
    """Write the tree described by `params` (see ensure_tree) into the folder `out`."""
    specs = class_specs(params["num_classes"], params["seed"])
    families = max(s[3] for s in specs) + 1
    sides, quality, seed = (
        (params["min_side"], params["max_side"]),
        params["quality"],
        params["seed"],
    )
    for c, spec in enumerate(specs):
        folder = out / "train" / spec[0]
        folder.mkdir(parents=True)
        for k in range(params["train_per_class"]):
            img, _ = draw_image(spec, families, *sides, np.random.default_rng([seed, 1, c, k]))
            img.save(folder / f"{spec[0]}_{k}.JPEG", quality=quality)
    (out / "val").mkdir()
    val = [(c, k) for c in range(len(specs)) for k in range(params["val_per_class"])]
    order = np.random.default_rng([seed, 2]).permutation(len(val))
    rows = ["ImageId,PredictionString"]
    for n, j in enumerate(order, start=1):
        c, k = val[j]
        img, box = draw_image(specs[c], families, *sides, np.random.default_rng([seed, 3, c, k]))
        name = f"ILSVRC2012_val_{n:08d}"
        img.save(out / "val" / f"{name}.JPEG", quality=quality)
        rows.append(f"{name},{specs[c][0]} {' '.join(map(str, box))}")
    (out / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (out / "manifest.json").write_text(json.dumps(params, indent=1))  # last: marks it complete


def _manifest(root: Path) -> dict | None:
    path = root / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_tree(
    root: str | Path,
    *,
    num_classes: int,
    train_per_class: int,
    val_per_class: int,
    min_side: int,
    max_side: int,
    quality: int,
    seed: int,
) -> Path:
    """The synthetic tree at `root`, generated there unless it already exists with the same
    parameters. A folder that is neither empty nor a synthetic tree is an error, never removed."""
    if not 0 < min_side <= max_side:
        raise ConfigError(
            "data.synthetic.min_side and data.synthetic.max_side must satisfy 0 < min_side <= "
            f"max_side (pixels), got {min_side} and {max_side}"
        )
    if not 1 <= quality <= 100:
        raise ConfigError(f"data.synthetic.quality must be in [1, 100] (JPEG), got {quality}")
    if train_per_class < 1 or val_per_class < 1:
        raise ConfigError(
            "data.synthetic.train_per_class and data.synthetic.val_per_class must be >= 1, got "
            f"{train_per_class} and {val_per_class}"
        )
    params = dict(
        version=VERSION, num_classes=num_classes, train_per_class=train_per_class,
        val_per_class=val_per_class, min_side=min_side, max_side=max_side, quality=quality,
        seed=seed,
    )  # fmt: skip
    root = Path(root).expanduser()
    manifest = root / "manifest.json"
    if manifest.is_file():
        if _manifest(root) == params:
            return root
        print(f"[bnrepro] {root} was generated with other parameters: regenerating it")
    elif root.exists() and any(root.iterdir()):
        raise NotASyntheticTree(
            f"{root} is not empty and is not a synthetic tree (no manifest.json): "
            "set data.root to a new folder, or empty this one"
        )
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot make the synthetic data's folder data.root={root} ({e.strerror}): point "
            "data.root (or $BNREPRO_CACHE) at a folder you can write"
        ) from e
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    generate(tmp, params)
    if _manifest(root) == params:  # another process (rank) finished first
        shutil.rmtree(tmp)
        return root
    if manifest.is_file():  # ours, with other parameters: move aside, then delete
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        os.rename(root, old)
        shutil.rmtree(old)
    try:
        os.rename(tmp, root)
    except OSError:  # another process (rank) finished first
        shutil.rmtree(tmp)
        if _manifest(root) != params:
            raise
    n = num_classes * (train_per_class + val_per_class)
    print(
        f"[bnrepro] generated {n} synthetic images in {root} ({time.perf_counter() - start:.1f} s)"
    )
    return root


def main(argv: list[str] | None = None) -> None:
    """bnrepro-synthetic: generate the tree anywhere; defaults are configs/data/synthetic.yaml's."""

    yaml = OmegaConf.load(Path(CONFIG_DIR) / "data" / "synthetic.yaml")
    d = yaml.synthetic
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to create (or check)")
    p.add_argument("--classes", type=int, default=yaml.num_classes)
    p.add_argument("--train-per-class", type=int, default=d.train_per_class)
    p.add_argument("--val-per-class", type=int, default=d.val_per_class)
    p.add_argument("--min-side", type=int, default=d.min_side)
    p.add_argument("--max-side", type=int, default=d.max_side)
    p.add_argument("--quality", type=int, default=d.quality)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    ensure_tree(
        a.out, num_classes=a.classes, train_per_class=a.train_per_class,
        val_per_class=a.val_per_class, min_side=a.min_side, max_side=a.max_side,
        quality=a.quality, seed=a.seed,
    )  # fmt: skip
