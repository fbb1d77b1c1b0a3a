"""Every experiment composes and carries docs/paper.md's values (section 3 table, section 4.2.1 list)."""

import subprocess
import sys
from pathlib import Path

import pytest

from bnrepro.config import CONFIG_DIR, compose, effective_lr

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PAPER_LR = {  # section 4.2 / 4.2.2
    "inception": 0.0015,
    "inception_sigmoid": 0.0015,
    "bn_baseline": 0.0015,
    "bn_x5": 0.0075,
    "bn_x30": 0.045,
    "bn_x5_sigmoid": 0.0075,
    "bn_x30_ensemble": 0.045,
    "inception_x5": 0.0075,  # section 4.2.2: Inception at BN-x5's LR, "diverged"
}
INCEPTION_LIKE = {
    "inception",
    "inception_sigmoid",
    "bn_baseline",
    "inception_x5",
}  # no 4.2.1 change


def test_the_eight_experiments_exist():
    assert set(EXPERIMENTS) == set(PAPER_LR)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_values_match_the_paper(name):
    cfg = compose("train", [f"experiment={name}"])
    assert cfg.experiment_name == name
    assert cfg.optim.lr == PAPER_LR[name]
    assert cfg.optim.momentum == 0.9
    assert cfg.model.batch_norm == (name not in {"inception", "inception_sigmoid", "inception_x5"})
    assert cfg.trainer.expect_divergence == (name == "inception_x5")
    assert cfg.model.activation == ("sigmoid" if "sigmoid" in name else "relu")
    if name in INCEPTION_LIKE:  # section 4.2.2: BN-Baseline is Inception plus BN, nothing else
        assert cfg.model.lrn is True and cfg.model.dropout == 0.4
        assert cfg.optim.weight_decay == 2e-4
        assert (cfg.optim.decay_rate, cfg.optim.decay_epochs) == (0.96, 8.0)
        assert cfg.data.shuffle == "shards" and cfg.data.augment.color_strength == 1.0
    else:  # section 4.2.1's changes
        assert cfg.model.lrn is False
        assert cfg.model.dropout == (0.05 if name == "bn_x30_ensemble" else 0.0)
        assert cfg.optim.weight_decay == pytest.approx(2e-4 / 5)
        assert (cfg.optim.decay_rate, cfg.optim.decay_epochs) == (0.94, 2.0)
        # "We enabled within-shard shuffling" (4.2.1): the paper's change, not a full permutation
        assert cfg.data.shuffle == "within_shard" and cfg.data.augment.color_strength < 1.0


def test_ensemble_members_are_six_distinct_subsets_of_the_papers_changes():
    """Section 4.2.3: each member is BN-x30 "modified via some of" larger initial conv weights,
    dropout of 5% or 10%, per-activation BN in the last hidden layers (read as per-activation BN
    in the last two inception modules, not BN on the pooled features: issue 21); `member` picks
    the row."""
    bn_x30 = compose("train", ["experiment=bn_x30"])
    changes = []
    for member in range(6):
        cfg = compose("train", ["experiment=bn_x30_ensemble", f"member={member}"])
        m = cfg.model
        assert m.init_gain in (1.0, 1.5) and m.dropout in (0.0, 0.05, 0.1)
        assert m.per_activation_bn in (0, 2) and m.head_bn is False
        assert (m.init_gain, m.dropout, m.per_activation_bn) != (1.0, 0.0, 0)  # "some of"
        assert dict(cfg.members[member]) == {"init_gain": m.init_gain, "dropout": m.dropout,
                                             "per_activation_bn": m.per_activation_bn,
                                             "head_bn": False}  # fmt: skip
        assert (cfg.seed, cfg.run_name) == (member, f"bn_x30_ensemble_member{member}_seed{member}")
        for key in ("optim", "data", "trainer"):  # otherwise BN-x30
            assert cfg[key] == bn_x30[key]
        changes.append((m.init_gain, m.dropout, m.per_activation_bn))
    assert len(set(changes)) == 6
    assert {d for _, d, _ in changes} == {0.05, 0.1}  # both dropouts are run
    assert {g for g, _, _ in changes} == {1.0, 1.5} and {b for *_, b in changes} == {0, 2}
    assert sum(b > 0 for *_, b in changes) == sum(g > 1 for g, *_ in changes) == 4
    # a member can still be changed by hand, and its seed set apart from its row
    cfg = compose(
        "train", ["experiment=bn_x30_ensemble", "member=3", "seed=7", "model.dropout=0.2"]
    )
    assert (cfg.seed, cfg.run_name) == (7, "bn_x30_ensemble_member3_seed7")
    assert cfg.model.dropout == 0.2


def test_a_member_outside_the_table_is_refused():
    from bnrepro.config import check_run

    with pytest.raises(ValueError, match=r"member=6 is no row .* use 0-5"):
        check_run(compose("train", ["experiment=bn_x30_ensemble", "member=6"]))


def test_the_slurm_array_trains_member_i():
    script = (Path(__file__).resolve().parents[1] / "slurm/ensemble_members.sbatch").read_text()
    assert "#SBATCH --array=0-5" in script
    assert 'experiment=bn_x30_ensemble member="$member"' in script
    assert "member=${SLURM_ARRAY_TASK_ID" in script


def test_bn_baseline_is_inception_plus_bn_only():
    inc = compose("train", ["experiment=inception"])
    bn = compose("train", ["experiment=bn_baseline"])
    inc.model.batch_norm = True
    inc.experiment_name = bn.experiment_name = "x"
    assert inc == bn


def test_public_keys_exist():
    cfg = compose("train")
    for key in ("lr", "momentum", "weight_decay"):
        assert key in cfg.optim
    for key in ("batch_norm", "activation", "lrn", "dropout"):
        assert key in cfg.model


def test_effective_lr_scales_linearly():
    assert effective_lr(0.045, 32, "linear") == pytest.approx(0.045)
    assert effective_lr(0.045, 256, "linear") == pytest.approx(0.36)


def test_imagenet_data_is_paper_scale():
    cfg = compose("train", ["data=imagenet", "data.root=/datasets/imagenet"])
    assert cfg.model.width_mult == 1.0 and cfg.data.train_crop == 224
    assert (cfg.data.eval_resize, cfg.data.eval_crop) == (256, 224)
    assert cfg.data.batch_size == 32 and cfg.data.num_classes == 1000


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bnrepro.train", *args]  # as torchrun starts it
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_cli_prints_composed_config():
    out = _train_cli("experiment=bn_x30", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "experiment_name: bn_x30" in out.stdout and "lr: 0.045" in out.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("experiment=bn_x31", "experiment=bn_x31 is not an option of experiment"),
        ("optim.lrr=0.1", "optim.lrr is not a config key (did you mean optim.lr?)"),
    ],
)
def test_cli_bad_overrides_fail_with_hydras_message(override, message):
    out = _train_cli(override, "--cfg", "job")
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [(["experiment=inception", "model.per_activation_bn=2"], "replaces BN layers"),
     (["model.per_activation_bn=2", "data.eval_crop=56"], "data.train_crop=64 px activations"),
     (["experiment=inception", "trainer.pop_stats_batches=5"], "needs a BN network")],
)  # fmt: skip
def test_per_activation_bn_and_algorithm_2_need_what_they_act_on(overrides, message):
    """Refused at start-up, naming the fix; trainer.pop_stats_batches=auto (the default) is
    accepted on a BN-free network (it means none there)."""
    from bnrepro.config import check_run

    with pytest.raises(ValueError, match=message):
        check_run(compose("train", overrides))
    check_run(compose("train", ["experiment=inception"]))
    check_run(compose("train", ["model.per_activation_bn=2"]))
