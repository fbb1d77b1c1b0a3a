"""The public BN-Inception weights as a bnrepro checkpoint: `bnrepro-convert`.

The widely used ImageNet BN-Inception weights are the Caffe model ported to PyTorch in Cadene's
`pretrainedmodels` (`bninception`, file bn_inception-52deb4733.pth; 73.5% / 91.6% single-crop
top-1 / top-5 on ImageNet val, as that package reports). That network is Figure 5's with:
- BGR input in 0-255 minus the mean (104, 117, 128) per channel, std 1;
- a bias in every conv, before its BN (redundant with BN's beta: folded into the running mean);
- BN eps 1e-5 (PyTorch's default; ours is 1e-3, docs/paper.md section 2);
- Caffe pooling: the stride-2 pools of 3c/4e are 3x3 without padding in ceil mode, and the
  modules' average pools count the zero padding;
- a plain 7x7 conv1, no LRN, no dropout, a 1000-way `last_linear`.
The converted checkpoint is `bn_inception` with those options (CAFFE_KWARGS), its first conv's
input channels reordered so that it takes RGB like every bnrepro model, and the normalisation
the weights need stored as its data config's mean/std (CAFFE_MEAN, CAFFE_STD), which
bnrepro-ensemble, bnrepro-bn-stats and timm (pretrained_cfg_overlay=dict(file=...)) apply:

    bnrepro-convert bn_inception-52deb4733.pth converted.pt
    bnrepro-ensemble checkpoints=converted.pt crops=1 data=imagenet data.root=/datasets/imagenet

Exit status 0 on success, 2 with a one-line message on bad input (bnrepro/errors.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bnrepro import checkpoint
from bnrepro.config import CONFIG_DIR
from bnrepro.errors import UserError
from bnrepro.model import INCEPTION_TABLE, BNInception
from bnrepro.provenance import file_sha256, git_sha

# bn_inception's keyword arguments that compute what the Caffe port computes (module docstring).
CAFFE_KWARGS = {
    "batch_norm": True,
    "activation": "relu",
    "lrn": False,
    "dropout": 0.0,
    "separable_conv1": False,
    "width_mult": 1.0,
    "head_bn": False,
    "bn_eps": 1e-5,
    "pool_ceil_mode": True,
    "pool_count_include_pad": True,
}
# The port subtracts (104, 117, 128) from BGR 0-255 pixels and divides by 1. Our inputs are RGB
# and normalised as (pixel - 255 mean) / (255 std) (engine.Runtime.inputs), so in the data
# config's units (fractions of 255):
CAFFE_MEAN = (128 / 255, 117 / 255, 104 / 255)  # RGB order
CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)
FIRST_CONV = "conv1_7x7_s2"
BN_STATS = ("weight", "bias", "running_mean", "running_var")


class WeightsError(UserError):
    """Weights that cannot be converted; the message says why."""


def caffe_layer_names() -> dict[str, str]:
    """The port's conv layer names -> bn_inception's conv blocks (each conv has `<name>_bn`)."""
    names = {
        FIRST_CONV: "stem.conv1",
        "conv2_3x3_reduce": "stem.conv2_reduce",
        "conv2_3x3": "stem.conv2",
    }
    for module, n1x1, *_, pool_proj, _stride in INCEPTION_TABLE:
        prefix, ours = f"inception_{module}", f"blocks.{module}"
        if n1x1:
            names[f"{prefix}_1x1"] = f"{ours}.branch1x1"
        names[f"{prefix}_3x3_reduce"] = f"{ours}.branch3x3.0"
        names[f"{prefix}_3x3"] = f"{ours}.branch3x3.1"
        names[f"{prefix}_double_3x3_reduce"] = f"{ours}.branch_dbl3x3.0"
        names[f"{prefix}_double_3x3_1"] = f"{ours}.branch_dbl3x3.1"
        names[f"{prefix}_double_3x3_2"] = f"{ours}.branch_dbl3x3.2"
        if pool_proj:
            names[f"{prefix}_pool_proj"] = f"{ours}.branch_pool.1"
    return names


def from_caffe_bninception(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The port's state dict -> bn_inception's (with CAFFE_KWARGS), computing the same logits
    on RGB inputs normalised with CAFFE_MEAN / CAFFE_STD."""
    sd = _strip_prefix(state_dict, "module.")  # saved from a DataParallel wrapper
    layers = caffe_layer_names()
    expected = {f"{c}.{p}" for c in layers for p in ("weight", "bias")}
    expected |= {f"{c}_bn.{s}" for c in layers for s in BN_STATS}
    expected |= {"last_linear.weight", "last_linear.bias"}
    optional = {f"{c}_bn.num_batches_tracked" for c in layers}
    missing, unknown = sorted(expected - sd.keys()), sorted(sd.keys() - expected - optional)
    if missing or unknown:
        found = [f"missing {len(missing)} keys, e.g. {missing[:3]}"] if missing else []
        found += [f"unknown {len(unknown)} keys, e.g. {unknown[:3]}"] if unknown else []
        raise WeightsError(
            f"not the Caffe BN-Inception state dict of pretrainedmodels' bninception "
            f"({'; '.join(found)}): give bn_inception-52deb4733.pth or a state dict of that module"
        )
    out = {}
    for caffe, ours in layers.items():
        weight, bias = sd[f"{caffe}.weight"].float(), sd[f"{caffe}.bias"].float().reshape(-1)
        if caffe == FIRST_CONV:
            weight = weight[:, [2, 1, 0]]  # input channels BGR -> RGB
        bn = {s: sd[f"{caffe}_bn.{s}"].float().reshape(-1) for s in BN_STATS}  # some files: [1, C]
        out[f"{ours}.conv.weight"] = weight.contiguous()
        out[f"{ours}.bn.weight"] = bn["weight"].clone()
        out[f"{ours}.bn.bias"] = bn["bias"].clone()
        # BN(conv(x) + b) with mean m is BN(conv(x)) with mean m - b: the bias folds into the mean.
        out[f"{ours}.bn.running_mean"] = bn["running_mean"] - bias
        out[f"{ours}.bn.running_var"] = bn["running_var"].clone()
        out[f"{ours}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = sd["last_linear.weight"].float().clone()
    out["fc.bias"] = sd["last_linear.bias"].float().clone()
    return out


def _strip_prefix(state_dict: dict, prefix: str) -> dict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def imagenet_classes() -> list[str]:
    """ImageNet-1k's wnids in sorted order: our class indices (bnrepro/data/layouts.py) and the
    Caffe models' (timm ships the list)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def converted_checkpoint(state_dict: dict[str, torch.Tensor], source: str = "") -> dict:
    """A bnrepro checkpoint (docs/DESIGN.md) of the converted weights: no training state, a
    config whose data is configs/data/imagenet.yaml with the weights' mean/std and whose model
    is bn_inception with CAFFE_KWARGS (what bnrepro-bn-stats rebuilds from)."""
    weights = from_caffe_bninception(state_dict)
    num_classes = weights["fc.weight"].shape[0]
    kwargs = {**CAFFE_KWARGS, "num_classes": num_classes, "in_chans": 3}
    try:
        BNInception(**kwargs).load_state_dict(weights)
    except RuntimeError as e:  # a layer of another width than Figure 5's
        raise WeightsError(f"the weights do not fit BN-Inception's Figure 5 widths: {e}") from e
    data = OmegaConf.load(Path(CONFIG_DIR) / "data" / "imagenet.yaml")
    data.mean, data.std, data.num_classes = list(CAFFE_MEAN), list(CAFFE_STD), num_classes
    classes = imagenet_classes() if num_classes == 1000 else [str(i) for i in range(num_classes)]
    return {
        "format": checkpoint.FORMAT,
        "arch": {"name": "bn_inception", "kwargs": kwargs},
        "classes": classes,
        "model": weights,
        "images_seen": None,
        "config": {
            "data": OmegaConf.to_container(data),
            "model": {"name": "bn_inception", **CAFFE_KWARGS},
            "seed": 0,
            "converted_from": source,
        },
        "git_sha": git_sha(),
    }


def main(argv: list[str] | None = None) -> None:
    """bnrepro-convert SOURCE OUTPUT: the Caffe BN-Inception state dict -> a bnrepro checkpoint."""
    parser = argparse.ArgumentParser(prog="bnrepro-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the port's weights, e.g. bn_inception-52deb4733.pth")
    parser.add_argument("output", help="the bnrepro checkpoint to write, e.g. converted.pt")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args(argv)
    convert_file(Path(args.source), Path(args.output), force=args.force)


def convert_file(source: Path, output: Path, *, force: bool = False) -> None:
    if not source.is_file():
        raise WeightsError(f"{source} does not exist: give the path of the .pth file")
    if output.exists() and not force:
        raise WeightsError(f"{output} exists: choose another output file, or pass --force")
    try:  # weights_only: reading the file runs no code (its ASCII keys read under Python 3)
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a foreign or truncated file
        raise WeightsError(f"{source} is not a readable PyTorch state dict ({e})") from e
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{source} holds a {type(state_dict).__name__}, not a state dict")
    sha = file_sha256(source)
    checkpoint.save(output, converted_checkpoint(state_dict, source=f"{source.name} sha256:{sha}"))
    print(
        f"{output}: bn_inception with {CAFFE_KWARGS}; inputs RGB, mean/std {CAFFE_MEAN}/{CAFFE_STD}"
    )
