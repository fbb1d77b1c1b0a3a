"""The config's one check (bnrepro/schema.py): every key of every composition is typed, every
composition passes, and a wrong type, a value outside its range or its choices, a NaN and an
unknown key are refused naming the key."""

import pytest
from test_config_layout import BEFORE

from bnrepro.config import compose, compose_checked
from bnrepro.errors import ConfigError
from bnrepro.schema import (
    EnsembleSchema,
    PlanSchema,
    TrainSchema,
    check,
    unchecked_keys,
)

COMPOSITIONS = [[]] + [case["overrides"] for case in BEFORE["cases"].values()]
EXTRA = [["logger=wandb"], ["hydra/launcher=slurm"], ["experiment=bn_x30_ensemble", "member=3"]]


@pytest.mark.parametrize("overrides", COMPOSITIONS + EXTRA, ids=str)
def test_every_composition_is_typed_and_passes(overrides):
    cfg = compose("train", overrides)
    assert ("cluster" in cfg) == (overrides == ["hydra/launcher=slurm"])  # SLURM's keys
    assert unchecked_keys(cfg, TrainSchema) == []  # a new key: add it to bnrepro/schema.py
    check(cfg, TrainSchema)


def test_the_ensemble_and_plan_configs_are_typed():
    cfg = compose("ensemble", ["checkpoints=[a.pt,b.pt]"])
    assert unchecked_keys(cfg, EnsembleSchema) == []
    check(cfg, EnsembleSchema)
    cfg = compose("plan", ["experiment=inception"])
    assert unchecked_keys(cfg, PlanSchema) == []
    check(cfg, PlanSchema)


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
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not valid: {key} takes "):
        check(compose("train", [override]), TrainSchema)


@pytest.mark.parametrize(
    "override, takes",
    [
        ("runtime.amp=fp17", "one of auto, none, bf16, fp16"),
        ("runtime.device=tpu", "one of auto, cpu, cuda"),
        ("data.decode=nvjpeg", "one of cpu, gpu, dali"),
        ("data.shuffle=some", "one of shards, within_shard, full"),
        ("model.activation=tanh", "one of relu, sigmoid"),
        ("logger.wandb.mode=maybe", "one of online, offline, disabled"),
        ("runtime.channels_last=yes", "one of auto or true or false"),
        ("optim.warmup_images=soon", "one of auto or an integer >= 0"),
    ],
)
def test_a_fixed_choice_key_takes_its_choices_only(override, takes):
    """Checked once, here: the code that reads these keys only dispatches on them."""
    with pytest.raises(ConfigError, match=f"takes {takes}"):
        check(compose("train", [override]), TrainSchema)


@pytest.mark.parametrize(
    "override, takes",
    [
        ("data.batch_size=0", "an integer >= 1"),
        ("data.num_workers=-1", "an integer >= 0"),
        ("optim.lr=-0.1", "a number > 0"),
        ("optim.lr=nan", "a number > 0"),  # NaN is invalid input, not a divergence (exit 3)
        ("optim.lr=inf", "a number > 0"),
        ("optim.momentum=1.0", "a number >= 0 and < 1"),
        ("model.dropout=1", "a number >= 0 and < 1"),
        ("trainer.eval_max_images=-5", "a whole number >= 1 or null"),  # evaluated one batch
        ("trainer.max_images=1.5", "a whole number >= 1"),
        ("trainer.keep_last=0", "an integer >= 1"),
        ("seed=-1", "an integer >= 0"),
        ("data.augment.color_strength=3", "a number >= 0 and <= 2"),
        ("trainer.target_top1=72.2", "a number >= 0 and <= 1"),  # a percentage, not a fraction
        ("runtime.dist_timeout_s=0", "a number > 0"),
    ],
)
def test_a_value_outside_its_range_names_the_range(override, takes):
    with pytest.raises(ConfigError, match=rf"takes {takes}"):
        check(compose("train", [override]), TrainSchema)


def test_numbers_that_are_fine():
    """An int where a float goes (optim.lr=1), 1e6 images, null where null is allowed."""
    cfg = compose("train", ["optim.lr=1", "trainer.max_images=1e6", "trainer.resume=null"])
    check(cfg, TrainSchema)


def test_an_unknown_key_is_refused_even_with_plus():
    """Hydra's fix for a typo, `+optim.lrr=0.1`, trained with the key silently ignored."""
    with pytest.raises(
        ConfigError, match=r"^optim.lrr is not a config key \(did you mean optim.lr"
    ):
        check(compose("train", ["+optim.lrr=0.1"]), TrainSchema)
    with pytest.raises(ConfigError, match=r"^trainer.foo is not a config key"):
        check(compose("train", ["+trainer.foo=1"]), TrainSchema)


def test_load_composes_and_checks_and_turns_hydras_refusals_into_config_errors():
    assert compose_checked("train", ["experiment=bn_x5"]).experiment_name == "bn_x5"
    with pytest.raises(ConfigError, match="data.batch_size=0 is not valid"):
        compose_checked("train", ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^optim.lrr is not a config key \(did you mean"):
        compose_checked("train", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="^experiment=nope is not an option of experiment: the "):
        compose_checked("train", ["experiment=nope"])  # nothing close: the options alone
    with pytest.raises(ConfigError, match=r"\(did you mean debug=tiny\?\): the options are tiny"):
        compose_checked("train", ["debug=tyni"])


def test_did_you_mean_covers_config_groups():
    """Issue 24: a misspelled group name is close to the group, not to a key."""
    with pytest.raises(
        ConfigError, match=r"^expriment is not a config key \(did you mean experiment\?"
    ):
        compose_checked("train", ["expriment=bn_x30"])
