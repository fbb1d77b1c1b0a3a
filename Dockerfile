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
# makes the files yours (without it the image's own user, uid 1000, writes them).
# BNREPRO_GIT_SHA: the build context has no .git, so the commit that checkpoints record comes
# from here (bnrepro/provenance.py); leave it out and they record none.
#
# The base: the official PyTorch runtime image of the torch the tests run (2.14, CUDA 13.0 as the
# cu130 wheels). The tag follows pytorch/pytorch's <torch>-cuda<X.Y>-cudnn9-runtime pattern but
# was NOT checked against Docker Hub from here (no registry access): if it is missing, pick the
# nearest published 2.14.x tag with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

WORKDIR /opt/bnrepro
# Dependencies first, in their own layer: editing the code does not reinstall them. The image's
# CUDA build of torch satisfies pyproject's torch>=2.4, so pip keeps it.
COPY pyproject.toml README.md hatch_build.py ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt hatchling \
 && rm /tmp/requirements.txt
# Then the code (the YAML and the package only; .dockerignore keeps the rest out).
COPY configs ./configs
COPY bnrepro ./bnrepro
ARG BNREPRO_GIT_SHA=
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && bnrepro-train --help > /dev/null

# Run as a user, not root; /workspace (the run folders' parent) is theirs.
RUN useradd --create-home --uid 1000 bnrepro && mkdir -p /workspace/outputs \
 && chown -R bnrepro /workspace
USER bnrepro
WORKDIR /workspace
ENTRYPOINT ["bnrepro-train"]
