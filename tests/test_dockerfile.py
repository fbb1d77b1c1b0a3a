"""The Dockerfile, parsed (no engine here): the official PyTorch CUDA base of the torch the tests
run, dependencies in a layer before the code, a non-root user, runs bnrepro-train by default,
no secrets baked in."""

import json
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.fixture(scope="module")
def docker():
    return instructions(ROOT / "Dockerfile")


def test_base_is_an_official_pytorch_cuda_runtime_image(docker):
    args = dict(a.split("=", 1) for kind, a in docker if kind == "ARG" and "=" in a)
    froms = [a for kind, a in docker if kind == "FROM"]
    assert len(froms) == 1
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0])
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn9-runtime", image)


def test_base_image_has_the_torch_the_tests_run(docker):
    """Not the torch of another era: the image's major.minor is the one this suite runs on."""
    import torch

    args = dict(a.split("=", 1) for kind, a in docker if kind == "ARG" and "=" in a)
    tested = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert args["BASE_IMAGE"].startswith(f"pytorch/pytorch:{tested}."), (args, tested)


def test_dependencies_are_a_layer_before_the_code(docker):
    """Editing bnrepro/ must not reinstall the dependencies: they are installed from
    pyproject.toml alone, before the code is copied; the code installs with --no-deps."""
    kinds = [(kind, a) for kind, a in docker if kind in ("COPY", "RUN")]
    code = next(
        i for i, (kind, a) in enumerate(kinds) if kind == "COPY" and "bnrepro" in a.split()[:-1]
    )
    deps = next(i for i, (kind, a) in enumerate(kinds) if kind == "RUN" and "pip install" in a)
    assert deps < code
    assert "pyproject.toml" in " ".join(a for kind, a in kinds[:deps] if kind == "COPY")
    assert "--no-deps" in next(
        a for kind, a in kinds[code:] if kind == "RUN" and "pip install" in a
    )


def test_runs_as_a_user_not_root(docker):
    users = [a for kind, a in docker if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    instructions_after = [kind for kind, _ in docker][[kind for kind, _ in docker].index("USER") :]
    assert "ENTRYPOINT" in instructions_after


def test_installs_the_package_from_what_it_copies(docker):
    copied = {src for kind, a in docker if kind == "COPY" for src in a.split()[:-1]}
    assert {"pyproject.toml", "bnrepro", "configs"} <= copied
    assert all((ROOT / src).exists() for src in copied)
    runs = " && ".join(a for kind, a in docker if kind == "RUN")
    assert re.search(r"pip install (--\S+ )*\.( |$)", runs)


def test_default_command_is_bnrepro_train(docker):
    entry = [json.loads(a) for kind, a in docker if kind == "ENTRYPOINT"]
    assert entry == [["bnrepro-train"]]
    assert not [a for kind, a in docker if kind == "CMD"]  # arguments are Hydra overrides
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bnrepro-train"] == "bnrepro.cli:bnrepro_train"


def test_no_secrets_in_the_image(docker):
    for kind, a in docker:
        if kind in ("ENV", "ARG"):
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", a, re.I), a
        assert "WANDB_API_KEY=" not in a
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "outputs", "wandb", ".netrc", ".env"} <= set(ignored)


def test_usage_documents_mounts_and_the_wandb_key():
    header = (ROOT / "Dockerfile").read_text()
    assert "-v /data:/data" in header and "/workspace/outputs" in header
    assert "-e WANDB_API_KEY" in header and "--gpus all" in header
    assert "docker build --build-arg BNREPRO_GIT_SHA=$(git rev-parse HEAD)" in header
    readme = (ROOT / "README.md").read_text()
    assert "docker build --build-arg BNREPRO_GIT_SHA=$(git rev-parse HEAD) -t bnrepro ." in readme
