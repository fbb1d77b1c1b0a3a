# bnrepro on one machine with NVIDIA GPUs. The image holds the code only: ImageNet, the run
# folders and the W&B key come from mounts and the environment, never from the image.
#
#   docker build -t bnrepro .
#   docker run --gpus all --ipc=host \
#     -v /data:/data:ro -v "$PWD/outputs":/workspace/outputs -e WANDB_API_KEY \
#     bnrepro experiment=bn_x30 data=imagenet data.root=/data/imagenet logger=wandb
#
# Arguments after the image name are Hydra overrides for bnrepro-train (the default command).
# Several GPUs: --entrypoint torchrun bnrepro --nproc_per_node=8 -m bnrepro.train <overrides>.
# Other commands: --entrypoint bnrepro-ensemble (or bnrepro-report, bnrepro-fig1, ...).
# --ipc=host gives the DataLoader workers enough shared memory. Run folders land in
# /workspace/outputs (out_dir in configs/train.yaml), so mount it to keep checkpoints.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

WORKDIR /opt/bnrepro
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY bnrepro ./bnrepro
# The image's CUDA build of torch satisfies pyproject's torch>=2.4, so pip keeps it.
RUN pip install --no-cache-dir . && bnrepro-train --help > /dev/null

WORKDIR /workspace
ENTRYPOINT ["bnrepro-train"]
