"""Where a result came from: the code's git commit and the software and machine that ran it.

Every file of results (checkpoints, ensemble results, Figure 1) records these, through here.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch


def _git(*args: str) -> str | None:
    """git's output in the package's folder; None outside a git checkout or without git."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip()


def git_sha() -> str | None:
    """The commit of the code that is running (None outside a git checkout)."""
    return _git("rev-parse", "HEAD") or None


def environment(device: torch.device | None = None) -> dict:
    """The code's commit (and whether the checkout had uncommitted changes), the software
    versions, the machine and, if given, the device's name."""
    status = _git("status", "--porcelain")
    env = {
        "git_sha": git_sha(),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return env
