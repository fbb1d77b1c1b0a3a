"""The end of a -m sweep: a table of its jobs and, when it trained several experiments, how they
compare, the way Figure 3 compares them (paper steps to reach Inception's best accuracy), each
number with its interval, plus a plot file.

    bnrepro-train compare=bn_x30          # Inception and BN-x30 side by side (configs/compare/)
    ...
    sweep outputs/multirun/2026-12-07_10-00-00: 2 jobs, 2 done
      #  status  best top-1  run folder
      0  done         22.4%  outputs/multirun/2026-12-07_10-00-00/0_inception_seed0
      1  done         42.0%  outputs/multirun/2026-12-07_10-00-00/1_bn_x30_seed0

Steps to the target are known to the resolution of the evaluations: a run first at or above it at
evaluation k reached it after evaluation k-1 and by evaluation k, the interval printed. A final
top-1 comes with its 95% Wilson interval over the val images it was measured on (`val/images`).
Plain Python from the run folders' files (no torch, no plotting library: the plot is SVG), so the
launching process reports as cheaply as it launched.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from bnrepro.checkpoint import RunFolder
from bnrepro.errors import one_line
from bnrepro.figures.tables import percent
from bnrepro.stats import wilson

PLOT = "comparison.svg"  # beside the jobs, in the sweep folder
REFERENCE = "inception"  # Figure 3's yardstick: steps to Inception's best accuracy


@dataclass
class Run:
    """One job of a sweep, as its run folder tells it."""

    num: int
    folder: RunFolder
    error: str | None = None  # the job's exception, on one line, if it failed
    summary: dict = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)  # metrics.jsonl's val rows, in order

    @property
    def name(self) -> str:
        return self.folder.path.name

    @property
    def experiment(self) -> str | None:
        return self.summary.get("experiment_name")

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        if self.summary.get("diverged"):
            return "diverged" + " (expected)" * bool(self.summary.get("expect_divergence"))
        if self.summary.get("preempted"):
            return "preempted"
        return "done" if self.summary else "no summary"


def read_run(num: int, path: str | Path, error: str | None = None) -> Run:
    """A job's run folder: its summary.json and the evaluations of its metrics.jsonl (what exists
    of them: a failed job may have neither)."""
    folder = RunFolder(path)
    run = Run(num, folder, error)
    if folder.summary.is_file():
        run.summary = json.loads(folder.summary.read_text())
    if folder.metrics.is_file():
        for line in folder.metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: the trainer drops it too
                continue
            if "val/top1" in row:
                run.evals.append(row)
    return run


def runs_of(job_returns) -> list[Run]:
    """Hydra's JobReturns (hydra.core.utils.JobReturn, local or back from SLURM) as Runs."""
    from hydra.core.utils import JobStatus

    runs = []
    for job in job_returns:
        hydra = job.hydra_cfg.hydra
        failed = job.status == JobStatus.FAILED
        runs.append(read_run(hydra.job.num, hydra.runtime.output_dir,
                             one_line(job._return_value) if failed else None))  # fmt: skip
    return sorted(runs, key=lambda r: r.num)


def jobs_table(runs: list[Run], sweep_dir: str | Path) -> str:
    """Every job: its number, status, best val top-1 and run folder (a failure's error below it)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    lines = [f"sweep {sweep_dir}: {len(runs)} job{'s' * (len(runs) != 1)}, {tally}"]
    width = max(len("status"), *(len(r.status) for r in runs))
    lines.append(f"  {'#':>3}  {'status':<{width}}  best top-1  run folder")
    for run in runs:
        best = percent(run.summary.get("best/val/top1")) if run.summary else "-"
        lines.append(f"  {run.num:>3}  {run.status:<{width}}  {best:>10}  {run.folder.path}")
        if run.error:
            lines.append(f"       {run.error}")
    return "\n".join(lines)


def _steps_to(run: Run, target: float) -> tuple[float, float] | None:
    """(after, by): the paper steps of the evaluation before the first one at or above `target`
    (0 for the first) and of that one; None if no evaluation reached it."""
    before = 0.0
    for row in run.evals:
        if row["val/top1"] >= target - 1e-12:
            return before, row["paper_steps"]
        before = row["paper_steps"]
    return None


def _final(run: Run) -> str:
    """The last evaluation's top-1 with its 95% Wilson interval over its val images."""
    last = run.evals[-1]
    n = last.get("val/images")
    if not n:  # a run from before val/images was logged: no interval can be given
        return f"{percent(last['val/top1'])} (interval unknown: no val/images)"
    low, high = wilson(round(last["val/top1"] * n), n)
    return f"{percent(last['val/top1'])} ({percent(low)}-{percent(high)}, {n} images)"


def _steps_text(steps: tuple[float, float] | None, last: float) -> str:
    if steps is None:
        return f"never (within {last:g})"
    after, by = steps
    return f"by {by:g} (after {after:g})"


def comparison(runs: list[Run]) -> tuple[str, float, str] | None:
    """Figure 3's comparison of runs of several experiments: the target (the reference run's best
    val top-1; the reference: the first Inception run, else the first run), each run's paper
    steps to it and its final top-1, both with intervals, and the speed-up over the reference.
    Returns (text, target, reference name); None for fewer than two experiments with evaluations."""
    curves = [r for r in runs if r.evals and r.experiment]
    if len({r.experiment for r in curves}) < 2:
        return None
    reference = next((r for r in curves if r.experiment == REFERENCE), curves[0])
    target = max(row["val/top1"] for row in reference.evals)
    ref_steps = _steps_to(reference, target)
    width = max(len(r.name) for r in curves)
    lines = [
        f"comparison (val top-1, single crop; steps in paper steps = images / 32, to the "
        f"resolution of the evaluations; 95% Wilson intervals): target {percent(target)}, the "
        f"best of {reference.name}, as Figure 3 measures steps to Inception's best",
        f"  {'run':<{width}}  steps to {percent(target):<14}  final top-1",
    ]
    for run in curves:
        steps = _steps_to(run, target)
        last = run.evals[-1]["paper_steps"]
        lines.append(f"  {run.name:<{width}}  {_steps_text(steps, last):<23}  {_final(run)}")
    for run in curves:
        steps = _steps_to(run, target)
        if run is reference or steps is None or ref_steps is None or not ref_steps[0]:
            continue  # (the reference's best at its first evaluation: no lower bound)
        # The ratio of the two step counts, over both intervals (the reference's own count
        # is an interval too: its best came after its previous evaluation).
        fewest, most = ref_steps[0] / steps[1], (ref_steps[1] / steps[0] if steps[0] else None)
        span = f"{fewest:.2g}x to {most:.2g}x" if most else f"at least {fewest:.2g}x"
        lines.append(f"  {reference.name} took {span} the paper steps of {run.name} to reach "
                     f"{percent(target)}")  # fmt: skip
    return "\n".join(lines), target, reference.name


def plot_svg(runs: list[Run], target: float, title: str) -> str:
    """Val top-1 against paper steps, one line per run, the target dashed: an SVG document."""
    curves = [r for r in runs if r.evals]
    w, h, left, bottom, top, right = 640, 400, 60, 50, 40, 190
    x_max = max(row["paper_steps"] for r in curves for row in r.evals) or 1
    y_max = min(1.0, max(0.1, *(row["val/top1"] for r in curves for row in r.evals)) * 1.1)

    def x(steps: float) -> float:
        return left + (w - left - right) * steps / x_max

    def y(top1: float) -> float:
        return h - bottom - (h - top - bottom) * top1 / y_max

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{x(x_max)}" y2="{y(0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(y_max)}" stroke="black"/>',
        f'<text x="{(left + x(x_max)) / 2}" y="{h - 12}" text-anchor="middle">paper steps (images seen / 32)</text>',
        f'<text x="15" y="{h / 2}" text-anchor="middle" transform="rotate(-90 15 {h / 2})">val top-1</text>',
        f'<text x="{left - 5}" y="{y(0) + 4}" text-anchor="end">0%</text>',
        f'<text x="{left - 5}" y="{y(y_max) + 4}" text-anchor="end">{percent(y_max)}</text>',
        f'<text x="{x(x_max)}" y="{y(0) + 16}" text-anchor="end">{x_max:g}</text>',
        f'<line x1="{left}" y1="{y(target)}" x2="{x(x_max)}" y2="{y(target)}" stroke="gray" stroke-dasharray="5,4"/>',
        f'<text x="{x(x_max) + 5}" y="{y(target) + 4}" fill="gray">target {percent(target)}</text>',
    ]  # fmt: skip
    for i, run in enumerate(curves):
        colour = colours[i % len(colours)]
        points = " ".join(f"{x(r['paper_steps']):.1f},{y(r['val/top1']):.1f}" for r in run.evals)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        legend_y = top + 20 * i + 20
        parts.append(f'<line x1="{w - right + 15}" y1="{legend_y}" x2="{w - right + 35}" '
                     f'y2="{legend_y}" stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        parts.append(
            f'<text x="{w - right + 40}" y="{legend_y + 4}">{html.escape(run.name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def sweep_report(sweep_dir: str | Path, runs: list[Run]) -> str:
    """What a sweep prints when its jobs are done: the jobs table, and over several experiments
    their comparison, with the plot written to <sweep_dir>/comparison.svg."""
    text = jobs_table(runs, sweep_dir)
    compared = comparison(runs)
    if compared is None:
        return text
    summary, target, reference = compared
    plot = Path(sweep_dir) / PLOT
    title = f"val top-1 against paper steps; dashed: {reference}'s best"
    plot.write_text(plot_svg(runs, target, title))
    return f"{text}\n{summary}\nplot: {plot}"
