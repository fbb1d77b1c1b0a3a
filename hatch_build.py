"""Build hook: a wheel carries the commit it was built from (bnrepro/_build.json), so that an
installed copy (a wheel, a Docker image) still records its git SHA in checkpoints and results.

The SHA comes from git in the source tree, else from BNREPRO_GIT_SHA (a Docker build has no .git:
`docker build --build-arg BNREPRO_GIT_SHA=$(git rev-parse HEAD) .`). An editable install needs no
file: bnrepro/provenance.py asks git directly.
"""

import json
import os
import subprocess
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _git(root: str, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip()


class BuildInfoHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        sha = _git(self.root, "rev-parse", "HEAD") or os.environ.get("BNREPRO_GIT_SHA") or None
        status = _git(self.root, "status", "--porcelain")
        info = {
            "version": self.metadata.version,
            "git_sha": sha,
            "git_dirty": None if status is None else bool(status),
        }
        path = os.path.join(tempfile.mkdtemp(prefix="bnrepro-build-"), "_build.json")
        with open(path, "w") as f:
            json.dump(info, f)
        build_data["force_include"][path] = "bnrepro/_build.json"
