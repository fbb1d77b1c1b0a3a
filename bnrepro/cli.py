"""The Hydra commands' entry points, light on purpose: `bnrepro-train --help`, `--cfg job` and
shell completion (`bnrepro-train --shell-completion install=bash`) need Hydra and the YAML only,
so torch, timm and the training loop are imported once a job actually starts.

    bnrepro-train [overrides]       -> bnrepro.train.train_job   (python -m bnrepro.train: the same)
    bnrepro-ensemble [overrides]    -> bnrepro.evaluation.ensemble.ensemble_job

Exit statuses and one-line errors: bnrepro/errors.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bnrepro.config import CONFIG_DIR, hydra_job, run_hydra_app
from bnrepro.errors import exit_diverged_after, require, user_errors_exit


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _train_job(cfg: DictConfig) -> None:
    with hydra_job("bnrepro-train", cfg, "train"):
        from bnrepro.train import train_job

        train_job(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="ensemble", version_base="1.3")
def _ensemble_job(cfg: DictConfig) -> None:
    with hydra_job("bnrepro-ensemble", cfg, "ensemble"):
        from bnrepro.evaluation.ensemble import ensemble_job

        ensemble_job(cfg)


def bnrepro_train(argv: list[str] | None = None) -> None:
    """bnrepro-train [overrides]: see bnrepro/train.py and configs/train.yaml. A run that
    diverged unexpectedly makes the command exit EXIT_DIVERGED once every job has run."""
    with exit_diverged_after():
        run_hydra_app(_train_job, argv, "bnrepro-train")


def bnrepro_ensemble(argv: list[str] | None = None) -> None:
    """bnrepro-ensemble [overrides]: see bnrepro/evaluation/ensemble.py, configs/ensemble.yaml."""
    run_hydra_app(_ensemble_job, argv, "bnrepro-ensemble")


# ---- the argparse commands: a missing optional dependency or a UserError ends in one line -----


def bnrepro_report(argv: list[str] | None = None) -> None:
    """bnrepro-report: Figures 2-3 from run folders (bnrepro/figures/report.py)."""
    with user_errors_exit("bnrepro-report"):
        require("matplotlib", "figures", "bnrepro-report")
        require("pandas", "figures", "bnrepro-report")
        from bnrepro.figures import report

        report.main(argv)


def bnrepro_fig1(argv: list[str] | None = None) -> None:
    """bnrepro-fig1: Figure 1 on MNIST (bnrepro/figures/fig1.py)."""
    with user_errors_exit("bnrepro-fig1"):
        require("matplotlib", "figures", "bnrepro-fig1")
        from bnrepro.figures import fig1

        fig1.main(argv)


def bnrepro_dashboard(argv: list[str] | None = None) -> None:
    """bnrepro-dashboard: the W&B report of the five variants (bnrepro/figures/dashboard.py)."""
    with user_errors_exit("bnrepro-dashboard"):
        from bnrepro.figures import dashboard

        dashboard.main(argv)


def bnrepro_synthetic(argv: list[str] | None = None) -> None:
    """bnrepro-synthetic: the synthetic ImageNet-shaped tree (bnrepro/data/synthetic.py)."""
    with user_errors_exit("bnrepro-synthetic"):
        from bnrepro.data import synthetic

        synthetic.main(argv)


def bnrepro_bn_stats(argv: list[str] | None = None) -> None:
    """bnrepro-bn-stats: Algorithm 2 on a checkpoint (bnrepro/evaluation/bn_stats.py)."""
    with user_errors_exit("bnrepro-bn-stats"):
        from bnrepro.evaluation import bn_stats

        bn_stats.main(argv)


def bnrepro_convert(argv: list[str] | None = None) -> None:
    """bnrepro-convert: the public Caffe BN-Inception weights -> a checkpoint (bnrepro/weights.py)."""
    with user_errors_exit("bnrepro-convert"):
        from bnrepro import weights

        weights.main(argv)


def bnrepro_plan(argv: list[str] | None = None) -> None:
    """bnrepro-plan: what a run will cost before it starts (bnrepro/plan.py)."""
    with user_errors_exit("bnrepro-plan"):
        from bnrepro import plan

        plan.main(argv)
