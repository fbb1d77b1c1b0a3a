"""Every number in results/'s tables comes from a JSON file in results/: the tables are recomputed
from the JSON here and a mismatch fails (so a README cannot claim what its files do not hold)."""

import json
import re
from pathlib import Path

import pytest

from bnrepro.figures.tables import paper_percent, percent
from bnrepro.paper import FIGURE3, FIGURE4
from bnrepro.stats import over_seeds

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

ENSEMBLE_CPU = RESULTS / "ensemble_cpu"


def ensemble_json(crops: int) -> dict:
    return load(ENSEMBLE_CPU / f"crops{crops}" / "results.json")


def ensemble_crops() -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in ENSEMBLE_CPU.glob("crops*/results.json"))


def readme_renderer():
    """scripts/ensemble_cpu_readme.py, imported from its path (scripts/ is not a package)."""
    import importlib.util

    path = RESULTS.parent / "scripts" / "ensemble_cpu_readme.py"
    spec = importlib.util.spec_from_file_location("ensemble_cpu_readme", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensemble_readme_is_rendered_from_its_json():
    """results/ensemble_cpu/README.md is what scripts/ensemble_cpu_readme.py makes of the JSON
    files beside it: rerun the experiment (scripts/ensemble_cpu.sh), never edit the README."""
    renderer = readme_renderer()
    assert (ENSEMBLE_CPU / "README.md").read_text() == renderer.render(renderer.load(ENSEMBLE_CPU))


def _row(results: dict, name: str, crops: int) -> dict:
    (row,) = [r for r in results["rows"] if r["model"] == name and r["crops"] == crops]
    return row


def test_ensemble_readme_claims_hold_in_the_json():
    """Each claim of the README, checked against the JSON on its own (not through the renderer):
    a "best single member" has the lowest error on its metrics among the members with the same
    BN statistics; "X beats Y" is a paired test that says so at 5%, "no significant difference"
    one that does not; without a paired test nothing is claimed; top-5 is claimed as often as
    top-1; every error in a table is the JSON's, with its Wilson interval."""
    from bnrepro.stats import fraction_interval

    text = (ENSEMBLE_CPU / "README.md").read_text()
    (figure4, *_) = [t for t in tables(ENSEMBLE_CPU / "README.md") if "crops" in t[0]]
    for row in figure4:
        results = ensemble_json(int(row["crops"]))
        best = re.match(
            r"best single member on (top-1|top-5)(?: and (top-5))?: (.+)$", row["model"]
        )
        name = best[3] if best else row["model"]
        ours = _row(results, name, int(row["crops"]))
        assert ours["bn_stats"] == row["BN statistics"]
        for metric in ("top1", "top5"):
            low, high = fraction_interval(ours[f"{metric}_error"], ours["images"])
            cell = f"{percent(ours[f'{metric}_error'])} ({100 * low:.1f}-{100 * high:.1f})"
            assert row[f"top-{metric[-1]} error (95% CI)"] == cell, row
        for metric in filter(None, best.groups()[:2] if best else ()):
            key = f"top{metric[-1]}_error"
            peers = [r for r in results["rows"] if r["models"] == 1
                     and r["bn_stats"] == ours["bn_stats"]]  # fmt: skip
            assert ours[key] == min(r[key] for r in peers), (row, metric)

    claim = re.compile(r"\*\*(.+?) beats (.+?)\*\* on (top-[15]) error at (\d+) crops? "
                       r"\((\w+) BN statistics\)")  # fmt: skip
    for a, b, metric, crops, stats in claim.findall(text):
        results = ensemble_json(int(crops))
        ensemble = [r["model"] for r in results["rows"] if r["models"] > 1
                    and r["bn_stats"] == stats][0]  # fmt: skip
        names = {"the ensemble": ensemble}
        test = [c for c in results["comparisons"] if c["metric"] == metric.replace("-", "")
                and {c["a"], c["b"]} == {names.get(a, a), names.get(b, b)}]  # fmt: skip
        assert len(test) == 1 and test[0]["p_value"] < 0.05, (a, b, metric, crops)
        winner = test[0]["a"] if test[0]["better"] == "A" else test[0]["b"]
        assert winner == names.get(a, a), (a, b, metric, crops)
    if "not tested (this results.json holds no paired test)" in text:
        assert any(not ensemble_json(c).get("comparisons") for c in ensemble_crops())
    readings = re.findall(r"(top-[15]): \*\*(\w+) beats (\w+)\*\*", text)
    for metric, better, worse in readings:  # seed means whose 95% t intervals do not overlap
        spread = {}
        for name in (better, worse):
            rows = load(ENSEMBLE_CPU / "readings" / name / "results.json")["rows"]
            stats = "population" if any(r["bn_stats"] == "population" for r in rows) else "moving"
            seeds = [r for r in rows if r["models"] == 1 and r["bn_stats"] in (stats, "none")]
            spread[name] = over_seeds([r[f"top{metric[-1]}_error"] for r in seeds])
        assert spread[better].high < spread[worse].low, (metric, better, worse)
    more_crops = len(re.findall(r"\*\*the ensemble at \d+ crops beats|beats the ensemble at", text))
    bold_claims = len(re.findall(r"\*\*[^*]+ beats [^*]+\*\*", text))  # the only way it claims
    assert bold_claims == len(claim.findall(text)) + len(readings) + more_crops
    claims = text.split("## The ensemble against its best member")[1].split("## Algorithm 2")[0]
    assert claims.count("top-1 ") == claims.count("top-5 ") > 0


def test_the_readme_says_beats_only_where_the_paired_test_does():
    """The renderer on a made-up results.json: "beats" for a significant paired test, in the
    winner's direction, "no significant difference" otherwise, top-5 beside top-1."""
    renderer = readme_renderer()
    rows = [{"model": name, "models": models, "bn_stats": "moving", "images": 500,
             "top1_error": t1, "top5_error": t5, "crops": 1}
            for name, models, t1, t5 in [("m0", 1, 0.4, 0.05), ("m1", 1, 0.5, 0.04),
                                          ("ensemble of 2", 2, 0.3, 0.06)]]  # fmt: skip
    tests = [{"a": "ensemble of 2", "b": "m0", "metric": "top1", "a_only": 60, "b_only": 10,
              "p_value": 1e-9, "better": "A"},
             {"a": "ensemble of 2", "b": "m1", "metric": "top5", "a_only": 3, "b_only": 13,
              "p_value": 0.02, "better": "B"}]  # fmt: skip
    lines = renderer.claims_section({"crops": {1: {"rows": rows, "comparisons": tests}}})
    assert lines[0].startswith("- **the ensemble beats m0** on top-1 error at 1 crop (moving")
    assert lines[1].startswith("- **m1 beats the ensemble** on top-5 error at 1 crop (moving")
    tests[0].update(p_value=0.2, better="neither")
    lines = renderer.claims_section({"crops": {1: {"rows": rows, "comparisons": tests}}})
    assert "beats" not in lines[0] and "no significant difference" in lines[0]


@pytest.mark.parametrize("crops", [1, 10, 144])
def test_each_ensemble_results_md_is_its_json_with_intervals(crops):
    """results.md is ensemble_markdown of results.json: every error with its 95% interval."""
    (table, *_) = tables(ENSEMBLE_CPU / f"crops{crops}" / "results.md")
    results = ensemble_json(crops)
    rows = {r["model"]: r for r in results["rows"]}
    assert [row["model"] for row in table] == list(rows)
    for row in table:
        ours = rows[row["model"]]
        for metric in ("top1", "top5"):
            cell = row[f"top-{metric[-1]} error (95% CI)"]
            assert cell.startswith(percent(ours[f"{metric}_error"]) + " ("), row
    assert (
        "paper top-1" not in table[0]
    )  # synthetic rows: the paper's ImageNet numbers are not shown


def test_every_accuracy_in_the_ensemble_results_has_its_interval():
    """Issue 21: no table of results/ensemble_cpu prints an accuracy or error without its
    interval (the paper's own numbers aside)."""
    for path in ENSEMBLE_CPU.rglob("*.md"):
        for table in tables(path):
            for row in table:
                for column, cell in row.items():
                    if percentages(cell) and not column.startswith("paper"):
                        assert re.search(r"\d+\.\d+% \(\d+\.\d+-\d+\.\d+\)", cell), (path, cell)


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
        ),  # no "beats": results/README.md points to the generated README for the claims
        "the default job": json_percentages(load(RESULTS / "default_job" / "summary.json")),
    }
    for row in cpu:
        source = [v for k, v in sources.items() if row["what"].startswith(k)]
        if source:
            assert set(percentages(row["result"])) <= source[0], row["what"]
        else:
            assert not percentages(row["result"]), row["what"]  # e.g. a pointer to a file
