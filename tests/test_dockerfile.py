"""The Dockerfile, parsed (no engine here): the official PyTorch CUDA base of the torch the tests
run, dependencies in a layer before the code and pinned to what the tests ran on
(constraints.txt), the wheel built in a stage of its own (its build tool stays there), a non-root
user whose HOME and caches any --user can write, OCI labels with the commit, runs bnrepro-train by
default, no secrets baked in."""

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

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


def stages(docker: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (from its FROM), in order; the last is the image."""
    found = []
    for kind, a in docker:
        if kind == "FROM":
            found.append([])
        if found:
            found[-1].append((kind, a))
    return found


@pytest.fixture(scope="module")
def docker():
    return instructions(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def image(docker):
    """The final stage: what the image holds."""
    return stages(docker)[-1]


def test_base_is_an_official_pytorch_cuda_runtime_image(docker):
    """Every stage starts from the one base image (the build stage too: the same Python)."""
    args = dict(a.split("=", 1) for kind, a in docker if kind == "ARG" and "=" in a)
    froms = [a.split()[0] for kind, a in docker if kind == "FROM"]
    assert froms and set(froms) == {"${BASE_IMAGE}"}, froms
    image = args["BASE_IMAGE"]
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn9-runtime", image)


def test_base_image_has_the_torch_the_tests_run(docker):
    """Not the torch of another era: the image's major.minor is the one this suite runs on."""
    import torch

    args = dict(a.split("=", 1) for kind, a in docker if kind == "ARG" and "=" in a)
    tested = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert args["BASE_IMAGE"].startswith(f"pytorch/pytorch:{tested}."), (args, tested)


def test_dependencies_are_a_layer_before_the_code(image):
    """Editing bnrepro/ must not reinstall the dependencies: in the image they are installed from
    pyproject.toml alone, before the code (the built wheel) comes in, which installs with
    --no-deps."""
    kinds = [(kind, a) for kind, a in image if kind in ("COPY", "RUN")]
    code = next(i for i, (kind, a) in enumerate(kinds) if kind == "COPY" and "--from=build" in a)
    deps = next(i for i, (kind, a) in enumerate(kinds) if kind == "RUN" and "pip install" in a)
    assert deps < code
    assert "pyproject.toml" in " ".join(a for kind, a in kinds[:deps] if kind == "COPY")
    assert "--no-deps" in next(
        a for kind, a in kinds[code:] if kind == "RUN" and "pip install" in a
    )


def test_dependencies_are_pinned_to_what_the_tests_ran(image):
    """The image installs pyproject's dependencies under constraints.txt, which pins every
    dependency of pyproject.toml (extras too) within its range; pip users keep the ranges."""
    deps = next(a for kind, a in image if kind == "RUN" and "pip install" in a)
    assert re.search(r"pip install .*-c constraints\.txt .*-r /tmp/requirements\.txt", deps), deps
    assert "constraints.txt" in " ".join(a for kind, a in image if kind == "COPY")
    pins = constraint_pins()
    for requirement in pyproject_requirements():
        pinned = pins.get(_name(requirement.name))
        assert pinned, f"{requirement.name} is not pinned in constraints.txt: regenerate it"
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert all(">=" in d and "==" not in d for d in project["dependencies"])  # ranges for pip


def test_the_tests_run_on_the_pinned_versions():
    """constraints.txt is made from an environment the tests passed in: where this suite runs,
    every dependency of pyproject.toml that is installed has the pinned version (regenerate with
    its header's command after a deliberate upgrade)."""
    pins = constraint_pins()
    for requirement in pyproject_requirements():
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment lacks
        assert installed.split("+")[0] == pins[_name(requirement.name)], (
            f"{requirement.name} {installed} is installed, constraints.txt pins "
            f"{pins[_name(requirement.name)]}: install with -c constraints.txt or regenerate it"
        )


def test_the_build_tool_stays_out_of_the_image(docker, image):
    """hatchling builds the wheel in a stage of its own; the image installs the wheel and never
    installs hatchling (nor builds without isolation, which would need it)."""
    build = stages(docker)[:-1]
    assert build and any("hatchling" in a for kind, a in build[0] if kind == "RUN")
    assert any(re.search(r"pip wheel .*-w /wheels \.$", a) for kind, a in build[0] if kind == "RUN")
    runs = " && ".join(a for kind, a in image if kind == "RUN")
    assert "hatchling" not in runs and "--no-build-isolation" not in runs
    assert any(kind == "COPY" and a.startswith("--from=build /wheels") for kind, a in image)


def test_labels_name_the_commit(image):
    """OCI labels: the commit the image was built from (BNREPRO_GIT_SHA, declared in the image's
    own stage, after the dependencies so a new commit does not reinstall them)."""
    labels = " ".join(a for kind, a in image if kind == "LABEL")
    assert 'org.opencontainers.image.revision="${BNREPRO_GIT_SHA}"' in labels
    assert 'org.opencontainers.image.title="bnrepro"' in labels
    kinds = [kind for kind, _ in image]
    sha_arg = next(
        i for i, (kind, a) in enumerate(image) if kind == "ARG" and "BNREPRO_GIT_SHA" in a
    )
    deps = next(
        i for i, (kind, a) in enumerate(image) if kind == "RUN" and "-r /tmp/requirements" in a
    )
    assert deps < sha_arg < kinds.index("LABEL")


def test_home_and_caches_are_writable_for_any_user(image):
    """`docker run --user <any uid>` has no passwd entry, so HOME would be /: HOME is set to a
    folder every uid may write (mode 1777), and the caches the code writes (the synthetic data's
    BNREPRO_CACHE, W&B's settings and cache, torch's, XDG's) lie inside it."""
    env = {}
    for kind, a in image:
        if kind == "ENV":
            env.update(dict(pair.split("=", 1) for pair in a.split()))
    home = env["HOME"]
    runs = " && ".join(a for kind, a in image if kind == "RUN")
    assert re.search(rf"chmod 1777 {re.escape(home)}( |$)", runs), runs
    for key in ("BNREPRO_CACHE", "XDG_CACHE_HOME", "WANDB_CONFIG_DIR", "TORCH_HOME"):
        assert env[key].startswith(home + "/"), (key, env[key])
    synthetic = (ROOT / "configs/data/synthetic.yaml").read_text()
    assert "${oc.env:BNREPRO_CACHE," in synthetic  # the default data's cache follows it
    assert re.search(r"chmod 1777 /workspace /workspace/outputs", runs)


def constraint_pins() -> dict[str, str]:
    """constraints.txt as {normalised name: pinned version}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def pyproject_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's, for this platform (its markers)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [
        d for ds in project["optional-dependencies"].values() for d in ds
    ]
    requirements = [Requirement(t) for t in texts]
    return [
        r for r in requirements if r.name != "bnrepro" and (r.marker is None or r.marker.evaluate())
    ]


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_runs_as_a_user_not_root(docker):
    users = [a for kind, a in docker if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    instructions_after = [kind for kind, _ in docker][[kind for kind, _ in docker].index("USER") :]
    assert "ENTRYPOINT" in instructions_after


def test_installs_the_package_from_what_it_copies(docker):
    copied = {src for kind, a in docker if kind == "COPY" and "--from" not in a
              for src in a.split()[:-1]}  # fmt: skip
    assert {"pyproject.toml", "bnrepro", "configs", "hydra_plugins", "constraints.txt"} <= copied
    assert all((ROOT / src).exists() for src in copied)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not copied & set(ignored)


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
