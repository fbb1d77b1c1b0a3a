# bnrepro on one machine with NVIDIA GPUs. The image holds the code only: ImageNet, the run
# folders and the W&B key come from mounts and the environment, never from the image.
#
#   docker build --build-arg BNREPRO_GIT_SHA=$(git rev-parse HEAD) -t bnrepro .
#   docker run --gpus all --ipc=host --user "$(id -u):$(id -g)" \
#     -v /data:/data:ro -v "$PWD/outputs":/workspace/outputs -e WANDB_API_KEY \
#     bnrepro experiment=bn_x30 data=imagenet data.root=/data/imagenet logger=wandb
#
# Arguments after the image name are Hydra overrides for bnrepro-train (the default command).
# Several GPUs: --entrypoint torchrun bnrepro --nproc_per_node=8 -m bnrepro.train <overrides>.
# Other commands: --entrypoint bnrepro-ensemble (or bnrepro-report, bnrepro-fig1, ...).
# --ipc=host gives the DataLoader workers enough shared memory. Run folders land in
# /workspace/outputs (out_dir in configs/train.yaml), so mount it to keep checkpoints; --user
# makes the files yours (without it the image's own user, uid 1000, writes them). Whatever the
# uid, HOME is /home/bnrepro, writable by every user: the synthetic data's cache
# (~/.cache/bnrepro), W&B's settings (~/.config/wandb) and any library's cache land there.
# BNREPRO_GIT_SHA: the build context has no .git, so the commit that checkpoints record comes
# from here (bnrepro/provenance.py) and the image's OCI label org.opencontainers.image.revision
# names it; leave it out and they record none.
#
# The base: the official PyTorch runtime image of the torch the tests run (2.14, CUDA 13.0 as the
# cu130 wheels). The tag follows pytorch/pytorch's <torch>-cuda<X.Y>-cudnn9-runtime pattern but
# was NOT checked against Docker Hub from here (no registry access): if it is missing, pick the
# nearest published 2.14.x tag with --build-arg BASE_IMAGE=...
# Dependencies: pyproject.toml's, at the versions the tests passed with (constraints.txt).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# ---- build: the wheel (its build tool, hatchling, stays in this stage) ----
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt hatchling
COPY pyproject.toml README.md hatch_build.py ./
COPY configs ./configs
COPY bnrepro ./bnrepro
COPY hydra_plugins ./hydra_plugins
ARG BNREPRO_GIT_SHA=
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels .

# ---- the image ----
FROM ${BASE_IMAGE}
WORKDIR /opt/bnrepro
# Dependencies first, in their own layer: editing the code does not reinstall them. The image's
# CUDA build of torch satisfies pyproject's torch>=2.4 and the constraint, so pip keeps it.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
# Then the code: the wheel built above, without its build tool.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -r /tmp/wheels \
 && bnrepro-train --help > /dev/null

# After the dependencies: a new commit rebuilds from here only.
ARG BASE_IMAGE
ARG BNREPRO_GIT_SHA=
LABEL org.opencontainers.image.title="bnrepro" \
      org.opencontainers.image.description="Ioffe & Szegedy (2015), Batch Normalization: BN-Inception on ImageNet, reproduced" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${BNREPRO_GIT_SHA}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# Run as a user, not root. Any --user works: HOME and the caches are writable by every uid (the
# sticky bit keeps each user's files their own), and so are the run folders' parent.
RUN useradd --create-home --uid 1000 bnrepro && chmod 1777 /home/bnrepro \
 && mkdir -p /workspace/outputs && chown -R bnrepro /workspace && chmod 1777 /workspace /workspace/outputs
ENV HOME=/home/bnrepro \
    XDG_CACHE_HOME=/home/bnrepro/.cache \
    XDG_CONFIG_HOME=/home/bnrepro/.config \
    BNREPRO_CACHE=/home/bnrepro/.cache/bnrepro \
    WANDB_CONFIG_DIR=/home/bnrepro/.config/wandb \
    WANDB_CACHE_DIR=/home/bnrepro/.cache/wandb \
    TORCH_HOME=/home/bnrepro/.cache/torch \
    MPLCONFIGDIR=/home/bnrepro/.config/matplotlib
USER bnrepro
WORKDIR /workspace
ENTRYPOINT ["bnrepro-train"]
