"""Training runs as data for the report: read from run folders or W&B, grouped by configuration,
summarised per group with intervals over seeds.

    df = load_runs(["outputs/multirun/2026-..."])   # one row per logged line of every run
    curves = val_curves(df)                          # val top-1 per (group, seed, paper_steps)
    table = figure3_table(curves, "inception", diverged_runs(df))

A group is the runs of one experiment whose configs agree in every key that defines a run
(checkpoint.defining_keys: not paths, cadence, logging or the budget), seeds aside. Only a group's
runs are averaged, as seeds: `-m experiment=bn_x30 optim.lr=0.01,0.1` gives two groups, labelled
by what differs ("BN-x30 (optim.lr=0.01)"). Two runs of one group with the same seed are refused:
they are not two seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from bnrepro.checkpoint import RunFolder, defining_keys
from bnrepro.errors import UserError
from bnrepro.figures.tables import display_name
from bnrepro.paper import FIGURE3
from bnrepro.stats import over_seeds, wilson

ORDER = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_sigmoid",
         "inception_x5"]  # fmt: skip
# What a run is called and its seed: never a difference between configurations.
NOT_SETTINGS = ("seed", "run_name", "experiment_name")
CURVE_COLUMNS = ["experiment", "group", "label", "seed", "run", "paper_steps", "val/top1"]


class ReportError(UserError):
    """Run folders, W&B runs or ensemble results that cannot make a report; the message says
    what to give instead."""


# ---- reading -------------------------------------------------------------------------------


def find_runs(paths: list[str | Path]) -> list[RunFolder]:
    """Run folders (those holding their metrics file) at or below each path, each once."""
    runs: dict[Path, RunFolder] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path} does not exist: give a run folder or a multirun folder")
        found = RunFolder.below(path, having="metrics")
        if not found:
            raise ReportError(
                f"no {RunFolder(path).metrics.name} at or below {path}: is it a bnrepro-train "
                "run folder?"
            )
        runs.update((run.path.resolve(), run) for run in found)
    return list(runs.values())


def _run_config(run: RunFolder) -> dict:
    if run.config.is_file():  # written by bnrepro-train when the run starts
        return yaml.safe_load(run.config.read_text()) or {}
    raise ReportError(f"{run.path}: no {run.config.name}: is it a bnrepro-train run folder?")


def _read_metrics(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(path, lines=True, precise_float=True)  # 0.3 stays 0.3
    except ValueError as err:  # pandas' word for a line that is not JSON: the file, not the code
        raise ReportError(f"{path}: not a metrics file written by bnrepro-train ({err})") from err


def load_runs(paths: list[str | Path]) -> pd.DataFrame:
    """One row per logged line of every run, with its run folder, experiment, seed and group."""
    runs = []
    for run in find_runs(paths):
        cfg = _run_config(run)
        runs.append((str(run.path), cfg, _read_metrics(run.metrics)))
    return _with_groups(runs)


def load_wandb(path: str) -> pd.DataFrame:
    """The same frame from W&B: `entity/project` (all runs) or `entity/project/group`."""
    import wandb

    parts = path.split("/")
    project, group = "/".join(parts[:2]), (parts[2] if len(parts) > 2 else None)
    try:
        api = wandb.Api()
        runs = [
            (run.id, {"experiment_name": run.group, **dict(run.config)},
             pd.DataFrame(list(run.scan_history())))
            for run in api.runs(project, filters={"group": group} if group else None)
        ]  # fmt: skip
    # No login (UsageError), no network (CommError, OSError), no such project (ValueError).
    except (wandb.errors.Error, ValueError, OSError) as err:
        raise ReportError(
            f"cannot read W&B project {path!r}: {err} (run `wandb login` first)"
        ) from err
    if not runs:
        raise ReportError(f"W&B project {path!r} has no runs")
    return _with_groups(runs)


# ---- grouping ------------------------------------------------------------------------------


def _settings(cfg: dict) -> dict[str, str]:
    """The keys that define the run, seeds and names aside, each value as canonical JSON."""
    keys = defining_keys(cfg)
    return {k: json.dumps(v, sort_keys=True) for k, v in keys.items() if k not in NOT_SETTINGS}


def value_text(value: object) -> str:
    """A config value as a command line writes it (0.01, true, null, shards)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _with_groups(runs: list[tuple[str, dict, pd.DataFrame]]) -> pd.DataFrame:
    """Concatenate the runs' metrics with their experiment, seed and configuration group.

    Within an experiment, a key whose values differ among the runs that have it names the
    groups ("?" for a run without it); a key some runs lack but all others agree on does not
    (a key that a newer bnrepro added must not split a group, as in checkpoint.config_diff).
    `settings` keeps each run's defining keys (JSON) for the modes that compare groups."""
    by_experiment: dict[str, list] = {}
    for run, cfg, df in runs:
        experiment = cfg.get("experiment_name") or Path(run).name
        by_experiment.setdefault(experiment, []).append((run, cfg, df))
    frames, seen = [], {}
    for experiment, members in by_experiment.items():
        settings = [_settings(cfg) for _, cfg, _ in members]
        keys = set().union(*settings)
        varying = sorted(k for k in keys if len({s[k] for s in settings if k in s}) > 1)
        for (run, cfg, df), s in zip(members, settings, strict=True):
            diff = ", ".join(
                f"{k}={value_text(json.loads(s[k])) if k in s else '?'}" for k in varying
            )
            group = f"{experiment} ({diff})" if diff else experiment
            seed = int(cfg.get("seed", 0))
            if (group, seed) in seen:
                raise ReportError(
                    f"{seen[group, seed]} and {run} are the same configuration of {group} with "
                    f"the same seed {seed}: not two seeds. Give one of them."
                )
            seen[group, seed] = run
            df = df.copy()
            df["run"], df["experiment"], df["seed"], df["group"] = run, experiment, seed, group
            df["label"] = (
                f"{display_name(experiment)} ({diff})" if diff else display_name(experiment)
            )
            df["settings"] = json.dumps({k: json.loads(v) for k, v in s.items()}, sort_keys=True)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def group_settings(df: pd.DataFrame) -> dict[str, dict]:
    """Each group's defining keys and values (those its first run has)."""
    first = df.drop_duplicates("group")
    return {g: json.loads(s) for g, s in zip(first["group"], first["settings"], strict=True)}


def setting(df: pd.DataFrame, key: str) -> pd.Series:
    """One defining key's value for every row (None where a run's config lacks it)."""
    values = {s: json.loads(s).get(key) for s in df["settings"].unique()}
    return df["settings"].map(values)


def chance_levels(df: pd.DataFrame) -> list[float]:
    """Top-1 of a uniform guess for each class count among the runs (data.num_classes)."""
    classes = {int(n) for n in setting(df, "data.num_classes").dropna()}
    return [1 / n for n in sorted(classes)]


def ordered(groups) -> list:
    """The paper's order of experiments (Figure 3's rows), the others by name; an experiment's
    configurations by their values, numbers as numbers (optim.lr=0.0045 before optim.lr=0.015)."""
    rank = {name: i for i, name in enumerate(ORDER)}

    def key(group: str) -> tuple:
        experiment, _, diff = group.partition(" (")
        values = [pair.partition("=")[2] for pair in diff.rstrip(")").split(", ")] if diff else []
        return (rank.get(experiment, len(ORDER)), experiment, [_number_first(v) for v in values])

    return sorted(groups, key=key)


def _number_first(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


# ---- curves and the Figure 3 numbers -------------------------------------------------------


def diverged_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per diverged run: its experiment, group, seed, run and the paper step it stopped at."""
    columns = ["experiment", "group", "label", "seed", "run", "paper_steps"]
    if "diverged" not in df:
        return pd.DataFrame(columns=columns)
    return df[df["diverged"].fillna(False).astype(bool)][columns].drop_duplicates("run")


def val_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Validation top-1 per (group, seed, paper_steps), with the evaluation's image count
    (`val/images`) where the runs logged it."""
    if "val/top1" not in df:
        raise ReportError("no val/top1 in the metrics: did the runs reach their first evaluation?")
    val = df.dropna(subset=["val/top1"])
    columns = CURVE_COLUMNS + (["val/images"] if "val/images" in val else [])
    return val[columns].sort_values("paper_steps")


def steps_to(curve: pd.DataFrame, target: float) -> float | None:
    """First paper_steps at which val/top1 >= target (None if never)."""
    hit = curve[curve["val/top1"] >= target - 1e-12]
    return float(hit["paper_steps"].iloc[0]) if len(hit) else None


def figure3_table(
    curves: pd.DataFrame, reference: str = "inception", diverged: pd.DataFrame | None = None
) -> dict:
    """Figure 3 per group: paper steps to reach `reference`'s best accuracy, and max accuracy.

    steps_to_target and max_top1 are taken from the seed-mean curve (the target is the best of
    `reference`'s seed-mean curve; `reference` is a group), and `curve` is that seed-mean curve
    (Figure 2's, to check what is said about it); per_seed holds each seed's own steps,
    max and final accuracy; *_mean, *_sd, *_low, *_high their mean, standard deviation and 95%
    t interval over seeds (stats.over_seeds). With one seed, final_top1's interval is the Wilson
    interval of its last evaluation where the run logged its image count (final_top1_interval
    says which). The paper's numbers sit beside a group only when it is its experiment's one
    configuration among the runs read (no difference in its name). `diverged` (diverged_runs):
    runs left out of `curves`; a group whose every seed diverged has a row with None for its
    numbers, and every row lists its diverged seeds.
    """
    diverged = diverged_runs(pd.DataFrame()) if diverged is None else diverged
    curves = curves[~curves["run"].isin(set(diverged["run"]))]
    mean = curves.groupby(["group", "paper_steps"], as_index=False)["val/top1"].mean()
    if reference not in set(mean["group"]) and len(mean):  # none: every run diverged
        raise ReportError(f"no {reference!r} run among {sorted(set(mean['group']))}")
    target = float(mean[mean["group"] == reference]["val/top1"].max()) if len(mean) else None
    every = pd.concat(
        [curves[["experiment", "group", "label"]], diverged[["experiment", "group", "label"]]]
    )
    rows = {}
    for group, info in every.drop_duplicates("group").set_index("group").iterrows():
        paper_row = group == info["experiment"]  # which of a sweep's is the paper's? none
        paper_steps, paper_max = FIGURE3.get(info["experiment"], (None, None))
        if not paper_row:
            paper_steps = paper_max = None
        row = {"experiment": info["experiment"], "name": info["label"], "paper_row": paper_row,
               "paper_steps_to_72.2": paper_steps, "paper_max_top1": paper_max}  # fmt: skip
        runs = curves[curves["group"] == group]
        if len(runs):
            row |= _seed_summary(runs, mean[mean["group"] == group], target)
        else:  # every seed diverged: no accuracy to show, as the paper
            row |= {"steps_to_target": None, "max_top1": None, "seeds": 0, "per_seed": {}}
        gone = diverged[diverged["group"] == group]
        if len(gone):
            row["diverged_seeds"] = {int(seed): float(step) for seed, step
                                     in zip(gone["seed"], gone["paper_steps"], strict=True)}  # fmt: skip
        rows[group] = row
    return {"target_top1": target, "reference": reference,
            "rows": {g: rows[g] for g in ordered(rows)}}  # fmt: skip


def _seed_summary(runs: pd.DataFrame, mean_curve: pd.DataFrame, target: float) -> dict:
    per_seed = {}
    for seed, c in runs.groupby("seed"):
        per_seed[int(seed)] = {
            "steps_to_target": steps_to(c, target),
            "max_top1": float(c["val/top1"].max()),
            "final_top1": float(c["val/top1"].iloc[-1]),  # curves are sorted by paper_steps
            "final_paper_steps": float(c["paper_steps"].iloc[-1]),
        }
        if "val/images" in c and pd.notna(c["val/images"].iloc[-1]):
            per_seed[int(seed)]["final_val_images"] = int(c["val/images"].iloc[-1])
    row = {
        "steps_to_target": steps_to(mean_curve, target),
        "max_top1": float(mean_curve["val/top1"].max()),
        # Figure 2's curve, so that what a README says about it can be checked against numbers.
        "curve": {
            "paper_steps": mean_curve["paper_steps"].astype(float).tolist(),
            "mean_top1": mean_curve["val/top1"].astype(float).tolist(),
        },  # fmt: skip
        "seeds": len(per_seed),
        **spread([s["max_top1"] for s in per_seed.values()], "max_top1"),
        **spread([s["final_top1"] for s in per_seed.values()], "final_top1"),
    }
    row["final_top1_interval"] = "t over seeds" if len(per_seed) > 1 else None
    only = next(iter(per_seed.values()))
    if len(per_seed) == 1 and "final_val_images" in only:  # one seed: the evaluation's own
        n = only["final_val_images"]
        row["final_top1_low"], row["final_top1_high"] = wilson(round(only["final_top1"] * n), n)
        row["final_top1_interval"] = f"Wilson, {n} images"
    steps = [s["steps_to_target"] for s in per_seed.values()]
    row["seeds_reaching_target"] = sum(s is not None for s in steps)
    if None not in steps:
        row |= spread(steps, "steps_to_target")
    return row | {"per_seed": per_seed}


def seed_verdict(above: list[float], below: list[float], holds: str, fails: str) -> str:
    """The claim "`above` exceeds `below`", judged seed by seed: "holds: `holds`" where every
    seed of `above` exceeds every seed of `below`, "fails: `fails`" where no seed of `above`
    exceeds every seed of `below`, else "not settled: the seeds overlap"."""
    if min(above) > max(below):
        return f"holds: {holds}"
    if max(above) <= min(below):
        return f"fails: {fails}"
    return "not settled: the seeds overlap"


def spread(values: list[float], key: str) -> dict:
    """`key`_mean, _sd, _low, _high: the mean over seeds, its sd and 95% t interval."""
    s = over_seeds(values)
    low, high = (s.low, s.high) if s.n > 1 else (None, None)  # one seed has no spread to show
    return {f"{key}_mean": s.mean, f"{key}_sd": s.sd, f"{key}_low": low, f"{key}_high": high}


def resolve_reference(name: str, groups: list[str]) -> str:
    """The group `name` names: a group, or an experiment with one group here."""
    if name in groups:
        return name
    of_experiment = [g for g in groups if g.startswith(f"{name} (")]
    if len(of_experiment) == 1:
        return of_experiment[0]
    if of_experiment:
        raise ReportError(
            f"--reference {name} has {len(of_experiment)} configurations here: name one of "
            + "; ".join(repr(g) for g in of_experiment)
        )
    raise ReportError(f"no {name!r} run among {ordered(groups)}: give --reference GROUP")
