"""Covariate-shift monitor (paper Figure 1 b,c): the 15th, 50th and 85th percentiles of the inputs
to the nonlinearities of chosen layers, recorded every trainer.monitor.every_images.

    bnrepro-train trainer.monitor.layers=[blocks.5b.branch1x1] trainer.monitor.every_images=3200

A layer is a module name of the network (print(model) lists them); every ReLU/Sigmoid inside it
gets a forward pre-hook that records only when the monitor is armed, so it costs nothing between.
Keys: monitor/<nonlinearity module name>/p15|p50|p85.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from bnrepro.errors import ConfigError
from bnrepro.schedule import Every

NONLINEARITIES = (nn.ReLU, nn.Sigmoid)
QUANTILES = (0.15, 0.5, 0.85)
MAX_VALUES = 1 << 20  # torch.quantile's input limit is 16M; a strided subsample is plenty


class Monitor:
    def __init__(
        self, model: nn.Module, layers: list[str], *, every_images: int, images_seen: int = 0
    ) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ConfigError(
                f"trainer.monitor.layers: no module named {missing} in the model; "
                f"names look like {list(modules)[5:8]} (print(model) lists them all)"
            )
        self.every = Every(every_images, images_seen)
        self.armed = False
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        for layer in layers:
            acts = [
                (f"{layer}.{sub}" if sub else layer, m)
                for sub, m in modules[layer].named_modules()
                if isinstance(m, NONLINEARITIES)
            ]
            if not acts:
                raise ConfigError(f"trainer.monitor.layers: {layer!r} contains no ReLU or Sigmoid")
            for name, module in acts:
                self.handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            if self.armed:
                x = inputs[0].detach().float().flatten()
                # a copy: `x` is a view of the input, which an inplace ReLU then overwrites
                self.values[name] = x[:: max(1, x.numel() // MAX_VALUES)].clone()

        return record

    def arm(self, images_seen: int) -> bool:
        """Record during the next forward pass if a recording is due; True if armed."""
        self.armed = self.every.due(images_seen)
        return self.armed

    def collect(self) -> dict[str, float]:
        """The percentiles recorded by the last armed forward pass; disarms."""
        self.armed = False
        q = torch.tensor(QUANTILES)
        out = {}
        for name, x in self.values.items():
            p15, p50, p85 = torch.quantile(x, q.to(x.device)).tolist()
            out.update({f"monitor/{name}/p15": p15, f"monitor/{name}/p50": p50})
            out[f"monitor/{name}/p85"] = p85
        self.values.clear()
        return out


def build_monitor(monitor_cfg: DictConfig, model: nn.Module, images_seen: int) -> Monitor | None:
    """trainer.monitor's Monitor on `model`, or None when it names no layer."""
    if not monitor_cfg.layers:
        return None
    return Monitor(
        model,
        list(monitor_cfg.layers),
        every_images=monitor_cfg.every_images,
        images_seen=images_seen,
    )
