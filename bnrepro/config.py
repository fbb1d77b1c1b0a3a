"""Where the YAML lives, and the quantities derived from a composed config.

The YAML is in the repository's top-level `configs/`; an installed wheel carries the same files
as `bnrepro/configs/`. `CONFIG_DIR` is whichever exists, so Hydra apps work both ways.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from bnrepro.paper import PAPER_BATCH

_PKG = Path(__file__).resolve().parent
CONFIG_DIR = str(_PKG / "configs" if (_PKG / "configs").is_dir() else _PKG.parent / "configs")


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The config a Hydra app would get, for tests and notebooks (no run folder is made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [], return_hydra_config=False)


def run_hydra_app(app: Callable[[], None], argv: list[str] | None) -> None:
    """Run a @hydra.main function on `argv` (the command line after the program name; None =
    the process's own): what every Hydra command's main(argv) does."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    app()


def effective_lr(lr: float, global_batch: int) -> float:
    """The paper's LR belongs to a batch of 32; scale it linearly with the global batch
    (Goyal et al. 2017; docs/paper.md section 3)."""
    return lr * global_batch / PAPER_BATCH


def model_kwargs(model_cfg: DictConfig, num_classes: int, in_chans: int) -> dict:
    """Keyword arguments for timm.create_model(model_cfg.name, **kwargs): every key of the model
    config except those that are not the network's own (name, sync_bn)."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "sync_bn")}
    return dict(kwargs, num_classes=num_classes, in_chans=in_chans)
