"""Every number in results/'s tables comes from a JSON file in results/: the tables are recomputed
from the JSON here and a mismatch fails (so a README cannot claim what its files do not hold)."""

import json
import re
from pathlib import Path

import pytest

from bnrepro.figures.tables import paper_percent, percent
from bnrepro.paper import FIGURE3, FIGURE4

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROXY_NAMES = {"Inception": "inception", "BN-Baseline": "bn_baseline", "BN-x5": "bn_x5",
               "BN-x30": "bn_x30", "BN-x5-Sigmoid": "bn_x5_sigmoid",
               "Inception-Sigmoid": "inception_sigmoid", "Inception-x5": "inception_x5",
               "BN-Baseline, init gain 0.5": "bn_baseline_gain0.5"}  # fmt: skip


def tables(path: Path) -> list[list[dict]]:
    """Every markdown table in a file: a list of rows, each {header: cell}."""
    found, header = [], None
    for line in path.read_text().splitlines() + [""]:
        cells = (
            [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|")
            else None
        )
        if cells is None:
            header = None
        elif header is None:
            header = cells
            found.append([])
        elif not set(line) <= set("|-: "):
            found[-1].append(dict(zip(header, cells, strict=True)))
    return found


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def percentages(text: str) -> list[str]:
    return re.findall(r"(?<![\d.])\d+\.\d+%", text)


def json_percentages(data, scale: float = 100) -> set[str]:
    """Every number in a JSON file written as a table writes it (fractions as 12.3%)."""
    out = set()
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, list):
        for v in data:
            out |= json_percentages(v, scale)
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out |= {f"{scale * data:.1f}%", f"{scale * data:.4g}%"}
    return out


PAPER = {paper_percent(v) for pair in [*FIGURE3.values(), *FIGURE4.values()] for v in pair if v}
PAPER |= {"0.1%", "6.67%", "4.82%"}  # Figure 4's GoogLeNet row and test-set error; 1/1000 chance


# ---------------------------------------------------------------- Figure 4 at CPU scale


def ensemble_json(crops: int) -> dict:
    return load(RESULTS / "ensemble_cpu" / f"crops{crops}" / "results.json")


def test_ensemble_readme_table_is_its_json():
    (table,) = tables(RESULTS / "ensemble_cpu" / "README.md")
    for row in table:
        crops, models = int(row["crops"]), int(row["models"])
        seed = re.search(r"(seed|member) (\d+)", row["model"])  # "best single member (seed 1)"
        (ours,) = [
            r
            for r in ensemble_json(crops)["rows"]
            if (seed and r["models"] == 1 and re.search(rf"_{seed[1]}{seed[2]}(_|$)", r["model"]))
            or (not seed and r["model"] == f"ensemble of {models}")
        ]
        name = ours["model"]
        assert (row["top-1 error"], row["top-5 error"]) == (
            percent(ours["top1_error"]),
            percent(ours["top5_error"]),
        ), row
        paper = FIGURE4.get((crops, models), (None, None))
        assert (row["paper top-1"], row["paper top-5"]) == tuple(map(paper_percent, paper))
        if seed:  # "best single member": the lowest top-1 error at one crop
            singles = [r for r in ensemble_json(1)["rows"] if r["models"] == 1]
            assert min(singles, key=lambda r: r["top1_error"])["model"] == name


@pytest.mark.parametrize("crops", [1, 10, 144])
def test_each_ensemble_results_md_is_its_json(crops):
    (table,) = tables(RESULTS / "ensemble_cpu" / f"crops{crops}" / "results.md")
    rows = {r["model"]: r for r in ensemble_json(crops)["rows"]}
    assert [row["model"] for row in table] == list(rows)
    for row in table:
        ours = rows[row["model"]]
        assert (row["top-1 error"], row["top-5 error"]) == (
            percent(ours["top1_error"]),
            percent(ours["top5_error"]),
        )


def test_ensemble_readme_numbers_and_claims_are_the_jsons():
    text = (RESULTS / "ensemble_cpu" / "README.md").read_text()
    allowed = PAPER.union(*(json_percentages(ensemble_json(c)["rows"]) for c in (1, 10, 144)))
    assert set(percentages(text)) <= allowed
    members = ensemble_json(144)["members"]
    longest = max(m["images_seen"] for m in members)
    for m in members:  # a member whose checkpoint is earlier than the others' is named
        if m["images_seen"] < longest:
            number = re.search(r"(seed|member)(\d+)$", m["name"])
            assert f"{m['images_seen']:,} for {number[1]} {number[2]}" in text, m
    # "144 crops lower every error" only if no error rises from 1 to 144 crops
    one, many = ({(r["model"], k): r[k] for r in ensemble_json(c)["rows"]
                  for k in ("top1_error", "top5_error")} for c in (1, 144))  # fmt: skip
    if any(many[key] > one[key] for key in one):
        for path in (RESULTS / "ensemble_cpu" / "README.md", RESULTS / "README.md"):
            claims = path.read_text()
            assert "every error" not in claims and "error of every member" not in claims, path


# ---------------------------------------------------------------- Figures 2 and 3 proxy


def test_proxy_tables_are_figure3_json():
    figure3 = load(RESULTS / "proxy" / "figure3.json")
    (readme,) = tables(RESULTS / "proxy" / "README.md")
    (md,) = tables(RESULTS / "proxy" / "figure3.md")
    assert len(readme) == len(md) == len(figure3["rows"])
    for row in readme:
        ours = figure3["rows"][PROXY_NAMES[row["model"]]]
        steps = row["steps to Inception's best (ours)"]
        if ours["steps_to_target"] is None:
            assert steps.startswith("never")
        else:
            assert steps == f"{ours['steps_to_target']:,.0f}"
        assert row["max top-1 (ours)"].split()[0] == percent(ours["max_top1"])
    for row in md:
        ours = figure3["rows"][row["model"]]
        assert row["max top-1 (ours)"] == percent(ours["max_top1"])
    text = (RESULTS / "proxy" / "README.md").read_text()
    assert set(percentages(text)) <= PAPER | json_percentages(figure3)
    if not any("final_top1" in r for r in figure3["rows"].values()):  # only maxima recorded
        for path in (RESULTS / "proxy" / "README.md", RESULTS / "README.md"):
            claims = path.read_text()
            assert not re.search(r"\bends? at\b|at the end\b", claims), path


def test_proxy_readme_seed_claims_hold_in_figure3_json():
    """The README says one seed group is above another only where every seed's max says so."""
    rows = load(RESULTS / "proxy" / "figure3.json")["rows"]
    text = " ".join((RESULTS / "proxy" / "README.md").read_text().split())

    def seed_maxima(name: str) -> list[float]:
        return [s["max_top1"] for s in rows[name]["per_seed"].values()]

    def above(better: str, worse: str) -> bool:
        return min(seed_maxima(better)) > max(seed_maxima(worse))

    claims = {
        "every BN-x5 and BN-x30 seed beats every Inception seed": above("bn_x5", "inception")
        and above("bn_x30", "inception"),
        "every one of its seeds": above("bn_baseline_gain0.5", "inception")
        and above("bn_baseline_gain0.5", "bn_baseline"),
        "its best seed": max(seed_maxima("bn_baseline")) < rows["inception"]["max_top1_mean"],
    }
    for claim, holds in claims.items():
        assert holds or claim not in text, claim


# ---------------------------------------------------------------- Figure 1 on MNIST


def test_mnist_tables_are_its_json():
    data = load(RESULTS / "mnist_fig1.json")
    steps = data["steps"]
    accuracy, percentiles = tables(RESULTS / "mnist_fig1.md")
    curves = {"without BN": data["curves"]["without_bn"], "with BN": data["curves"]["with_bn"]}
    for row in accuracy:
        for column, cell in row.items():
            if column == "step":
                continue
            i = steps.index(int(column.replace(",", "")))
            if row["step"] == "gap":
                gap = curves["with BN"]["test_acc"][i] - curves["without BN"]["test_acc"][i]
                assert cell == f"{gap:+.3f}"
            else:
                assert cell == f"{curves[row['step']]['test_acc'][i]:.3f}"
    # "within one standard error" only if the late gap is (1,000 test images at ~94%)
    late = [abs(b - a) for t, a, b in zip(steps, curves["without BN"]["test_acc"],
                                           curves["with BN"]["test_acc"], strict=True) if t >= 10_000]  # fmt: skip
    se = (0.94 * 0.06 / data["data"]["n_test"]) ** 0.5
    text = (RESULTS / "mnist_fig1.md").read_text()
    assert max(late) <= se or "within one standard error of each other" not in text
    assert f"{max(late):+.3f}" in text  # the largest late gap is stated
    for row in percentiles:
        curve = curves[row[next(iter(row))]]
        for column, cell in list(row.items())[1:4]:
            i = steps.index(int(column.removeprefix("step ").replace(",", "")))
            expected = " / ".join(f"{curve[p][i]:+.2f}" for p in ("p15", "p50", "p85"))
            assert cell == expected


# ---------------------------------------------------------------- the default job and the summary


def test_default_job_readme_is_its_summary():
    summary = load(RESULTS / "default_job" / "summary.json")
    assert (summary["images_seen"], summary["experiment_name"]) == (16_000, "bn_x30")
    text = (RESULTS / "default_job" / "README.md").read_text()
    assert f"val top-1 {percent(summary['val/top1'])} at the end" in text
    assert summary["val/top1"] == summary["best/val/top1"]  # "which is also its best"
    assert f"val top-5 {percent(summary['val/top5'])}" in text
    assert f"first reached at {summary['steps_to_target']:g} paper steps" in text
    lines = (RESULTS / "default_job" / "metrics.jsonl").read_text().splitlines()
    evals = [row["val/top1"] for row in map(json.loads, lines) if "val/top1" in row]
    assert evals[-1] == summary["val/top1"]
    assert ", ".join(map(percent, evals[:-1])) + f" and {percent(evals[-1])}" in text
    assert set(percentages(text)) <= json_percentages(summary) | json_percentages(evals) | {
        "56.0%"  # the number the README used to claim, named as such
    }


def test_results_readme_cpu_rows_cite_only_numbers_their_json_holds():
    *_, cpu, _ = tables(RESULTS / "README.md")
    sources = {
        "Figure 1": json_percentages(load(RESULTS / "mnist_fig1.json")["curves"]),
        "Figures 2 and 3": json_percentages(load(RESULTS / "proxy" / "figure3.json")),
        "Figure 4": PAPER.union(
            *(json_percentages(ensemble_json(c)["rows"]) for c in (1, 10, 144))
        ),
        "the default job": json_percentages(load(RESULTS / "default_job" / "summary.json")),
    }
    for row in cpu:
        source = [v for k, v in sources.items() if row["what"].startswith(k)]
        if source:
            assert set(percentages(row["result"])) <= source[0], row["what"]
        else:
            assert not percentages(row["result"]), row["what"]  # e.g. a pointer to a file
