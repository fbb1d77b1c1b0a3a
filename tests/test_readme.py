"""The README's commands (issue 24): every one that is cheap enough runs here, the rest are named
below with the reason they cannot (data, a cluster, hours of CPU); a command added to the README
must be one or the other. Cheap: bnrepro-plan (no data, no training) and whatever runs at
debug=tiny, which is how the README writes a run of seconds."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TREE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Commands (by their start) the tests cannot run, and why; each is tested in its parts elsewhere.
TOO_COSTLY = {
    "bnrepro-train compare=bn_x30": "two CPU-scale runs, minutes (its debug=tiny form runs here)",
    "bnrepro-train experiment=bn_x30 data=imagenet": "needs ImageNet",
    "bnrepro-train -m experiment=inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid": "five CPU-scale runs, or SLURM",
    "bnrepro-train experiment=bn_x30 optim.lr=0.03": "a million images",
    "bnrepro-train --config-dir": "a SLURM cluster (tests/test_cli.py runs a user's config folder)",
    "bnrepro-train -m experiment=bn_x30_ensemble": "six CPU-scale runs",
    "bnrepro-ensemble": "needs trained members or the Caffe weights (tests/test_ensemble.py)",
    "bnrepro-convert": "needs the Caffe weights file (tests/test_weights.py converts a stand-in)",
    "bnrepro-train experiment=$e": "the pilot: ImageNet on a GPU (its plan runs here)",
    "bnrepro-report outputs/pilot": "needs the pilot's runs (tests/test_report.py draws others)",
}  # fmt: skip


def readme_commands() -> list[str]:
    """The bnrepro-* commands of the README: each line of its bash blocks (continuations joined;
    `.venv/bin/` and a `&&` chain's set-up dropped; a block's own `NAME="..."` variables
    expanded) and each inline code span that is one."""
    text = (REPO / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        variables = dict(re.findall(r'^([A-Z_]+)="([^"]*)"$', block, flags=re.M))
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = line.split(" #")[0].strip()
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            for part in line.split("&&"):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith("bnrepro-"):
                    found.append(part)
    found += [span for span in re.findall(r"`(bnrepro-[^`]*)`", text) if "debug=tiny" in span]
    return found


def cheap(command: str) -> bool:
    return command.startswith("bnrepro-plan") or "debug=tiny" in command.split()


def test_every_readme_command_runs_here_or_says_why_not():
    commands = readme_commands()
    assert "bnrepro-train compare=bn_x30" in commands  # the first command
    assert "bnrepro-train compare=bn_x30 debug=tiny" in commands
    untested = [c for c in commands if not cheap(c) and not c.startswith(tuple(TOO_COSTLY))]
    assert not untested, f"README commands neither run here nor named in TOO_COSTLY: {untested}"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in dict.fromkeys(readme_commands()) if cheap(c)])
def test_a_cheap_readme_command_runs(command, tiny_data_root, tmp_path):
    """As a user types it, in an empty folder; a training command reads the tests' small tree
    (data.root and its size appended) instead of generating the default one."""
    argv = shlex.split(command)
    if argv[0] == "bnrepro-train":
        argv += [f"data.root={tiny_data_root}", *TINY_TREE]
    env = dict(os.environ, WANDB_MODE="disabled")
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path, env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    if argv[0] == "bnrepro-train":
        summaries = list((tmp_path / "outputs").rglob("summary.json"))
        assert summaries and all("images_seen" in p.read_text() for p in summaries)
        if "-m" in argv or "compare=bn_x30" in argv:
            assert "sweep " in out.stdout and " done" in out.stdout  # the table of its jobs
