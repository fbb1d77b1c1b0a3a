"""The data pipeline (issue 3): layouts, bad files, augmentation, sampling, determinism."""

import hashlib
import io
import shutil
import tarfile
import warnings

import numpy as np
import pytest
import torch
from conftest import WNIDS, cpu_runtime, write_jpeg
from omegaconf import OmegaConf
from PIL import Image

from bnrepro import data as D
from bnrepro.config import compose
from bnrepro.data import layouts
from bnrepro.data import transforms as T
from bnrepro.errors import ConfigError, DataError, UserError


def data_cfg(root, *extra):
    """The real ImageNet data config, shrunk to the tiny trees."""
    overrides = [
        "data=imagenet", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
        "data.num_workers=0", "data.train_crop=32", "data.eval_resize=36", "data.eval_crop=32",
        *extra,
    ]  # fmt: skip
    return compose("train", overrides).data


def labels_by_name(ds) -> dict[str, int]:
    return {
        f.decode().rsplit("/", 1)[-1]: int(y)
        for f, y in zip(ds.split.files, ds.split.labels, strict=True)
    }


# ---------------------------------------------------------------- layouts


def flat_val(root, devkit_ids: dict[str, int] | None = None) -> dict[str, str]:
    """Move val/<wnid>/* to a flat val/ILSVRC2012_val_<n>.JPEG; returns name -> wnid. With
    devkit_ids (wnid -> ILSVRC2012_ID) write a devkit, else Kaggle's CSV."""
    truth = {}
    for n, path in enumerate(sorted((root / "val").glob("*/*.JPEG")), start=1):
        name = f"ILSVRC2012_val_{n:08d}"
        truth[name] = path.parent.name
        path.rename(root / "val" / f"{name}.JPEG")
    for d in (root / "val").iterdir():
        if d.is_dir():
            d.rmdir()
    if devkit_ids is None:
        rows = [f"{name},{wnid} 1 2 30 40" for name, wnid in truth.items()]
        (root / layouts.KAGGLE_CSV).write_text(
            "ImageId,PredictionString\n" + "\n".join(rows) + "\n"
        )
    else:
        write_devkit(root / layouts.DEVKIT, devkit_ids, [devkit_ids[w] for w in truth.values()])
    return truth


def write_devkit(devkit, ids: dict[str, int], truth: list[int]) -> None:
    """ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt} as the real
    devkit: a struct array `synsets` whose leaves (num_children 0) are the classes, plus a parent."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]  # fmt: skip
    rows = [(i, w, f"thing {i}, object", "a gloss", 0, np.zeros(0), 0, 8) for w, i in ids.items()]
    rows.append((len(ids) + 1, "n00000009", "parent", "a gloss", len(ids), np.arange(1, 4), 1, 0))
    synsets = np.array(rows, dtype=[(f, object) for f in fields])
    (devkit / "data").mkdir(parents=True)
    scipy.io.savemat(devkit / "data" / "meta.mat", {"synsets": synsets})
    (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "\n".join(map(str, truth)) + "\n"
    )


# Devkit ids in an order that is not sorted-wnid order (the real devkit's is not either).
DEVKIT_IDS = {"n03000003": 1, "n01000002": 2, "n02000001": 3}


def write_tars(root, tmp_path):
    """The image-folder tree `root` as ImageNet's original tars in tmp_path/tars: (that folder,
    val image name -> wnid, torchvision's ARCHIVE_META with these files' MD5s)."""
    import torchvision.datasets.imagenet as tv

    tars = tmp_path / "tars"
    tars.mkdir()
    staging = tmp_path / "staging"
    truth = flat_val(shutil.copytree(root, staging), DEVKIT_IDS)
    with tarfile.open(tars / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in WNIDS:
            inner = staging / f"{wnid}.tar"
            with tarfile.open(inner, "w") as t:
                for f in sorted((staging / "train" / wnid).iterdir()):
                    t.add(f, arcname=f.name)
            outer.add(inner, arcname=inner.name)
    with tarfile.open(tars / "ILSVRC2012_img_val.tar", "w") as t:
        for f in sorted((staging / "val").iterdir()):
            t.add(f, arcname=f.name)
    with tarfile.open(tars / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as t:
        t.add(staging / layouts.DEVKIT, arcname=layouts.DEVKIT)
    md5 = {
        k: hashlib.md5((tars / n).read_bytes()).hexdigest() for k, (n, _) in tv.ARCHIVE_META.items()
    }
    return tars, truth, {k: (n, md5[k]) for k, (n, _) in tv.ARCHIVE_META.items()}


def test_layouts_give_every_image_the_same_label(image_folder_tree, tmp_path, monkeypatch):
    root, classes = image_folder_tree
    train, val, got_classes = D.find_imagenet(root)
    assert got_classes == classes == sorted(WNIDS)
    for split in (train, val):  # ImageFolder: label = sorted position of the folder's wnid
        for f, y in zip(split.files, split.labels, strict=True):
            assert classes[y] == f.decode().split("/")[-2]
    expected_train = labels_by_name(D.ImageFiles(train, T.EvalTransform(36, 32)))

    # 2a. Flat val + Kaggle CSV; 2b. flat val + devkit with non-sorted ids.
    for devkit in (None, DEVKIT_IDS):
        copy = tmp_path / f"flat_{devkit is None}"
        shutil.copytree(root, copy)
        truth = flat_val(copy, devkit)
        tr, va, cl = D.find_imagenet(copy)
        assert cl == classes
        assert labels_by_name(D.ImageFiles(tr, T.EvalTransform(36, 32))) == expected_train
        for f, y in zip(va.files, va.labels, strict=True):
            assert classes[y] == truth[f.decode().split("/")[-1][:-5]]

    # 3. The original tars, unpacked by torchvision.datasets.ImageNet.
    tars, truth, archive_meta = write_tars(root, tmp_path)
    import torchvision.datasets.imagenet as tv

    monkeypatch.setattr(tv, "ARCHIVE_META", archive_meta)
    for _ in range(2):  # unpacks once; the second time it reads the unpacked folders (layout 1)
        tr, va, cl = D.find_imagenet(tars)
        assert cl == classes
        assert labels_by_name(D.ImageFiles(tr, T.EvalTransform(36, 32))) == expected_train
        for f, y in zip(va.files, va.labels, strict=True):
            assert classes[y] == truth[f.decode().split("/")[-1][:-5]]


def test_kaggle_nesting_is_found(image_folder_tree, tmp_path):
    root, classes = image_folder_tree
    truth = flat_val(root)
    nested = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    nested.parent.mkdir(parents=True)
    (root / layouts.KAGGLE_CSV).rename(tmp_path / "kaggle" / layouts.KAGGLE_CSV)
    root.rename(nested)
    tr, va, cl = D.find_imagenet(tmp_path / "kaggle")
    assert cl == classes and len(tr.files) == 24
    for f, y in zip(va.files, va.labels, strict=True):
        assert classes[y] == truth[f.decode().split("/")[-1][:-5]]


def test_missing_pieces_are_named(image_folder_tree):
    root, _ = image_folder_tree
    empty = root / "train" / "n09999999"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="n09999999"):
        D.find_imagenet(root)
    empty.rmdir()
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    write_jpeg(root / "val" / "ILSVRC2012_val_00000001.JPEG", (40, 40), 0)
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        D.find_imagenet(root)
    shutil.rmtree(root / "train")
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        D.find_imagenet(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.build_datasets(data_cfg(root.parent / "nowhere"))


def test_val_images_train_cannot_label_are_data_errors(image_folder_tree, tmp_path):
    """A val class folder, or a flat val image's label, that train/ lacks; a flat val image with
    no label: DataErrors (exit status 2, one line) that name the file and the fix."""
    root, _ = image_folder_tree
    extra = tmp_path / "extra_class"
    shutil.copytree(root, extra)
    write_jpeg(extra / "val" / "n09999998" / "a.JPEG", (40, 40), 0)
    with pytest.raises(DataError, match=r"n09999998 is a class that .*train does not have: remove"):
        D.find_imagenet(extra)
    flat = tmp_path / "flat"
    shutil.copytree(root, flat)
    flat_val(flat)
    csv = flat / layouts.KAGGLE_CSV
    header, first, *rest = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *rest]) + "\n")  # the first image loses its label
    with pytest.raises(DataError, match=r"no label for .*ILSVRC2012_val_00000001.JPEG: "):
        D.find_imagenet(flat)
    name, labels = first.split(",")
    csv.write_text("\n".join([header, f"{name},n09999999 {labels.split(' ', 1)[1]}", *rest]))
    with pytest.raises(DataError, match=r"labelled n09999999 by .*, a class that .*train does not"):
        D.find_imagenet(flat)


def test_num_classes_must_match(image_folder_tree):
    root, _ = image_folder_tree
    with pytest.raises(ValueError, match="set data.num_classes=3"):
        D.build_datasets(data_cfg(root, "data.num_classes=1000"))


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_files_are_skipped_counted_and_warned_once(image_folder_tree, workers):
    root, _ = image_folder_tree
    good = (root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes()
    bad = {
        "corrupt.JPEG": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
        "truncated.JPEG": good[: len(good) // 2],
        "notes.JPEG": b"not an image at all\n",
    }
    for name, content in bad.items():
        (root / "train" / WNIDS[1] / name).write_bytes(content)
    cfg = data_cfg(root, f"data.num_workers={workers}")
    train_ds, _, _ = D.build_datasets(cfg)
    loader = D.build_train_loader(cfg, train_ds, seed=0, rank=0, world_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):  # the second epoch must not warn again
            loader.sampler.set_epoch(epoch)
            batches = [batch.images for batch in loader]
    assert len(batches) == len(train_ds) // 4 and all(b.shape == (4, 3, 32, 32) for b in batches)
    assert D.skipped_files(train_ds) == 3  # counted across worker processes
    if workers == 0:  # a worker's warnings go to its own stderr, out of this process's reach
        text = "\n".join(str(w.message) for w in caught)
        assert all(text.count(name) == 1 for name in bad), text


def test_a_folder_of_unreadable_files_is_a_data_error_naming_it(tmp_path):
    folder = tmp_path / "train" / WNIDS[0]
    folder.mkdir(parents=True)
    names = [f"{k:02d}.JPEG" for k in range(40)]
    for name in names:
        (folder / name).write_bytes(b"not an image")
    split = layouts.Split.of(tmp_path, [f"train/{WNIDS[0]}/{n}" for n in names], [0] * 40)
    ds = D.ImageFiles(split, T.TrainTransform(32, T.Augment()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one "skipping unreadable image" per file
        with pytest.raises(DataError, match=rf"32 unreadable images in a row .* in {folder}: "):
            ds[(3, 0, 0)]


# ---------------------------------------------------------------- augmentation


def jpeg(size, mode="RGB", fmt="JPEG") -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 4 if mode == "CMYK" else 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., :3]).convert(mode).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        jpeg((400, 350)),
        jpeg((20, 30)),
        jpeg((90, 60), "L"),
        jpeg((90, 60), "CMYK"),
        jpeg((70, 50), fmt="PNG"),
    ],
    ids=["imagenet-sized", "smaller-than-crop", "grey", "cmyk", "png"],
)
def test_transforms_give_uint8_rgb_of_the_crop_size(data):
    out, color = T.TrainTransform(48, T.Augment())(data, np.random.default_rng(1))
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8 and out.is_contiguous()
    assert 0 < out.float().std() and out.max() <= 255
    assert len(color) == len(T.COLOR_COLUMNS) and color[0] in (0, 1, 2, 3)
    out = T.EvalTransform(56, 48)(data)
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8


def test_decode_uses_the_smallest_dct_scale_that_covers_the_crop():
    data = jpeg((400, 320))
    assert T.decode(data).shape == (320, 400, 3)
    assert T.decode(data, 100, 80).shape == (80, 100, 3)  # 1/4
    assert T.decode(data, 101, 10).shape == (160, 200, 3)  # 1/2: 1/4 would be too small


def test_random_crop_respects_area_and_aspect():
    aug = T.Augment()
    rng = np.random.default_rng(0)
    for _ in range(500):
        x0, y0, x1, y1 = T.sample_crop(400, 350, aug, rng)
        w, h = x1 - x0, y1 - y0
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 350
        assert 0.07 < w * h / (400 * 350) <= 1.0 and 0.7 < w / h < 1.4


def test_colour_distortion():
    grey = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    assert torch.equal(T.apply_color(grey, ()), grey)
    assert T.apply_color(grey, (("brightness", 20.0),)).eq(120).all()
    assert T.apply_color(grey, (("contrast", 1.5), ("saturation", 0.2), ("hue", 0.3))).eq(100).all()
    img = torch.tensor([200, 50, 50], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
    assert T.apply_color(img, (("saturation", 0.0),)).unique().numel() == 1  # grey
    assert T.Augment(color_strength=0).color_strength == 0
    assert T.sample_color(T.Augment(color_strength=0), np.random.default_rng(0)) == ()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (dict(min_area=2), r"data.augment.min_area and data.augment.max_area .* got 2 and 1.0"),
        (dict(min_area=0), "data.augment.min_area"),
        (dict(min_area=0.5, max_area=0.1), "data.augment.min_area"),
        (dict(min_aspect=0), "data.augment.min_aspect"),
        (dict(min_aspect=2, max_aspect=1), "data.augment.min_aspect"),
        (dict(color_strength=3), r"data.augment.color_strength must be in \[0, 2\], got 3"),
    ],
)
def test_augment_ranges_are_config_errors(knobs, message):
    with pytest.raises(ConfigError, match=message):
        T.Augment(**knobs)


@pytest.mark.parametrize("crop", [0, 40])
def test_eval_crop_must_fit_the_resize(crop):
    with pytest.raises(ConfigError, match=r"data.eval_crop must be in \[1, data.eval_resize=36\]"):
        T.EvalTransform(36, crop)


def test_eval_is_a_centre_crop_of_the_shorter_side_resize():
    assert T.eval_box(512, 256, 256, 224) == (144, 16, 368, 240)  # (512 - 224) / 2 = 144
    assert T.eval_box(600, 300, 256, 224) == (169, 19, 431, 281)  # 224 px of 256 = 262.5 of 300


# ---------------------------------------------------------------- sampling and determinism


def epoch_batches(cfg, ds, epoch, start_image=0, seed=0, rank=0, world_size=1):
    loader = D.build_train_loader(cfg, ds, seed=seed, rank=rank, world_size=world_size)
    loader.sampler.set_epoch(epoch, start_image)
    return list(loader)


def same(a, b) -> bool:
    """The same TrainBatches: images, labels and colour parameters."""
    return len(a) == len(b) and all(
        all(torch.equal(x, u) for x, u in zip(one, other, strict=True))
        for one, other in zip(a, b, strict=True)
    )


def test_augmentation_is_reproducible_from_the_seed_at_any_worker_count(image_folder_tree):
    root, _ = image_folder_tree
    cfg = data_cfg(root, "data.shuffle=full")
    ds, _, _ = D.build_datasets(cfg)
    base = epoch_batches(cfg, ds, epoch=1)
    assert same(base, epoch_batches(cfg, ds, epoch=1))
    cfg1 = data_cfg(root, "data.shuffle=full", "data.num_workers=1")
    assert same(base, epoch_batches(cfg1, D.build_datasets(cfg1)[0], epoch=1))
    assert not same(base, epoch_batches(cfg, ds, epoch=2))
    assert not same(base, epoch_batches(cfg, ds, epoch=1, seed=1))


@pytest.mark.parametrize("shuffle", ["full", "shards", "within_shard"])
def test_a_samples_augmentation_is_its_own_at_any_worker_count_and_resume_point(
    image_folder_tree, shuffle
):
    """The crop, flip and colour of (seed, epoch, index) are that sample's whatever serves it:
    0, 1 and 2 workers, from the start of the epoch or resumed 2 batches into it, give each
    sample the same uint8 image, the same colour parameters and the same model input (colour
    applied on the device), all equal to the dataset's own item for that key."""
    root, _ = image_folder_tree
    runtime = cpu_runtime(data_cfg(root))

    def by_sample(workers: int, start_image: int = 0) -> dict:
        cfg = data_cfg(root, f"data.shuffle={shuffle}", "data.shard_size=8",
                       f"data.num_workers={workers}", "data.augment.color_strength=1.0")  # fmt: skip
        ds, _, _ = D.build_datasets(cfg)
        loader = D.build_train_loader(cfg, ds, seed=3, rank=0, world_size=1)
        loader.sampler.set_epoch(2, start_image)
        keys = list(loader.sampler)
        samples = {}
        for k, batch in enumerate(loader):
            inputs = runtime.inputs(batch.images, batch.color)
            for j, label in enumerate(batch.labels):
                key = keys[4 * k + j]
                samples[key] = (batch.images[j], label, batch.color[j], inputs[j])
        return samples

    reference = by_sample(0)
    assert len(reference) == 24 and all(key[1:] == (2, 3) for key in reference)
    assert sum(color[0] >= 0 for _, _, color, _ in reference.values()) == 24  # all coloured
    ds, _, _ = D.build_datasets(data_cfg(root, "data.augment.color_strength=1.0"))
    for key, (image, label, color, _) in reference.items():
        own_image, own_label, own_color = ds[key]
        assert torch.equal(image, own_image) and label == own_label
        assert color.tolist() == pytest.approx(own_color)
    for workers, start_image in ((1, 0), (2, 0), (0, 8), (2, 8)):
        served = by_sample(workers, start_image)
        assert len(served) == 24 - start_image
        for key, values in served.items():
            assert all(torch.equal(a, b) for a, b in zip(values, reference[key], strict=True))


@pytest.mark.parametrize("shuffle", ["full", "shards", "within_shard"])
def test_resume_at_start_image_equals_continuing(image_folder_tree, shuffle):
    root, _ = image_folder_tree
    cfg = data_cfg(root, f"data.shuffle={shuffle}", "data.shard_size=8")
    ds, _, _ = D.build_datasets(cfg)
    full = epoch_batches(cfg, ds, epoch=3)
    assert same(full[2:], epoch_batches(cfg, ds, epoch=3, start_image=2 * 4))


def rank_batches(size, epoch, *, world, shuffle, batch=4, start=0, seed=7, shard_size=8):
    """Each rank's batches of one epoch (as a DataLoader with drop_last cuts its keys)."""
    out = []
    for rank in range(world):
        s = D.EpochSampler(size, batch_size=batch, seed=seed, rank=rank, world_size=world,
                           shuffle=shuffle, shard_size=shard_size)  # fmt: skip
        s.set_epoch(epoch, start)
        keys = [i for i, e, _ in s]
        assert len(keys) == len(s) and len(keys) % batch == 0
        out.append([keys[k : k + batch] for k in range(0, len(keys), batch)])
    return out


@pytest.mark.parametrize("shuffle", ["full", "shards", "within_shard"])
def test_ranks_get_disjoint_equal_shares_and_a_new_order_each_epoch(shuffle):
    world, size = 3, 100
    firsts = []
    for epoch in range(2):
        shares = rank_batches(size, epoch, world=world, shuffle=shuffle)
        assert [len(b) for b in shares] == [8, 8, 8]  # 100 // 12 global batches of 3 x 4
        flat = [i for batches in shares for b in batches for i in b]
        assert len(set(flat)) == len(flat) == 96
        firsts.append(shares[0])
    assert firsts[0] != firsts[1]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_shuffle_keeps_every_batch_a_fixed_group(world):
    """Section 4.2.1: without within-shard shuffling the same examples always share a batch: the
    batches of epoch 2 are the groups of epoch 1 (in another order), on every rank, at any world
    size; under full shuffling they are not."""
    groups = {}
    for shuffle in ("shards", "full"):
        for epoch in range(3):
            shares = rank_batches(100, epoch, world=world, shuffle=shuffle)
            groups[shuffle, epoch] = {frozenset(b) for batches in shares for b in batches}
            assert len(groups[shuffle, epoch]) == sum(len(b) for b in shares)
    assert groups["shards", 0] == groups["shards", 1] == groups["shards", 2]
    assert len(groups["full", 0] & groups["full", 1]) <= 2
    one_rank = {frozenset(b) for b in rank_batches(100, 0, world=1, shuffle="shards")[0]}
    assert groups["shards", 0] <= one_rank  # the same groups whatever the number of ranks


@pytest.mark.parametrize("world", [1, 2, 3])
def test_within_shard_keeps_each_shard_but_changes_who_shares_a_batch(world):
    """Section 4.2.1, the paper's change: "within-shard shuffling ... prevents the same examples
    from always appearing in a mini-batch together". Under within_shard every image stays in
    its shard (each epoch's order is the fixed shards, one after another, as under shards), but
    the groups that share a batch change from epoch to epoch, on any world size."""
    shard_size, size = 8, 100

    def shards_of(shuffle: str, epoch: int) -> set[frozenset]:
        s = D.EpochSampler(size, batch_size=4, seed=7, shuffle=shuffle, shard_size=shard_size)
        order = s.order(epoch)[: size // shard_size * shard_size].tolist()
        return {frozenset(order[i : i + shard_size]) for i in range(0, len(order), shard_size)}

    fixed = shards_of("shards", 0)
    partial = frozenset(range(size)) - frozenset().union(*fixed)  # the last, partial shard
    groups = []
    for epoch in range(3):
        assert shards_of("within_shard", epoch) == fixed  # every image in its own shard
        shares = rank_batches(size, epoch, world=world, shuffle="within_shard")
        batches = {frozenset(b) for batches in shares for b in batches}
        assert all(any(b <= shard for shard in [*fixed, partial]) for b in batches)  # in a shard
        groups.append(batches)
    assert groups[0] != groups[1] != groups[2]  # who shares a batch changes every epoch
    assert len(groups[0] & groups[1]) <= len(groups[0]) // 2
    # the order inside a shard is new each epoch; under shards it never changes
    for shuffle, changes in (("within_shard", True), ("shards", False)):
        s = D.EpochSampler(size, batch_size=4, seed=7, shuffle=shuffle, shard_size=shard_size)
        assert (
            sorted(map(tuple, _runs(s.order(0), 8))) != sorted(map(tuple, _runs(s.order(1), 8)))
        ) == changes


def _runs(order, shard_size: int) -> list[list[int]]:
    full = len(order) // shard_size * shard_size
    return [order[i : i + shard_size].tolist() for i in range(0, full, shard_size)]


@pytest.mark.parametrize("shuffle", ["full", "shards", "within_shard"])
def test_an_epoch_resumed_on_other_world_sizes_uses_every_image_once(shuffle):
    """The position is global: 4 global batches on 2 ranks, then 3 ranks, then 1 rank from where
    each stopped: every image of the epoch exactly once (96 = 4 x 8 + 4 x 12 + 4 x 4)."""
    used, start = [], 0
    for world, steps in ((2, 4), (3, 4), (1, 4)):
        shares = rank_batches(96, 0, world=world, shuffle=shuffle, start=start)
        used += [i for batches in shares for b in batches[:steps] for i in b]
        start += steps * world * 4
    assert sorted(used) == list(range(96))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(batch_size=0), "data.batch_size must be >= 1, got 0"),  # not a ZeroDivisionError
        (dict(batch_size=-4), "data.batch_size must be >= 1, got -4"),
        (dict(shuffle="shards", shard_size=0), "data.shard_size must be >= 1, got 0"),
        (dict(world_size=0), "WORLD_SIZE must be >= 1"),  # not a ZeroDivisionError
        (dict(rank=3, world_size=3), "0 <= RANK < WORLD_SIZE"),
        (dict(size=10, world_size=4), "fewer than one batch"),
        (dict(shuffle="shards", shard_size=10), "set data.shard_size=12"),
    ],
)
def test_sampler_settings_are_config_errors(settings, message):
    args = dict(size=100, batch_size=4, seed=0) | settings
    with pytest.raises(ConfigError, match=message):
        D.EpochSampler(args.pop("size"), **args)


def test_sampler_fails_loudly_on_a_shuffle_the_schema_should_have_refused():
    with pytest.raises(KeyError, match="random"):  # never silently full or shards
        D.EpochSampler(100, batch_size=4, seed=0, shuffle="random")


def test_sampler_refuses_positions_it_cannot_continue():
    sampler = D.EpochSampler(100, batch_size=4, seed=0, shuffle="shards", shard_size=8)
    with pytest.raises(UserError, match="stopped 6 images into epoch 2, not a multiple of data"):
        sampler.set_epoch(2, start_image=6)  # a resume after changing data.batch_size
    with pytest.raises(UserError, match="past this training set's 100 images"):
        sampler.set_epoch(2, start_image=104)  # a checkpoint of another data set


# ---------------------------------------------------------------- device side


def test_normalize_on_the_device():
    cfg = compose("train", ["data=imagenet"]).data
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    y = cpu_runtime(cfg, channels_last=True).inputs(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    expected = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    assert torch.allclose(y[0, :, 0, 0], expected, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        cpu_runtime(cfg).inputs(x.float())


def test_gpu_decode_falls_back_to_cpu_without_cuda(image_folder_tree, monkeypatch):
    root, _ = image_folder_tree
    cfg = data_cfg(root, "data.decode=gpu")
    ds, _, _ = D.build_datasets(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="decoding on the CPU"):
        loader = D.build_train_loader(cfg, ds, seed=0, rank=0, world_size=1)
    assert isinstance(loader, torch.utils.data.DataLoader)


def test_an_unknown_decoder_fails_loudly(image_folder_tree):
    """data.decode is the config schema's to check; a value that slips past it must not quietly
    become the CPU loader."""
    root, _ = image_folder_tree
    cfg = data_cfg(root)
    train_ds, val_ds, _ = D.build_datasets(cfg)
    cfg = OmegaConf.create({**OmegaConf.to_container(cfg), "decode": "nvjpeg"})
    with pytest.raises(KeyError, match="nvjpeg"):
        D.build_train_loader(cfg, train_ds, seed=0, rank=0, world_size=1)
    with pytest.raises(KeyError, match="nvjpeg"):
        D.build_val_loader(cfg, val_ds, rank=0, world_size=1)


def test_device_decode_remembers_the_files_it_refuses(image_folder_tree, monkeypatch):
    """A PNG named .JPEG: decode_jpeg refuses it, the CPU path reads it. Refused once, it goes
    straight to the CPU path from then on: no failed batch call, no one-by-one decoding."""
    root, _ = image_folder_tree
    png = root / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    Image.open(png).save(png, "PNG")
    cfg = data_cfg(root, "data.augment.color_strength=0.5")
    ds, _, _ = D.build_datasets(cfg)
    index = [ds.split.path(i) for i in range(len(ds))].index(str(png))
    sampler = D.EpochSampler(len(ds), batch_size=4, seed=0, shuffle=cfg.shuffle,
                             shard_size=cfg.shard_size)  # the order build_train_loader gives  # fmt: skip
    loader = D.DeviceDecodeLoader(cfg, ds, sampler, "cpu")
    calls = []
    decode_one = loader._decode_one
    monkeypatch.setattr(loader, "_decode_one", lambda buf: calls.append(1) or decode_one(buf))
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        device_batches = list(loader)
        assert loader.refused == {index}
        cpu_batches = epoch_batches(cfg, ds, epoch=epoch)
        order = [i for i, _, _ in loader.sampler]
        at = order.index(index)  # the PNG's image is the CPU path's, exactly
        assert torch.equal(device_batches[at // 4][0][at % 4], cpu_batches[at // 4][0][at % 4])
        for device, cpu in zip(device_batches, cpu_batches, strict=True):
            assert torch.equal(device.labels, cpu.labels) and torch.equal(device.color, cpu.color)
        if epoch == 0:
            assert len(calls) == 4  # its batch, one by one
    assert len(calls) == 4  # epoch 1: never offered to the decoder again
    assert D.skipped_files(ds) == 0


def test_device_decode_path_matches_the_cpu_path(image_folder_tree):
    """decode=gpu's logic, run on the CPU: same labels, same crops up to decoder differences."""
    root, _ = image_folder_tree
    (root / "train" / WNIDS[0] / "broken.JPEG").write_bytes(b"garbage")  # no header
    good = (root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes()
    (root / "train" / WNIDS[0] / "cut.JPEG").write_bytes(good[:-200])  # fails the batch decode
    cfg = data_cfg(root, "data.augment.color_strength=0.5")
    ds, _, _ = D.build_datasets(cfg)
    sampler = D.EpochSampler(len(ds), batch_size=4, seed=0, shuffle=cfg.shuffle,
                             shard_size=cfg.shard_size)  # the order build_train_loader gives  # fmt: skip
    sampler.set_epoch(1)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        device_batches = list(D.DeviceDecodeLoader(cfg, ds, sampler, device="cpu"))
    cpu_batches = epoch_batches(cfg, ds, epoch=1)
    assert len(device_batches) == len(cpu_batches)
    for (x, y, c), (u, v, w) in zip(device_batches, cpu_batches, strict=True):
        assert torch.equal(y, v) and x.shape == u.shape and x.dtype == torch.uint8
        assert torch.equal(c, w)  # the same colour, applied later on the device
        assert (x.float() - u.float()).abs().mean() < 12
    assert D.skipped_files(ds) == 2


# ---------------------------------------------------------------- MNIST


def test_mnist_data():
    cfg = compose("train", ["data=mnist"]).data
    train_ds, val_ds, classes = D.build_datasets(cfg)
    assert classes == [str(d) for d in range(10)] and len(train_ds) >= 4000
    x, y, color = next(iter(D.build_train_loader(cfg, train_ds, seed=0, rank=0, world_size=1)))
    assert x.shape == (60, 1, 32, 32) and x.dtype == torch.uint8 and x.max() > 200
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert (color == torch.tensor(T.NO_COLOR)).all()  # MNIST: no augmentation
    x, _ = next(iter(D.build_val_loader(cfg, val_ds, rank=0, world_size=1)))
    assert cpu_runtime(cfg).inputs(x).shape == (60, 1, 32, 32)
