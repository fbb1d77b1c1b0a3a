"""bnrepro: Ioffe & Szegedy (2015), Batch Normalization, reproduced on ImageNet.

The package tree is the architecture (imports flow downwards; docs/DESIGN.md):
    cli.py          the bnrepro-* console commands and their one error path
    train.py        bnrepro-train: the training loop, one for every variant
    plan.py         bnrepro-plan: what a run will do and cost, before it is submitted
    evaluation/     test-time crops, Algorithm 2, the ensemble (bnrepro-ensemble, bnrepro-bn-stats)
    figures/        Figure 1 on MNIST, the Figures 2-4 report, the W&B dashboard, the tables
    engine.py       how tensors run: runtime, the training step, evaluation
    builders.py     what a run is built from: data, model, optimizer, wrapping
    model.py, weights.py, data/, checkpoint.py, tracking.py, console.py, distributed.py,
    schedule.py, monitor.py, metrics.py, config.py, schema.py, errors.py, provenance.py,
    paper.py: the core

Importing the package registers `bn_inception` in timm's model registry, without importing torch
or timm itself (seconds that `bnrepro-train --help` should not pay): if timm is already imported,
bnrepro.model registers now; otherwise it registers the moment timm is imported.
"""

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps timm's own loader so that bnrepro.model (which registers
    bn_inception) is imported right after timm's package body has run."""

    def find_spec(self, name, path, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            import bnrepro.model  # noqa: F401

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    import bnrepro.model  # noqa: F401  (registers bn_inception with timm)
elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())
