"""Every markdown table and number format of the results: Figure 3, Figure 4, results.md.

A leaf module (the standard library and bnrepro.paper only), so that bnrepro-report, bnrepro-plan
and bnrepro-ensemble write the same numbers the same way without pulling torch, timm or Hydra
into a plotting command.

    percent(0.252)          -> "25.2%"     ours: one decimal
    paper_percent(0.2199)   -> "21.99%"    the paper's: as it prints them
    paper_steps_text(31e6)  -> "31.0e6"    paper steps as the paper writes them
"""

from __future__ import annotations

from bnrepro.paper import FIGURE4, NAMES, PAPER_DIVERGED

# The note under a Figure 4 table whose members were picked on the val set it reports
# (member_checkpoint=best): one markdown line each, a blank line last.
SELECTED_ON_VAL = (
    "**Members selected on this val set**: best.pt is each run's checkpoint with the best val",
    "top-1 during training, picked on the same images these errors are measured on, so the",
    "errors are optimistic; the paper does not describe such a selection (member_checkpoint=last",
    "evaluates the end of training).",
    "",
)


def percent(x: float | None) -> str:
    """One of our fractions as a percentage with one decimal, "-" for none."""
    return "-" if x is None else f"{100 * x:.1f}%"


def paper_percent(x: float | None) -> str:
    """One of the paper's fractions as the paper prints it (21.99%, 4.9%), "-" for none."""
    return "-" if x is None else f"{100 * x:.4g}%"


def paper_steps_text(steps: float | None) -> str:
    """Paper steps as the paper writes them (31.0e6; a short run's 1234), "never" for none."""
    if steps is None:
        return "never"
    return f"{steps / 1e6:.1f}e6" if steps >= 1e5 else f"{steps:.4g}"


def display_name(experiment: str) -> str:
    """The paper's name of a variant (BN-x5-Sigmoid); an experiment it does not name keeps ours."""
    return NAMES.get(experiment, experiment)


def interval(low: float | None, high: float | None) -> str:
    """A 95% interval of fractions as percentages, "[47.4, 57.4]"; "" for none."""
    return "" if low is None or high is None else f" [{100 * low:.1f}, {100 * high:.1f}]"


def figure3_markdown(table: dict) -> str:
    """The Figure 3 table (bnrepro-report's figure3.md) from figure3_table()'s dict."""
    lines = [
        f"Target: the best val top-1 of `{table['reference']}`'s seed-mean curve = "
        f"{percent(table['target_top1'])} (the paper's target is Inception's 72.2%). Steps and max "
        "of the seed-mean curve; then each seed's max (mean +- standard deviation over seeds) and "
        "final accuracy (mean and its 95% interval: Student t over seeds; with one seed, Wilson "
        "over the val images where known). Each row is one configuration; the paper's numbers "
        "stand beside an experiment only where it has one configuration here.",
        "",
        "| model | seeds | steps to target (ours) | max top-1 (ours) | max top-1 per seed | final top-1 [95% interval] | steps to 72.2% (paper) | max top-1 (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in table["rows"].items():
        name = row.get("name") or display_name(key)  # tables written before groups had names
        experiment = row.get("experiment", key)
        # The paper's BN-x5-Sigmoid never reaches 72.2%: its Figure 3 says so in words.
        paper_steps = (
            "never"
            if experiment == "bn_x5_sigmoid"
            else paper_steps_text(row["paper_steps_to_72.2"])
        )
        if row["paper_max_top1"] is None:
            paper_steps = "-"
        paper_max = paper_percent(row["paper_max_top1"])
        if experiment in PAPER_DIVERGED and row.get("paper_row", True):
            paper_steps = paper_max = "diverged"
        steps, top1 = paper_steps_text(row["steps_to_target"]), percent(row["max_top1"])
        seeds = str(row["seeds"])
        if row.get("diverged_seeds"):
            if not row["seeds"]:  # every seed diverged: no accuracy to show, as the paper
                steps = top1 = "diverged"
            seeds = f"{row['seeds']} (+{len(row['diverged_seeds'])} diverged)"
        final = "-" if "final_top1_mean" not in row else percent(row["final_top1_mean"])
        final += interval(row.get("final_top1_low"), row.get("final_top1_high"))
        lines.append(
            f"| {name} | {seeds} | {steps} | {top1} | {_mean_sd(row, 'max_top1')} "
            f"| {final} | {paper_steps} | {paper_max} |"
        )
    return "\n".join(lines) + "\n"


def _mean_sd(row: dict, key: str) -> str:
    if f"{key}_mean" not in row:  # every seed diverged, or a table from before seed summaries
        return "-"
    return f"{percent(row[f'{key}_mean'])} +- {100 * row[f'{key}_sd']:.1f}"


def figure4_markdown(rows: list[dict]) -> str:
    """The Figure 4 table: our errors (results.json rows) beside the paper's (docs/paper.md
    section 4) where the paper has the same number of crops and models, and each member's
    section 4.2.3 changes."""
    lines = [
        "| model | resolution | crops | models | top-1 error | top-5 error | paper top-1 | paper top-5 | changes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = FIGURE4.get((row["crops"], row["models"]), (None, None))
        lines.append(
            f"| {row['model']} | {row['resolution']} | {row['crops']} | {row['models']} "
            f"| {percent(row['top1_error'])} | {percent(row['top5_error'])} "
            f"| {paper_percent(paper[0])} | {paper_percent(paper[1])} | {row.get('changes', '-')} |"
        )
    return "\n".join(lines) + "\n"


def ensemble_markdown(results: dict) -> str:
    """bnrepro-ensemble's results.md from its results.json dict: the Figure 4 table, the
    selection note where members were picked on the val set, the members and the provenance."""
    lines = [
        f"# Ensemble evaluation: {results['crops']} crops, {results['images']} images",
        "",
        "Errors are fractions of the val set shown as %; the paper's are its Figure 4 (ImageNet,",
        "50,000 images); rows without a paper number have no counterpart there.",
        "",
        figure4_markdown(results["rows"]),
        *(SELECTED_ON_VAL if results["selected_on_val"] else ()),
        "Members:",
        "",
        *(
            f"- {member['name']}: `{member['checkpoint']}` ({member['images_seen']} images)"
            for member in results["members"]
        ),
        "",
        f"git {results['git_sha']}, {results['environment']}, "
        f"{results['images_per_s']:.2f} images/s",
        "",
    ]
    return "\n".join(lines)
