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
second rank never sees half a tree. A tree made with other parameters is regenerated, but only a
tree the generator can prove it made (`tree_state`: its manifest's keys, and no file the manifest
does not describe); any other non-empty folder is refused, never written into nor removed.
    bnrepro-synthetic --out /tmp/synthetic --classes 10
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
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
# A manifest's keys: exactly these.
PARAMETERS = ("version", "num_classes", "train_per_class", "val_per_class", "min_side",
              "max_side", "quality", "seed")  # fmt: skip
CSV = "LOC_val_solution.csv"
MANIFEST = "manifest.json"
SHAPES = ("disc", "square", "triangle", "ring", "cross")
TEXTURES = ("solid", "hstripes", "vstripes", "checks", "dots")


def class_specs(num_classes: int, seed: int) -> list[tuple[str, str, str, int]]:
    """(wnid, shape, texture, colour family or -1) per class, in sorted-wnid order."""
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
            img.save(folder / _train_name(spec[0], k), quality=quality)
    (out / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for n, (c, k) in enumerate(_val_order(params), start=1):
        img, box = draw_image(specs[c], families, *sides, np.random.default_rng([seed, 3, c, k]))
        name = _val_name(n)
        img.save(out / "val" / f"{name}.JPEG", quality=quality)
        rows.append(f"{name},{specs[c][0]} {' '.join(map(str, box))}")
    (out / CSV).write_text("\n".join(rows) + "\n")
    (out / MANIFEST).write_text(json.dumps(params, indent=1))  # last: marks it complete


def _train_name(wnid: str, k: int) -> str:
    return f"{wnid}_{k}.JPEG"


def _val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}"


def _val_order(params: dict) -> list[tuple[int, int]]:
    """(class, k) of val file 1, 2, ...: the classes interleaved in a fixed random order."""
    val = [(c, k) for c in range(params["num_classes"]) for k in range(params["val_per_class"])]
    order = np.random.default_rng([params["seed"], 2]).permutation(len(val))
    return [val[j] for j in order]


def tree_params(
    *,
    num_classes: int,
    train_per_class: int,
    val_per_class: int,
    min_side: int,
    max_side: int,
    quality: int,
    seed: int,
) -> dict:
    """The generator's parameters (what manifest.json records), checked: ConfigError naming the
    key otherwise."""
    if num_classes < 2:
        raise ConfigError(f"data.num_classes must be >= 2 for data=synthetic, got {num_classes}")
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
    return dict(
        version=VERSION, num_classes=num_classes, train_per_class=train_per_class,
        val_per_class=val_per_class, min_side=min_side, max_side=max_side, quality=quality,
        seed=seed,
    )  # fmt: skip


def planned_files(params: dict) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(classes, train (path, label), val (path, label)) of the tree `params` describes, paths
    relative to its root as the ImageNet reader lists them: known without generating it."""
    classes = [spec[0] for spec in class_specs(params["num_classes"], params["seed"])]
    train = [
        (f"train/{wnid}/{_train_name(wnid, k)}", c)
        for c, wnid in enumerate(classes)
        for k in range(params["train_per_class"])
    ]
    val = [(f"val/{_val_name(n)}.JPEG", c) for n, (c, _) in enumerate(_val_order(params), start=1)]
    return classes, train, val


def _manifest(root: Path) -> dict | None:
    """The tree's manifest, or None when there is none or it is no generator's manifest."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _not_ours(root: Path, manifest: dict | None) -> str | None:
    """Why the folder `root` cannot be proven to be a tree the generator made (None: it is one):
    a generator's manifest (its keys exactly), and nothing in the folder but the files that
    manifest describes, by name and count. Read-only: lists the folder, opens no image."""
    if manifest is None:
        return f"it has no readable {MANIFEST} of the generator"
    if sorted(manifest) != sorted(PARAMETERS) or not all(
        isinstance(manifest[k], int) and not isinstance(manifest[k], bool) for k in PARAMETERS
    ):
        return f"its {MANIFEST} is not the generator's (keys {', '.join(PARAMETERS)})"
    try:
        return _foreign_files(root, manifest)
    except OSError as e:
        return f"it cannot be listed ({e.strerror or e})"


def _foreign_files(root: Path, manifest: dict) -> str | None:
    """What in `root` the generator of `manifest` would not have made, in words (None: nothing);
    names are compared only where their count matches (a manifest's numbers size no set)."""
    extra = {e.name for e in os.scandir(root)} - {"train", "val", CSV, MANIFEST}
    if extra:
        return f"it holds files the generator does not make ({', '.join(sorted(extra))})"
    classes = list(os.scandir(root / "train"))
    if len(classes) != manifest["num_classes"]:
        return f"train/ holds {len(classes)} entries, not {manifest['num_classes']} classes"
    for folder in classes:
        if folder.is_symlink() or not folder.is_dir() or not re.fullmatch(r"n\d{8}", folder.name):
            return f"train/{folder.name} is not a class folder of the generator"
        names = {e.name for e in os.scandir(folder.path)}
        k = manifest["train_per_class"]
        if len(names) != k or names != {_train_name(folder.name, i) for i in range(k)}:
            return f"train/{folder.name} holds other files than the generator's"
    names = {e.name for e in os.scandir(root / "val")}
    n = manifest["num_classes"] * manifest["val_per_class"]
    if len(names) != n or names != {f"{_val_name(i)}.JPEG" for i in range(1, n + 1)}:
        return "val/ holds other files than the generator's"
    return None


def tree_state(root: str | Path, params: dict) -> str:
    """What `root` holds: "ready" (the tree of `params`), "missing" (nothing: absent or an empty
    folder) or "other" (a tree the generator made with other parameters, provably its own);
    NotASyntheticTree for anything else, which the generator never writes into nor removes.
    Read-only."""
    root = Path(root).expanduser()
    if not root.exists():
        return "missing"
    if not root.is_dir():
        raise NotASyntheticTree(
            f"data.root={root} is a file, not a folder: set data.root to a folder for the "
            "synthetic data"
        )
    try:
        empty = not any(root.iterdir())
    except OSError as e:
        raise DataError(
            f"cannot read data.root={root} ({e.strerror or e}): point data.root (or "
            "$BNREPRO_CACHE) at a folder you can read and write"
        ) from e
    if empty:
        return "missing"
    manifest = _manifest(root)
    if manifest == params:
        return "ready"
    reason = _not_ours(root, manifest)
    if reason is not None:
        raise NotASyntheticTree(
            f"data.root={root} is not empty and is not a synthetic tree this generator can prove "
            f"it made ({reason}), so it is neither used nor replaced: set data.root to a new "
            "folder, or move this one away"
        )
    if root.absolute() not in _READING:  # this process's own reading ends when it replaces it
        fd = _take(root)  # refuses a tree another process reads
        if fd is None:  # another process was replacing it: look again
            return tree_state(root, params)
        os.close(fd)
    return "other"


# The trees this process reads: a shared flock on each one's manifest, held while it lives, so
# that no other process replaces a tree under a run that reads it (ensure_tree refuses to).
_READING: dict[Path, int] = {}


def hold_tree(root: str | Path, params: dict) -> None:
    """Mark the tree of `params` at `root` as read by this process until it ends. DataError if
    it is not that tree any more (another process replaced it since it was listed)."""
    root = Path(root).expanduser().absolute()
    path = root / MANIFEST
    if root in _READING and _same_file(_READING[root], path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a replacement under way (seconds)
    except OSError:  # a filesystem without locks: nothing to hold
        os.close(fd)
        return
    if fd is None or not _same_file(fd, path) or _manifest(root) != params:
        if fd is not None:
            os.close(fd)
        raise DataError(
            f"the synthetic tree at data.root={root} was replaced by another process while this "
            "one started: run again, or give each set of data.synthetic.* its own data.root"
        )
    _READING[root] = fd


def _take(root: Path) -> int | None:
    """An exclusive flock on the tree's manifest (its fd: close it to let go), so that no other
    process reads the tree (hold_tree) while this one replaces it. None when another process was
    replacing it (returned once that is done: look again); DataError naming the fix when another
    process reads it."""
    try:
        fd = os.open(root / MANIFEST, os.O_RDONLY)
    except FileNotFoundError:  # replaced this very moment
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    except OSError:  # a filesystem without locks: who reads it cannot be known
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # held exclusively: another process is replacing it
        fcntl.flock(fd, fcntl.LOCK_SH)  # until it is done
        os.close(fd)
        return None
    os.close(fd)
    raise DataError(
        f"data.root={root} holds a synthetic tree of other parameters that another run is "
        "reading: it is not replaced under it. Give each set of data.synthetic.* its own "
        "data.root, or wait for that run to end"
    )


def _same_file(fd: int, path: Path) -> bool:
    """Is the open file `fd` the one at `path` now (not one its holder removed meanwhile)?"""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def ensure_tree(root: str | Path, **knobs: int) -> Path:
    """The synthetic tree at `root` (`knobs`: tree_params' keywords), generated there unless it
    already exists with the same parameters. A tree the generator provably made with other
    parameters (tree_state) is replaced; any other non-empty folder is an error, never written
    into nor removed."""
    params = tree_params(**knobs)
    root = Path(root).expanduser()
    state = tree_state(root, params)
    while state == "other":
        if (fd := _READING.pop(root.absolute(), None)) is not None:
            os.close(fd)  # this process's own reading of the old tree ends here
        taken = _take(root)  # held until the old tree is gone: no one starts reading it
        if taken is not None:
            break
        state = tree_state(root, params)  # another process replaced it meanwhile
    if state == "ready":
        hold_tree(root, params)
        return root
    if state == "other":
        print(f"[bnrepro] {root} was generated with other parameters: regenerating it")
    try:
        _generate_into(root, params, replace=state == "other")
    finally:
        if state == "other":
            os.close(taken)
    hold_tree(root, params)
    return root


def _generate_into(root: Path, params: dict, *, replace: bool) -> None:
    """Generate in a temporary folder beside `root`, then rename it into place (`replace`: after
    moving the old tree of other parameters, which this process holds, aside and deleting it)."""
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own (never another process's temporary folder, on any host).
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    except OSError as e:
        raise DataError(
            f"cannot make the synthetic data's folder data.root={root} ({e.strerror or e}): "
            "point data.root (or $BNREPRO_CACHE) at a folder you can write"
        ) from e
    start = time.perf_counter()
    try:
        generate(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours alone: a name no one else has
        raise
    if _manifest(root) == params:  # another process (rank) finished first
        shutil.rmtree(tmp)
        return
    if replace:  # the old tree, which no one reads: aside, then gone
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.rename(root, old)
        shutil.rmtree(old)
    try:
        os.rename(tmp, root)
    except OSError:  # another process (rank) finished first
        shutil.rmtree(tmp)
        if _manifest(root) != params:
            raise
    n = params["num_classes"] * (params["train_per_class"] + params["val_per_class"])
    print(
        f"[bnrepro] generated {n} synthetic images in {root} ({time.perf_counter() - start:.1f} s)"
    )


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
