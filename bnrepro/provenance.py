"""Where a result came from: the package version, the code's git commit, the software and machine
that ran it.

Every file of results (checkpoints, run folders, ensemble results, Figure 1) records these,
through here. In a git checkout (an editable install included) the commit is git's; an installed
wheel (or Docker image) carries the commit it was built from in bnrepro/_build.json, written by
hatch_build.py at build time (Docker: --build-arg BNREPRO_GIT_SHA=..., the build has no .git).
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
BUILD_INFO = _PACKAGE / "_build.json"  # {"version", "git_sha", "git_dirty"}: wheels only


def _git(*args: str) -> str | None:
    """git's output in the package's folder; None outside a git checkout or without git."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=_PACKAGE,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip()


@functools.cache
def _build_info() -> dict:
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


@functools.cache
def version() -> str:
    """The installed package's version (pyproject.toml's), or __version__ when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("bnrepro")
    except PackageNotFoundError:
        from bnrepro import __version__

        return __version__


def git_sha() -> str | None:
    """The commit of the code that is running: the one an installed copy was built from, else
    git's in a checkout (an installed copy may sit in some other repository: its build wins);
    None if neither is known."""
    if (info := _build_info()) and info.get("git_sha"):
        return info["git_sha"]
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """Did the checkout (or the tree the wheel was built from) have uncommitted changes?"""
    if (info := _build_info()) and info.get("git_sha"):
        return info.get("git_dirty")
    status = _git("status", "--porcelain")
    return None if status is None else bool(status)


def code_version() -> str:
    """One line for a console: 'bnrepro 0.1.0 (git 1a2b3c4d, uncommitted changes)'."""
    sha, dirty = git_sha(), git_dirty()
    where = f"git {sha[:8]}" if sha else "git commit unknown"
    return f"bnrepro {version()} ({where}{', uncommitted changes' if dirty else ''})"


def environment(device=None) -> dict:  # device: torch.device | None
    """The package version, the code's commit (and whether the checkout had uncommitted
    changes), the software versions, the machine and, if given, the device's name."""
    import numpy as np
    import torch

    env = {
        "bnrepro": version(),
        "git_sha": git_sha(),
        "git_dirty": git_dirty(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return env


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB chunks (checkpoints are large): which file was used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
