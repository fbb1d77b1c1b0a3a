"""bnrepro: Ioffe & Szegedy (2015), Batch Normalization, reproduced on ImageNet.

The package tree is the architecture (imports flow downwards):
    train.py        bnrepro-train: the training loop, one for every variant
    evaluation/     test-time crops, Algorithm 2, the ensemble (bnrepro-ensemble, bnrepro-bn-stats)
    figures/        Figure 1 on MNIST, the Figures 2-4 report, the W&B dashboard
    engine.py       what every entry point shares: runtime, builders, evaluate
    model.py, data/, checkpoint.py, tracking.py, distributed.py, schedule.py, monitor.py,
    metrics.py, config.py, provenance.py, paper.py: the core, one job each

Importing the package registers `bn_inception` in timm's model registry.
"""

from bnrepro import model as _model  # noqa: F401  (registers bn_inception with timm)

__version__ = "0.1.0"
