"""Data: ImageNet as researchers keep it, the synthetic stand-in and MNIST, as uint8 batches.

layouts     where the files are (three ImageNet layouts) -> Split
transforms  decoding and the paper's augmentation (docs/paper.md section 3)
datasets    ImageFiles / ArrayImages / WholeImages, skipping unreadable files; build_datasets;
            TrainBatch (a training batch: images, labels, colour parameters)
sampler     the training order (shards, within_shard or full), per rank, resumable
encoded     what the device decoders share: workers that read bytes and draw crops, the batch
gpu_decode  data.decode=gpu: batched JPEG decoding and augmentation on the GPU
dali        data.decode=dali: NVIDIA DALI decodes the crops our code chose (the `dali` extra)
loaders     build_train_loader / build_val_loader / whole_image_loader (the data.decode switch)
synthetic   the synthetic ImageNet-shaped JPEG tree (bnrepro-synthetic)
mnist       real MNIST digits offline
"""

from bnrepro.data.datasets import (
    ArrayImages,
    DataIdentity,
    ImageFiles,
    TrainBatch,
    WholeImages,
    build_datasets,
    data_changes,
    identify,
    identity_of,
    skipped_files,
)
from bnrepro.data.gpu_decode import DeviceDecodeLoader
from bnrepro.data.layouts import Split, find_imagenet
from bnrepro.data.loaders import build_train_loader, build_val_loader, whole_image_loader
from bnrepro.data.sampler import EpochSampler, training_sampler

__all__ = [
    "ArrayImages",
    "DataIdentity",
    "DeviceDecodeLoader",
    "EpochSampler",
    "ImageFiles",
    "Split",
    "TrainBatch",
    "WholeImages",
    "build_datasets",
    "build_train_loader",
    "build_val_loader",
    "data_changes",
    "find_imagenet",
    "identify",
    "identity_of",
    "skipped_files",
    "training_sampler",
    "whole_image_loader",
]
