"""Every markdown table and number format of the results: Figure 3, Figure 4, results.md.

A leaf module (the standard library, bnrepro.paper and bnrepro.stats only), so that
bnrepro-report, bnrepro-plan and bnrepro-ensemble write the same numbers the same way without
pulling torch, timm or Hydra into a plotting command.

    percent(0.252)          -> "25.2%"     ours: one decimal
    with_interval(0.252, 500) -> "25.2% (21.6-29.2)"  ours with its 95% Wilson interval
    paper_percent(0.2199)   -> "21.99%"    the paper's: as it prints them
    paper_steps_text(31e6)  -> "31.0e6"    paper steps as the paper writes them
"""

from __future__ import annotations

from bnrepro.paper import FIGURE4, NAMES, PAPER_DIVERGED
from bnrepro.stats import fraction_interval

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


def with_interval(fraction: float, n: int | None) -> str:
    """A fraction of n images (an accuracy or an error) with its 95% Wilson interval, in
    percent: "25.2% (21.6-29.2)"; a file that does not say n gets no made-up interval."""
    if not n:
        return f"{percent(fraction)} (interval unknown: no image count)"
    low, high = fraction_interval(fraction, n)
    return f"{percent(fraction)} ({100 * low:.1f}-{100 * high:.1f})"


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
    """The Figure 4 table: our errors (results.json rows) with their 95% Wilson intervals, the
    paper's beside them only for ImageNet rows (docs/paper.md section 4; same crops and models),
    and each member's section 4.2.3 changes."""
    imagenet = any(row.get("data") == "imagenet" for row in rows)
    paper_head = " paper top-1 | paper top-5 |" if imagenet else ""
    lines = [
        "| model | BN statistics | resolution | crops | models | top-1 error (95% CI) "
        f"| top-5 error (95% CI) |{paper_head} changes |",
        "|---" * (7 + 2 * imagenet + 1) + "|",
    ]
    for row in rows:
        paper = FIGURE4.get((row["crops"], row["models"]), (None, None))
        if row.get("data") != "imagenet":
            paper = (None, None)  # the paper's numbers are ImageNet's: nothing to compare with
        paper_cells = (
            f" {paper_percent(paper[0])} | {paper_percent(paper[1])} |" if imagenet else ""
        )
        lines.append(
            f"| {row['model']} | {row.get('bn_stats', '-')} | {row['resolution']} | {row['crops']} "
            f"| {row['models']} | {with_interval(row['top1_error'], row.get('images'))} "
            f"| {with_interval(row['top5_error'], row.get('images'))} |{paper_cells} "
            f"{row.get('changes', '-')} |"
        )
    return "\n".join(lines) + "\n"


VERDICT = {"A": "A better", "B": "B better", "neither": "no significant difference"}


def paired_markdown(comparisons: list[dict]) -> str:
    """The paired tests of results.json's `comparisons`: A against B on the same images,
    McNemar's exact test (bnrepro/stats.py), each at 5%, not corrected for their number."""
    lines = [
        "| A | B | metric | only A right | only B right | p (McNemar, exact) | at 5% |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c['a']} | {c['b']} | {c['metric']} | {c['a_only']} | {c['b_only']} "
            f"| {c['p_value']:.3g} | {VERDICT[c['better']]} |"
        )
    return "\n".join(lines) + "\n"


def ensemble_markdown(results: dict) -> str:
    """bnrepro-ensemble's results.md from its results.json dict: the Figure 4 table, the
    selection note where members were picked on the val set, the paired tests, the members and
    the provenance."""
    data = results.get("data") or results["config"]["data"]["name"]  # older files: the config's
    imagenet = data == "imagenet"
    paper_words = (
        "the paper's are its Figure 4 (ImageNet, 50,000 images); rows without a paper number have "
        "no counterpart there."
        if imagenet
        else f"the paper's Figure 4 (ImageNet) is not shown beside {data} data."
    )
    lines = [
        f"# Ensemble evaluation: {results['crops']} crops, {results['images']} images",
        "",
        "Errors are fractions of the val set shown as %, with their 95% Wilson interval; "
        + paper_words,
        "BN statistics: `moving` = BN's moving averages, `population` = Algorithm 2's (section "
        "3.1), the paper's inference.",
        "",
        figure4_markdown(results["rows"]),
        *(SELECTED_ON_VAL if results["selected_on_val"] else ()),
    ]
    if results.get("comparisons"):
        lines += [
            "Paired tests on the same images (A better / B better only where the test says so):",
            "",
            paired_markdown(results["comparisons"]),
        ]
    lines += [
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
