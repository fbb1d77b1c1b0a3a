"""results/ensemble_cpu/README.md from the JSON files beside it, so that its numbers and claims
are the files' (scripts/ensemble_cpu.sh runs it last; tests/test_results.py renders it again and
compares, and checks each claim against the JSON on its own).

    python scripts/ensemble_cpu_readme.py results/ensemble_cpu          # writes README.md there
    python scripts/ensemble_cpu_readme.py results/ensemble_cpu --stdout

Reads crops<C>/results.json (bnrepro-ensemble), crops<C>/probs.npz where present (the paired
test of 1 against 144 crops), readings/<reading>/results.json (the head-BN comparison) and
ensemble_cpu_run.json (how they were made); says plainly what a file does not hold. Every error
is printed with its 95% Wilson interval, a mean over seeds with its 95% t interval, and "beats"
only where McNemar's exact test on the same images says so at 5%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bnrepro.figures.tables import paper_percent, percent, with_interval
from bnrepro.paper import FIGURE4
from bnrepro.stats import mcnemar, over_seeds

METRICS = (("top1", "top-1"), ("top5", "top-5"))
READINGS = {
    "none": "no BN before the classifier (BN-x30 as it is)",
    "pooled": "BN on the pooled features before the classifier (`model.head_bn=true`)",
    "per_activation": "per-activation BN in the last two inception modules, 5a and 5b "
    "(`model.per_activation_bn=2`)",
}
ALPHA = 0.05


def load(folder: Path) -> dict:
    """Every file the README is made from (absent ones are absent)."""
    crops = {}
    for path in sorted(folder.glob("crops*/results.json"), key=lambda p: int(p.parent.name[5:])):
        crops[int(path.parent.name[5:])] = json.loads(path.read_text())
    readings = {}
    for name in READINGS:
        path = folder / "readings" / name / "results.json"
        if path.is_file():
            readings[name] = json.loads(path.read_text())
    run = folder / "ensemble_cpu_run.json"
    return {
        "crops": crops,
        "readings": readings,
        "run": json.loads(run.read_text()) if run.is_file() else None,
        "folder": folder,
    }


# ---- what the files say ------------------------------------------------------------------


def primary(results: dict) -> str:
    """The BN statistics a table leads with: Algorithm 2's (the paper's inference) if the
    file has them, else the moving averages."""
    return "population" if any(r["bn_stats"] == "population" for r in results["rows"]) else "moving"


def rows_of(results: dict, bn_stats: str) -> list[dict]:
    return [r for r in results["rows"] if r["bn_stats"] in (bn_stats, "none")]


def singles(results: dict, bn_stats: str) -> list[dict]:
    return [r for r in rows_of(results, bn_stats) if r["models"] == 1]


def ensemble_row(results: dict, bn_stats: str) -> dict:
    (row,) = [r for r in rows_of(results, bn_stats) if r["models"] > 1]
    return row


def best_member(results: dict, bn_stats: str, metric: str) -> dict:
    """The member with the lowest error on `metric` (top1 / top5): picked on these images."""
    return min(singles(results, bn_stats), key=lambda r: r[f"{metric}_error"])


def comparison(results: dict, a: str, b: str, metric: str) -> dict | None:
    for c in results.get("comparisons", []):
        if (c["a"], c["b"], c["metric"]) == (a, b, metric):
            return c
    return None


def verdict(c: dict, a_words: str, b_words: str, metric_words: str, where: str) -> str:
    """One claim from one paired test, worded as the test decided it."""
    counts = (f"only {a_words} right on {c['a_only']} images, only {b_words} on {c['b_only']}; "
              f"McNemar p = {c['p_value']:.3g}")  # fmt: skip
    if c["better"] == "A":
        return f"**{a_words} beats {b_words}** on {metric_words} {where} ({counts})"
    if c["better"] == "B":
        return f"**{b_words} beats {a_words}** on {metric_words} {where} ({counts})"
    return (f"no significant difference between {a_words} and {b_words} on {metric_words} {where} "
            f"({counts})")  # fmt: skip


def crops_test(folder: Path, few: int, many: int) -> dict | None:
    """The ensemble at `few` against `many` crops, image by image, from the two probs.npz files
    (same members, same images); None without them."""
    import numpy as np

    paths = [folder / f"crops{c}" / "probs.npz" for c in (few, many)]
    if not all(p.is_file() for p in paths):
        return None
    out = {}
    for key in ("probs", "probs_population"):
        loaded = [np.load(p) for p in paths]
        if not all(key in f for f in loaded):
            continue
        if not np.array_equal(loaded[0]["labels"], loaded[1]["labels"]):
            raise ValueError(f"{paths[0]} and {paths[1]} hold other images: not paired")
        labels = loaded[0]["labels"]
        hits = []
        for f in loaded:
            ranked = np.argsort(-f[key].mean(0), axis=1)  # the ensemble: the members' mean
            hits.append({m: (ranked[:, : int(m[-1])] == labels[:, None]).any(1).tolist()
                         for m in ("top1", "top5")})  # fmt: skip
        stats = "population" if key == "probs_population" else "moving"
        out[stats] = {m: mcnemar(hits[1][m], hits[0][m]) for m in ("top1", "top5")}
    return out


# ---- the README ---------------------------------------------------------------------------


def provenance(files: dict) -> list[str]:
    run, first = files["run"], next(iter(files["crops"].values()))
    env = first["environment"]
    dirty = "; uncommitted changes (`git_dirty`)" if env.get("git_dirty") else ""
    recorded = (f"The evaluations' JSON records code {first['git_sha'][:7]}{dirty}, torch "
                f"{env['torch']}, {env['threads']} threads.")  # fmt: skip
    if run is None:
        return [
            "These files predate `scripts/ensemble_cpu.sh` (no `ensemble_cpu_run.json`). "
            f"{recorded} Regenerate them with the command below.",
            "",
        ]
    failed = [s["step"] for s in run["steps"] if s["exit_status"]]
    return [
        f"Made on {run['date']} from commit {run['commit'][:7]}, {run['wall_seconds']:,} s in all. "
        f"{recorded}",
        "",
        "```bash",
        run["command"],
        "```",
        "",
        f"Failed steps: {', '.join(failed) if failed else 'none'} "
        "(`ensemble_cpu_run.json` has each step's exit status and seconds).",
        "",
    ]


def members_section(results: dict) -> list[str]:
    lines = [
        "| member | changes (section 4.2.3) | images trained | trained at | Algorithm 2 batches |",
        "|---|---|---|---|---|",
    ]
    changes = {r["model"]: r["changes"] for r in results["rows"]}
    for m in results["members"]:
        lines.append(
            f"| {m['name']} | {changes.get(m['name'], '-')} | {m['images_seen']:,} "
            f"| {_side(m.get('trained_resolution'))} "
            f"| {m.get('pop_stats_batches', 0) or 'none'} |"
        )
    selected = results["selected_on_val"]
    lines += [
        "",
        f"Each member's {'best.pt (picked on these val images)' if selected else 'last checkpoint'}"
        f" ({'selected' if selected else 'not selected'} on the val set it is scored on).",
        "",
    ]
    return lines


def _side(side: int | None) -> str:
    return "not recorded" if side is None else f"{side} px"


def figure4_section(files: dict) -> list[str]:
    lines = [
        "| model | BN statistics | crops | models | top-1 error (95% CI) | top-5 error (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for crops, results in files["crops"].items():
        stats = primary(results)
        shown = []
        for metric, _ in METRICS:
            best = best_member(results, stats, metric)
            if best not in shown:
                shown.append(best)
        for row in [*shown, ensemble_row(results, stats)]:
            label = row["model"]
            if row["models"] == 1:
                lowest = [w for m, w in METRICS if best_member(results, stats, m) is row]
                label = f"best single member on {' and '.join(lowest)}: {row['model']}"
            lines.append(
                f"| {label} | {row['bn_stats']} | {crops} | {row['models']} "
                f"| {with_interval(row['top1_error'], row['images'])} "
                f"| {with_interval(row['top5_error'], row['images'])} |"
            )
    return [*lines, ""]


def claims_section(files: dict) -> list[str]:
    lines = []
    for crops, results in files["crops"].items():
        stats = primary(results)
        ens = ensemble_row(results, stats)
        for metric, words in METRICS:
            best = best_member(results, stats, metric)
            c = comparison(results, ens["model"], best["model"], metric)
            where = f"at {crops} crop{'s' * (crops > 1)} ({stats} BN statistics)"
            if c is None:
                lines.append(
                    f"- {words} {where}: the ensemble {percent(ens[f'{metric}_error'])}, its best "
                    f"member {best['model']} {percent(best[f'{metric}_error'])}; not tested (this "
                    "results.json holds no paired test), so no claim that either beats the other."
                )
            else:
                lines.append(
                    "- " + verdict(c, "the ensemble", best["model"], f"{words} error", where) + "."
                )
    return [*lines, ""]


def algorithm2_section(files: dict) -> list[str]:
    lines = []
    for crops, results in files["crops"].items():
        if primary(results) != "population":
            lines.append(f"- {crops} crop{'s' * (crops > 1)}: no population-statistics rows in "
                         "this file (made with moving averages only).")  # fmt: skip
            continue
        ens = ensemble_row(results, "population")
        moving = ensemble_row(results, "moving")
        tests = [comparison(results, ens["model"], moving["model"], m) for m, _ in METRICS]
        members = [c for c in results.get("comparisons", []) if c["a"].endswith("(population BN)")
                   and not c["a"].startswith("ensemble")]  # fmt: skip
        differ = [c for c in members if c["better"] != "neither"]
        parts = [
            f"{w} error {percent(moving[f'{m}_error'])} -> {percent(ens[f'{m}_error'])} "
            f"({_tested(t)})"
            for (m, w), t in zip(METRICS, tests, strict=True)
        ]
        lines.append(
            f"- {crops} crop{'s' * (crops > 1)}: the ensemble with Algorithm 2 against moving "
            f"averages: {'; '.join(parts)}. Members: {len(differ)} of {len(members)} member "
            "tests (top-1 and top-5) differ at 5%."
        )
    return [*lines, ""]


_VERDICT_WORDS = {
    "A": "population better",
    "B": "moving better",
    "neither": "no significant difference",
}


def _tested(test: dict | None) -> str:
    if test is None:
        return "not tested"
    return f"p = {test['p_value']:.3g}, {_VERDICT_WORDS[test['better']]}"


def crops_section(files: dict) -> list[str]:
    counts = sorted(files["crops"])
    if len(counts) < 2:
        return []
    few, many = counts[0], counts[-1]
    tests = crops_test(files["folder"], few, many)
    if not tests:
        return [
            f"- {many} against {few} crops: not tested (no probs.npz beside both results.json "
            "files); the errors with their intervals are in the table above.",
            "",
        ]
    lines = []
    for stats, by_metric in tests.items():
        for metric, words in METRICS:
            t = by_metric[metric]
            c = {"a_only": t.a_only, "b_only": t.b_only, "p_value": t.p_value, "better": t.beats()}
            claim = verdict(c, f"the ensemble at {many} crops", f"at {few}", f"{words} error",
                            f"({stats} BN statistics)")  # fmt: skip
            lines.append(f"- {claim}.")
    return [*lines, ""]


def readings_section(files: dict) -> list[str]:
    readings = files["readings"]
    if not readings:
        return [
            "Not in these files yet: `scripts/ensemble_cpu.sh` trains BN-x30 with each reading "
            "(three seeds each) and writes `readings/`.",
            "",
        ]
    lines = [
        "| reading | seeds | top-1 error per seed | top-1 mean (95% t interval) "
        "| top-5 error per seed | top-5 mean (95% t interval) |",
        "|---|---|---|---|---|---|",
    ]
    spreads = {}
    for name, results in readings.items():
        stats = primary(results)
        seeds = singles(results, stats)
        cells = []
        for metric, _ in METRICS:
            values = [r[f"{metric}_error"] for r in seeds]
            spread = over_seeds(values)
            spreads[name, metric] = spread
            low, high = max(0.0, spread.low), min(1.0, spread.high)  # shown within 0-100%
            cells += [", ".join(with_interval(r[f"{metric}_error"], r["images"]) for r in seeds),
                      f"{percent(spread.mean)} ({100 * low:.1f}-{100 * high:.1f})"]  # fmt: skip
        lines.append(f"| {name} ({stats} BN) | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The t intervals are shown within 0-100%. One reading beats another only where the 95% t "
        "intervals of their seed means do not overlap (with few seeds a wide interval: a "
        "conservative test):",
        "",
    ]
    names = list(readings)
    for metric, words in METRICS:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                sa, sb = spreads[a, metric], spreads[b, metric]
                if sa.low > sb.high:
                    lines.append(f"- {words}: **{b} beats {a}** (mean error {percent(sb.mean)} "
                                 f"against {percent(sa.mean)}).")  # fmt: skip
                elif sb.low > sa.high:
                    lines.append(f"- {words}: **{a} beats {b}** (mean error {percent(sa.mean)} "
                                 f"against {percent(sb.mean)}).")  # fmt: skip
                else:
                    lines.append(f"- {words}: {a} and {b} are not told apart (intervals "
                                 "overlap).")  # fmt: skip
    return [*lines, ""]


def render(files: dict) -> str:
    if not files["crops"]:
        raise SystemExit(f"no crops*/results.json under {files['folder']}")
    results = files["crops"][max(files["crops"])]
    data = results.get("data") or results["config"]["data"]["name"]
    resolution_from = {"members": "the members' own checkpoints", "resolution": "resolution=N"}.get(
        results.get("resolution_from"), "the command's data.eval_crop, before issue 21"
    )
    lines = [
        "# Figure 4 at CPU scale: six BN-x30 ensemble members, "
        + " / ".join(map(str, files["crops"]))
        + " crops",
        "",
        "<!-- Written by scripts/ensemble_cpu_readme.py from the JSON files beside it: change the "
        "script or rerun the experiment, not this file. -->",
        "",
        *provenance(files),
        "```bash",
        "scripts/ensemble_cpu.sh   # ~30 min on a quiet 2-core CPU: trains, evaluates, writes this",
        "```",
        "",
        f"Data: {data}, {results['classes']} classes, {results['images']} val images "
        f"({results['skipped_files']} unreadable); crops of {results['resolution']} px "
        f"(from {resolution_from}).",
        "",
        "## The members",
        "",
        *members_section(results),
        "## Figure 4",
        "",
        "The best single member for each metric (picked on these same images, so its errors are "
        "slightly optimistic) and the ensemble; every member's row, with moving averages and "
        "Algorithm 2, is in `crops<C>/results.md`. Errors with their 95% Wilson intervals over "
        f"{results['images']} images.",
        "",
        *figure4_section(files),
        f"The paper's Figure 4 is ImageNet's (single crop {paper_percent(FIGURE4[1, 1][0])} / "
        f"{paper_percent(FIGURE4[1, 1][1])}, 144 crops {paper_percent(FIGURE4[144, 1][0])} / "
        f"{paper_percent(FIGURE4[144, 1][1])}, the 144-crop ensemble "
        f"{paper_percent(FIGURE4[144, 6][0])} / {paper_percent(FIGURE4[144, 6][1])} top-1 / top-5 "
        f"error), not comparable with {results['classes']} {data} classes after a few hundred "
        "paper steps: our absolute errors say nothing about the paper's.",
        "",
        "## The ensemble against its best member (paired, same images)",
        "",
        *claims_section(files),
        "## Algorithm 2 against moving averages (paired, same images)",
        "",
        *algorithm2_section(files),
        "## More crops (paired, same images)",
        "",
        *crops_section(files),
        "## The two readings of per-activation BN in the last hidden layers",
        "",
        'Section 4.2.3: "non-convolutional, per-activation Batch Normalization with last hidden '
        'layers of the model". BN-x30 (nothing else changed), 500 paper steps, each seed at one '
        "crop:",
        "",
        *(f"- {name}: {words}" for name, words in READINGS.items()),
        "",
        *readings_section(files),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="results/ensemble_cpu")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing README.md")
    args = parser.parse_args()
    text = render(load(args.folder))
    if args.stdout:
        print(text, end="")
    else:
        (args.folder / "README.md").write_text(text)
        print(f"wrote {args.folder / 'README.md'}")


if __name__ == "__main__":
    main()
