"""bnrepro.figures.tables: every markdown table and number format of the results, as literal text
(results/ and the README quote these files), and a module light enough for any command."""

import subprocess
import sys

import pytest

from bnrepro.figures.tables import (
    SELECTED_ON_VAL,
    ensemble_markdown,
    figure3_markdown,
    figure4_markdown,
    paper_percent,
    paper_steps_text,
    percent,
    with_interval,
)


@pytest.mark.parametrize(
    "fraction, ours, papers",
    [
        (0.2523, "25.2%", "25.23%"),
        (0.2199, "22.0%", "21.99%"),
        (0.049, "4.9%", "4.9%"),
        (0.0, "0.0%", "0%"),
        (1.0, "100.0%", "100%"),
        (None, "-", "-"),
    ],
)
def test_percentages_ours_with_one_decimal_the_papers_as_printed(fraction, ours, papers):
    assert (percent(fraction), paper_percent(fraction)) == (ours, papers)


@pytest.mark.parametrize(
    "steps, text",
    [(31.0e6, "31.0e6"), (2.1e6, "2.1e6"), (1e5, "0.1e6"), (1234.0, "1234"), (12.5, "12.5"),
     (3, "3"), (None, "never")],
)  # fmt: skip
def test_paper_steps_as_the_paper_writes_them(steps, text):
    assert paper_steps_text(steps) == text


FIGURE3_TABLE = {
    "target_top1": 0.5,
    "reference": "inception",
    "rows": {
        "inception": {"steps_to_target": 1234.0, "max_top1": 0.5, "paper_steps_to_72.2": 31.0e6,
                      "paper_max_top1": 0.722, "seeds": 2, "max_top1_mean": 0.45,
                      "max_top1_sd": 0.0707, "final_top1_mean": 0.4, "final_top1_sd": 0.05,
                      "final_top1_low": -0.049, "final_top1_high": 0.849},
        "bn_x30 (optim.lr=0.1)": {"experiment": "bn_x30", "name": "BN-x30 (optim.lr=0.1)",
                                  "paper_row": False, "steps_to_target": 1000.0, "max_top1": 0.5,
                                  "paper_steps_to_72.2": None, "paper_max_top1": None,
                                  "seeds": 1, "max_top1_mean": 0.5, "max_top1_sd": 0.0,
                                  "final_top1_mean": 0.5, "final_top1_sd": 0.0,
                                  "final_top1_low": 0.456, "final_top1_high": 0.544},
        "bn_x30": {"steps_to_target": 250000.0, "max_top1": 0.6, "paper_steps_to_72.2": 2.7e6,
                   "paper_max_top1": 0.748, "seeds": 1, "max_top1_mean": 0.6, "max_top1_sd": 0.0,
                   "final_top1_mean": 0.55, "final_top1_sd": 0.0, "diverged_seeds": {1: 2.0}},
        "bn_x5_sigmoid": {"steps_to_target": None, "max_top1": 0.3, "paper_steps_to_72.2": None,
                          "paper_max_top1": 0.698, "seeds": 1, "max_top1_mean": 0.3,
                          "max_top1_sd": 0.0, "final_top1_mean": 0.3, "final_top1_sd": 0.0},
        "inception_sigmoid": {"steps_to_target": None, "max_top1": 0.2,
                              "paper_steps_to_72.2": None, "paper_max_top1": None, "seeds": 1},
        "inception_x5": {"steps_to_target": None, "max_top1": None, "paper_steps_to_72.2": None,
                         "paper_max_top1": None, "seeds": 0, "diverged_seeds": {0: 3.0}},
    },
}  # fmt: skip

FIGURE3_MD = """\
Target: the best val top-1 of `inception`'s seed-mean curve = 50.0% (the paper's target is \
Inception's 72.2%). Steps and max of the seed-mean curve; then each seed's max (mean +- standard \
deviation over seeds) and final accuracy (mean and its 95% interval: Student t over seeds; with \
one seed, Wilson over the val images where known). Each row is one configuration; the paper's \
numbers stand beside an experiment only where it has one configuration here.

| model | seeds | steps to target (ours) | max top-1 (ours) | max top-1 per seed | final top-1 [95% interval] | steps to 72.2% (paper) | max top-1 (paper) |
|---|---|---|---|---|---|---|---|
| Inception | 2 | 1234 | 50.0% | 45.0% +- 7.1 | 40.0% [-4.9, 84.9] | 31.0e6 | 72.2% |
| BN-x30 (optim.lr=0.1) | 1 | 1000 | 50.0% | 50.0% +- 0.0 | 50.0% [45.6, 54.4] | - | - |
| BN-x30 | 1 (+1 diverged) | 0.2e6 | 60.0% | 60.0% +- 0.0 | 55.0% | 2.7e6 | 74.8% |
| BN-x5-Sigmoid | 1 | never | 30.0% | 30.0% +- 0.0 | 30.0% | never | 69.8% |
| Inception-Sigmoid | 1 | never | 20.0% | - | - | - | - |
| Inception-x5 | 0 (+1 diverged) | diverged | diverged | - | - | diverged | diverged |
"""


def test_figure3_markdown():
    """Ours beside the paper's, by the paper's names; "never" where a curve never reaches the
    target (and for the paper's BN-x5-Sigmoid), "diverged" where every seed diverged (and for
    the paper's Inception at BN-x5's LR), "-" where the paper has no such model, or no number
    for one of an experiment's several configurations, or seeds no spread; intervals where the
    table has them."""
    assert figure3_markdown(FIGURE3_TABLE) == FIGURE3_MD


ROWS = [
    {"model": "member 0", "data": "imagenet", "resolution": 224, "crops": 1, "models": 1,
     "top1_error": 0.2523, "top5_error": 0.0781, "images": 50_000, "bn_stats": "population",
     "changes": "none"},
    {"model": "ensemble", "data": "imagenet", "resolution": 224, "crops": 144, "models": 6,
     "top1_error": 0.2, "top5_error": 0.05, "images": 50_000, "bn_stats": "population"},
]  # fmt: skip

FIGURE4_MD = """\
| model | BN statistics | resolution | crops | models | top-1 error (95% CI) | top-5 error (95% CI) | paper top-1 | paper top-5 | changes |
|---|---|---|---|---|---|---|---|---|---|
| member 0 | population | 224 | 1 | 1 | 25.2% (24.9-25.6) | 7.8% (7.6-8.0) | 25.2% | 7.82% | none |
| ensemble | population | 224 | 144 | 6 | 20.0% (19.7-20.4) | 5.0% (4.8-5.2) | 20.1% | 4.9% | - |
"""


def test_figure4_markdown_beside_the_papers_numbers():
    assert figure4_markdown(ROWS) == FIGURE4_MD


def test_figure4_markdown_shows_the_papers_numbers_only_beside_imagenet():
    """Issue 21: the paper's ImageNet errors were printed beside 10-class synthetic rows."""
    synthetic = [dict(r, data="synthetic", images=500) for r in ROWS]
    md = figure4_markdown(synthetic)
    assert "paper" not in md and "25.2% (21.6-29.2)" in md


COMPARISONS = [
    {"a": "ensemble", "b": "member 0", "metric": "top1", "a_only": 31, "b_only": 12,
     "p_value": 0.0046, "better": "A"},
    {"a": "ensemble", "b": "member 0", "metric": "top5", "a_only": 3, "b_only": 5,
     "p_value": 0.727, "better": "neither"},
]  # fmt: skip


def test_ensemble_results_md():
    results = {"crops": 144, "images": 1000, "rows": ROWS, "selected_on_val": False, "data": "imagenet",
               "members": [{"name": "m0", "checkpoint": "runs/a/last.pt", "images_seen": 4000}],
               "comparisons": COMPARISONS, "git_sha": "abc123", "environment": "torch 2.5 cpu",
               "images_per_s": 12.345}  # fmt: skip
    head = (
        "# Ensemble evaluation: 144 crops, 1000 images\n\n"
        "Errors are fractions of the val set shown as %, with their 95% Wilson interval; the "
        "paper's are its Figure 4 (ImageNet, 50,000 images); rows without a paper number have no "
        "counterpart there.\n"
        "BN statistics: `moving` = BN's moving averages, `population` = Algorithm 2's (section "
        "3.1), the paper's inference.\n\n"
        f"{FIGURE4_MD}\n"
    )
    paired = (
        "Paired tests on the same images (A better / B better only where the test says so):\n\n"
        "| A | B | metric | only A right | only B right | p (McNemar, exact) | at 5% |\n"
        "|---|---|---|---|---|---|---|\n"
        "| ensemble | member 0 | top1 | 31 | 12 | 0.0046 | A better |\n"
        "| ensemble | member 0 | top5 | 3 | 5 | 0.727 | no significant difference |\n\n"
    )
    tail = (
        "Members:\n\n- m0: `runs/a/last.pt` (4000 images)\n\n"
        "git abc123, torch 2.5 cpu, 12.35 images/s\n"
    )
    assert ensemble_markdown(results) == head + paired + tail
    note = (
        "**Members selected on this val set**: best.pt is each run's checkpoint with the best val\n"
        "top-1 during training, picked on the same images these errors are measured on, so the\n"
        "errors are optimistic; the paper does not describe such a selection (member_checkpoint=last\n"
        "evaluates the end of training).\n\n"
    )
    assert ensemble_markdown(dict(results, selected_on_val=True)) == head + note + paired + tail
    assert "\n".join(SELECTED_ON_VAL) + "\n" == note


def test_every_accuracy_these_tables_print_has_its_interval():
    """Issue 21: each of our errors in the Figure 4 and ensemble tables comes with its 95%
    interval (the paper's own numbers, printed as the paper prints them, aside)."""
    import re

    rows = ROWS + [dict(r, data="synthetic", images=500, model=f"{r['model']} (synthetic)")
                   for r in ROWS]  # fmt: skip
    results = {"crops": 144, "images": 500, "rows": rows, "selected_on_val": False,
               "data": "imagenet", "members": [], "comparisons": COMPARISONS, "git_sha": "x",
               "environment": "y", "images_per_s": 1.0}  # fmt: skip
    for md in (figure4_markdown(rows), ensemble_markdown(results)):
        for line in md.splitlines():
            cells = line.strip("|").split("|")
            if len(cells) < 8 or cells[0].strip() not in {r["model"] for r in rows}:
                continue  # not a Figure 4 row: a header, a paired test (no accuracies)
            ours = cells[5:7]  # the two error columns; the paper's follow
            assert all(re.fullmatch(r" \d+\.\d% \(\d+\.\d-\d+\.\d\) ", c) for c in ours), line
    assert with_interval(0.252, 500) == "25.2% (21.6-29.2)"


def test_tables_import_neither_torch_timm_nor_hydra():
    """A leaf: the standard library and bnrepro.paper, so any command can write the tables."""
    heavy = "{'torch', 'timm', 'hydra', 'omegaconf', 'pandas', 'matplotlib'}"
    code = f"import sys, bnrepro.figures.tables\nprint(sorted({heavy} & set(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
