"""The wheel carries the YAML (configs/ -> bnrepro/configs/) and declares the console scripts."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bnrepro.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_every_config_and_the_entry_points(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(tmp_path), str(REPO)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("bnrepro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml_files = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert yaml_files and {f"bnrepro/{f}" for f in yaml_files} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("bnrepro-train", "bnrepro-ensemble", "bnrepro-report", "bnrepro-fig1",
                   "bnrepro-convert"):  # fmt: skip
        assert f"{script} = " in text


def test_source_checkout_finds_the_top_level_configs():
    assert Path(CONFIG_DIR, "train.yaml").is_file()
    assert Path(CONFIG_DIR, "experiment", "bn_x30.yaml").is_file()
