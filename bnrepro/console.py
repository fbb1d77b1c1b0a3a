"""What a run prints, and its copy in <run_dir>/train.log.

On rank 0 every evaluation prints one line, TTY or not (a SLURM log is not a TTY):

    eval | step 3000 | 96,000 images | 3,000 paper steps | val top-1 25.00% (21.4-29.0)
         top-5 75.00% (71.0-78.6) loss 2.2031 | best top-1 25.00% | 812 img/s | ETA 0:12:40

(one line; wrapped here; in brackets each accuracy's 95% Wilson interval over the val images).
Progress bars are drawn only on a terminal (runtime.progress and a TTY). train.log gets every line the console showed (and every warning), each after a timestamp,
appended across resumes: a requeued run's log reads as one story.
"""

from __future__ import annotations

import datetime
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from bnrepro.paper import PAPER_BATCH
from bnrepro.stats import fraction_interval


def bars_enabled(progress: bool, is_main: bool) -> bool:
    """Progress bars: asked for (runtime.progress), rank 0, and a terminal to draw on."""
    return progress and is_main and sys.stderr.isatty()


class Console:
    """Rank 0's lines: to stdout (above a progress bar, if one is drawn) and to `log` (a run
    folder's train.log), if given."""

    def __init__(self, log: Path | None, *, enabled: bool) -> None:
        self.enabled = enabled
        self.path = None if log is None else Path(log)
        self.file = None
        self._showwarning = None
        if not enabled or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # backslashreplace: a warning naming a file whose name is not UTF-8 is logged, not fatal
        self.file = open(self.path, "a", errors="backslashreplace")  # noqa: SIM115
        # Warnings (a skipped file or checkpoint) go to the log too.
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._warning

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        tqdm.write(line, file=sys.stdout)  # above an active bar, plain print without one
        sys.stdout.flush()
        self._log(line)

    def _log(self, line: str) -> None:
        if self.file is not None:
            stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
            self.file.write(f"[{stamp}] {line}\n")
            self.file.flush()  # a killed job keeps every line it printed

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self._showwarning(message, category, filename, lineno, file, line)
        self._log(f"{category.__name__}: {message}")

    def close(self) -> None:
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
            self._showwarning = None
        if self.file is not None:
            self.file.close()
            self.file = None


class Pace:
    """Training images per second since this process started, and the time left at that pace."""

    def __init__(self, images_seen: int) -> None:
        self.start_images, self.start_time = images_seen, time.perf_counter()

    def rate(self, images_seen: int) -> float:
        return (images_seen - self.start_images) / max(time.perf_counter() - self.start_time, 1e-9)

    def eta(self, images_seen: int, max_images: float) -> str:
        rate = self.rate(images_seen)
        if rate <= 0:
            return "?"
        seconds = max(0.0, (max_images - images_seen) / rate)
        return str(datetime.timedelta(seconds=round(seconds)))


def eval_line(
    metrics: dict, *, step: int, images_seen: int, best_top1: float, rate: float, eta: str
) -> str:
    """The one line of an evaluation (val/* and, after Algorithm 2, val_popstats/*), each
    accuracy with its 95% Wilson interval over the val images it counts."""
    parts = [
        "eval",
        f"step {step:,}",
        f"{images_seen:,} images",
        f"{_number(images_seen / PAPER_BATCH)} paper steps",
    ]
    for prefix, name in (("val", "val"), ("val_popstats", "val (population BN)")):
        if f"{prefix}/top1" in metrics:
            n = metrics.get(f"{prefix}/images")  # None: an evaluation saved before it was kept
            parts.append(
                f"{name} top-1 {_with_interval(metrics[f'{prefix}/top1'], n)} "
                f"top-5 {_with_interval(metrics[f'{prefix}/top5'], n)} "
                f"loss {metrics[f'{prefix}/loss']:.4f}"
            )
    if metrics.get("val/skipped"):  # evaluation leaves unreadable files out: say how many
        parts.append(f"{metrics['val/skipped']:,} unreadable val files left out")
    parts += [f"best top-1 {100 * best_top1:.2f}%", f"{rate:,.0f} img/s", f"ETA {eta}"]
    return " | ".join(parts)


def _with_interval(accuracy: float, n: int | None) -> str:
    if not n:
        return f"{100 * accuracy:.2f}% (interval unknown: no image count)"
    low, high = fraction_interval(accuracy, n)
    return f"{100 * accuracy:.2f}% ({100 * low:.1f}-{100 * high:.1f})"


def _number(x: float) -> str:
    """1,500 or 1,500.5: whole numbers without decimals."""
    return f"{x:,.0f}" if x == int(x) else f"{x:,.1f}"
