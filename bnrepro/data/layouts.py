"""Where ImageNet's files are: the three layouts researchers keep it in, read into file lists.

Found under `data.root` (class index = position of the wnid in sorted order, the same for all of
them, so a checkpoint trained on one evaluates correctly on another):
  1. train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder);
  2. train/<wnid>/... and a flat val/ILSVRC2012_val_*.JPEG, labelled by Kaggle's
     LOC_val_solution.csv or by the extracted devkit (ILSVRC2012_devkit_t12/data/meta.mat and
     ILSVRC2012_validation_ground_truth.txt, whose ids are the devkit's, not sorted-wnid order);
     Kaggle's nesting root/ILSVRC/Data/CLS-LOC/{train,val} is found too;
  3. the original ILSVRC2012_img_{train,val}.tar and ILSVRC2012_devkit_t12.tar.gz, unpacked once
     by torchvision.datasets.ImageNet into data.root itself (after which the folder is layout 1).

A run of several processes lists the files once (datasets.build_datasets: rank 0 scans and sends
the listing to the others) and unpacks the tars once per node (rank 0 first, then the first
process of any node that still sees only the tars), never on every rank at once.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnrepro.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEVKIT = "ILSVRC2012_devkit_t12"
KAGGLE_CSV = "LOC_val_solution.csv"
TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")


@dataclass
class Split:
    """Image paths (relative to root, as a numpy bytes array: no per-string Python objects for
    forked workers to copy) and class indices."""

    root: str
    files: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, root: Path, paths: list[str], labels: list[int]) -> Split:
        """From paths relative to root (plain strings: ImageNet has 1.3M of them). A name that
        is not UTF-8 keeps its bytes (os.fsencode), so it is read like any other file."""
        files = np.array([os.fsencode(p) for p in paths], dtype=bytes)
        return cls(str(root), files, np.array(labels, dtype=np.int64))

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.files[i]))

    def fingerprint(self) -> str:
        """sha256 of the (path, label) pairs in path order: the same for any copy of the same
        files under any root, whatever order they were listed in. No file is opened."""
        order = np.argsort(self.files, kind="stable")
        digest = hashlib.sha256(self.files[order].tobytes())
        digest.update(self.labels[order].tobytes())
        return digest.hexdigest()


def find_imagenet(root: str | Path) -> tuple[Split, Split, list[str]]:
    """(train, val, classes) for whichever layout `root` holds; classes are the sorted wnids."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist; point data.root at ImageNet")
    if tars_only(root):
        unpack_tars(root)
    images = root / "ILSVRC" / "Data" / "CLS-LOC"  # Kaggle's download
    images = images if images.is_dir() else root
    if not (images / "train").is_dir():
        raise DataError(
            f"no train/ folder in {images}: expected train/<wnid>/*.JPEG (ImageFolder or Kaggle), "
            f"or the original tars {', '.join(TARS)} in {root}"
        )
    classes = class_names(images / "train")
    if not classes:
        raise DataError(f"{images / 'train'} has no class folders (train/<wnid>/*.JPEG)")
    train = _class_folders(images / "train", classes, images)
    val_dir = images / "val"
    if not val_dir.is_dir():
        raise DataError(f"no val/ folder in {images}")
    folders = class_names(val_dir)
    if folders:
        val = _class_folders(val_dir, folders, images, classes)
    else:
        val = _flat_val(val_dir, images, classes, [root, images, val_dir])
    return train, val, classes


def _entries(folder: Path) -> list[os.DirEntry]:
    """The entries of `folder`; DataError naming it when it cannot be listed (permissions)."""
    try:
        return list(os.scandir(folder))
    except OSError as e:
        raise DataError(
            f"cannot list {folder} ({e.strerror or e}): make it readable, or point data.root at "
            "a copy you can read"
        ) from e


def class_names(folder: Path) -> list[str]:
    """The class folders in `folder`, sorted: symbolic links to folders included, hidden ones
    (.ipynb_checkpoints) not. A link that leads nowhere, not named as an image, is refused: a
    class would otherwise vanish unseen."""
    entries = _entries(folder)
    broken = [
        e.name
        for e in entries
        if e.is_symlink() and not (e.is_dir() or e.is_file() or _is_image_name(e.name))
    ]
    if broken:
        raise DataError(
            f"{folder / broken[0]} is a symbolic link that leads nowhere: restore its target, or "
            "remove the link"
        )
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    """Names of the image files in `folder`, sorted. A symbolic link that leads nowhere is listed
    too: reading it fails, so it is warned about and counted like any unreadable file."""
    return sorted(
        e.name
        for e in _entries(folder)
        if (e.is_file() or e.is_symlink()) and _is_image_name(e.name)
    )


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _class_folders(
    folder: Path, names: list[str], root: Path, classes: list[str] | None = None
) -> Split:
    index = {c: i for i, c in enumerate(classes or names)}
    paths, labels = [], []
    for name in names:
        if name not in index:
            raise DataError(
                f"{folder / name} is a class that {root / 'train'} does not have: remove that "
                "folder, or restore the class's training images"
            )
        files = _image_files(folder / name)
        if not files:
            raise DataError(
                f"class folder {folder / name} has no images ({'/'.join(IMG_EXTENSIONS)}): "
                "remove it or restore its files"
            )
        prefix = os.path.relpath(folder / name, root)
        paths += [os.path.join(prefix, f) for f in files]
        labels += [index[name]] * len(files)
    return Split.of(root, paths, labels)


def _flat_val(val_dir: Path, root: Path, classes: list[str], search: list[Path]) -> Split:
    files = _image_files(val_dir)
    if not files:
        raise DataError(f"{val_dir} has no images")
    csvs = [d / KAGGLE_CSV for d in search if (d / KAGGLE_CSV).is_file()]
    devkits = [d / DEVKIT for d in search if (d / DEVKIT / "data" / "meta.mat").is_file()]
    if csvs:
        wnid_of = _kaggle_labels(csvs[0])
        source = csvs[0]
    elif devkits:
        wnid_of = _devkit_labels(devkits[0])
        source = devkits[0]
    else:
        raise DataError(
            f"{val_dir} is flat (no class folders) and has no labels: put Kaggle's {KAGGLE_CSV} or "
            f"the extracted devkit {DEVKIT}/ (data/meta.mat, "
            f"data/ILSVRC2012_validation_ground_truth.txt) in {search[0]}"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for f in files:
        wnid = wnid_of.get(f.rsplit(".", 1)[0])
        if wnid is None:
            raise DataError(
                f"{source} has no label for {val_dir / f}: remove that file from {val_dir}, or "
                "use the labels of the download it came with"
            )
        if wnid not in index:
            raise DataError(
                f"{val_dir / f} is labelled {wnid} by {source}, a class that {root / 'train'} "
                "does not have: restore that class's training images, or remove the file"
            )
        labels.append(index[wnid])
    prefix = os.path.relpath(val_dir, root)
    return Split.of(root, [os.path.join(prefix, f) for f in files], labels)


def _kaggle_labels(path: Path) -> dict[str, str]:
    """ImageId -> wnid: the first word of PredictionString ("n01751748 x0 y0 x1 y1 ...")."""
    with open(path, newline="") as f:
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}


def _devkit_labels(devkit: Path) -> dict[str, str]:
    """ILSVRC2012_val_<n> -> wnid: line n of the ground truth is an ILSVRC2012_ID, which meta.mat
    maps to a wnid (these ids follow the devkit's own order, not sorted wnids)."""
    import scipy.io

    synsets = scipy.io.loadmat(devkit / "data" / "meta.mat", squeeze_me=True)["synsets"]
    wnid_of_id = {
        int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if s["num_children"] == 0
    }
    truth = (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    return {f"ILSVRC2012_val_{n:08d}": wnid_of_id[int(i)] for n, i in enumerate(truth, start=1)}


def tars_only(root: str | Path) -> bool:
    """Layout 3 not yet unpacked: the original tars in `root`, no train/ and val/ folders."""
    root = Path(root).expanduser()
    unpacked = any(
        (images / "train").is_dir() and (images / "val").is_dir()
        for images in (root, root / "ILSVRC" / "Data" / "CLS-LOC")
    )
    return not unpacked and all((root / t).is_file() for t in TARS)


def unpack_tars(root: str | Path) -> None:
    """Layout 3 -> layout 1, in `root` itself: torchvision.datasets.ImageNet checks the archives'
    MD5s and unpacks them (train/<wnid>/, val/<wnid>/, meta.bin), once."""
    from torchvision.datasets import ImageNet

    for split in ("train", "val"):
        ImageNet(str(Path(root).expanduser()), split=split)
