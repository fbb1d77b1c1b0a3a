"""bnrepro-dashboard: the panel spec from the experiment configs, offline; push needs a login."""

import json

import pytest
from wandb_workspaces import expr

from bnrepro.config import compose
from bnrepro.errors import EXIT_USER_ERROR, UserError
from bnrepro.figures.dashboard import (
    NoLoginError,
    build_spec,
    build_wandb_report,
    experiment_names,
    main,
)

FIVE = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid"]


@pytest.fixture(scope="module")
def spec():
    return build_spec()


def test_every_experiment_is_a_group_named_by_its_experiment_name(spec):
    names = experiment_names()
    assert set(FIVE) <= set(names)
    assert spec["groups"] == [compose(overrides=[f"experiment={n}"]).experiment_name for n in names]
    assert spec["project"] == compose(overrides=["logger=wandb"]).logger.wandb.project


def test_panels_plot_val_top1_and_train_loss_vs_paper_steps_mean_and_spread(spec):
    assert [p["y"] for p in spec["panels"]] == ["val/top1", "train/loss"]
    for panel in spec["panels"]:
        assert panel["x"] == "paper_steps"
        assert (panel["groupby"], panel["aggregate"], panel["spread"]) == (
            "group",
            "mean",
            "stddev",
        )


def test_a_subset_and_overrides(spec):
    sub = build_spec(["bn_x30", "inception"], entity="me", project="other")
    assert sub["groups"] == ["bn_x30", "inception"]
    assert (sub["entity"], sub["project"]) == ("me", "other")
    with pytest.raises(ValueError, match="unknown experiment.*choose from"):
        build_spec(["bn_x1000"])


def test_report_object_follows_the_spec_offline(spec):
    report = build_wandb_report(dict(spec, entity="me"))
    grid = report.blocks[-1]
    (runset,) = grid.runsets
    assert runset.groupby == ["group"] and runset.project == spec["project"]
    runs = expr.expr_to_filters(runset.filters)  # the filter W&B applies: run.group IN groups
    assert (runs.key.section, runs.key.name, runs.op) == ("run", "group", "IN")
    assert runs.value == spec["groups"]
    assert [(p.x, p.y) for p in grid.panels] == [
        ("paper_steps", ["val/top1"]),
        ("paper_steps", ["train/loss"]),
    ]
    assert {(p.groupby_aggfunc, p.groupby_rangefunc) for p in grid.panels} == {("mean", "stddev")}


def test_dry_run_prints_the_spec(capsys):
    main(["--dry-run", "--experiments", "bn_x5,bn_x30"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["groups"] == ["bn_x5", "bn_x30"]


def test_push_without_login_fails_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    with pytest.raises(NoLoginError, match="needs a W&B login.*wandb login.*WANDB_API_KEY"):
        main(["--experiments", "bn_x5"])


@pytest.fixture
def no_login(monkeypatch):
    """wandb.Api as it is without a login: a UsageError."""
    import wandb
    from wandb.errors import UsageError

    def api():
        raise UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "Api", api)


def test_push_without_login_is_a_user_error_naming_the_offline_ways(no_login):
    with pytest.raises(UserError) as error:
        main(["--experiments", "bn_x5"])
    message = str(error.value)
    assert "wandb login" in message and "--dry-run" in message and "bnrepro-report" in message


def test_the_command_without_login_exits_2_in_one_line(no_login, capsys):
    """A user error (2), not a bug (1): what a SystemExit with a message would give."""
    from bnrepro import cli  # here: the command layer, not the module under test

    with pytest.raises(SystemExit) as stop:
        cli.bnrepro_dashboard(["--experiments", "bn_x5"])
    assert stop.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("bnrepro-dashboard: error: bnrepro-dashboard needs a W&B login")
    assert len(err.strip().splitlines()) == 1
