"""The config's types (bnrepro/schema.py): every key of every composition is typed, every
composition passes, and a wrong type is refused naming the key."""

import pytest
from test_config_layout import BEFORE

from bnrepro.config import compose
from bnrepro.errors import ConfigError
from bnrepro.schema import EnsembleSchema, TrainSchema, check_types, unchecked_keys

COMPOSITIONS = [[]] + [case["overrides"] for case in BEFORE["cases"].values()]
EXTRA = [["logger=wandb"], ["hydra/launcher=slurm"], ["experiment=bn_x30_ensemble", "member=3"]]


@pytest.mark.parametrize("overrides", COMPOSITIONS + EXTRA, ids=str)
def test_every_composition_is_typed_and_passes(overrides):
    cfg = compose("train", overrides)
    assert ("cluster" in cfg) == (overrides == ["hydra/launcher=slurm"])  # SLURM's keys
    assert unchecked_keys(cfg, TrainSchema) == []  # a new key: add it to bnrepro/schema.py
    check_types(cfg, TrainSchema)


def test_the_ensemble_config_is_typed():
    cfg = compose("ensemble", ["checkpoints=[a.pt,b.pt]"])
    assert unchecked_keys(cfg, EnsembleSchema) == []
    check_types(cfg, EnsembleSchema)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=fast", "optim.lr"),
        ("trainer.grad_accum=2.5", "trainer.grad_accum"),
        ("model.batch_norm=1", "model.batch_norm"),
        ("data.batch_size=[32]", "data.batch_size"),
        ("trainer.max_images=many", "trainer.max_images"),
        ("logger.wandb.tags=paper", "logger.wandb.tags"),
        ("data.augment.flip=yes", "data.augment.flip"),
    ],
)
def test_a_wrong_type_names_its_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}=.* but {key} takes "):
        check_types(compose("train", [override]), TrainSchema)


def test_numbers_that_are_fine():
    """An int where a float goes (optim.lr=1), 1e6 images, null where null is allowed."""
    cfg = compose("train", ["optim.lr=1", "trainer.max_images=1e6", "trainer.resume=null"])
    check_types(cfg, TrainSchema)
