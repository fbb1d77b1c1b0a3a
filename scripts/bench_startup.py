"""How long a command takes to answer before it does anything: `import bnrepro`,
`bnrepro-train --help` and one tab-completion query, for the code at a git ref ("before") and the
working tree ("now"), alternating in one run so both see the same machine load.

    .venv/bin/python scripts/bench_startup.py --before 9a1eb65 --repeats 5

"before" is `git archive <ref>` unpacked into a temporary folder, run from there (first on sys.path);
its `--help` runs as its console script did (`bnrepro.train:main`). Prints the best (least
disturbed, as timeit's minimum) and the median wall time of each, and now/before ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {  # name -> (code for the old tree, code for the working tree)
    "import bnrepro": ("import bnrepro", "import bnrepro"),
    "bnrepro-train --help": (
        "import sys; sys.argv = ['bnrepro-train', '--help']; from bnrepro.train import main; main()",
        "import sys; sys.argv = ['bnrepro-train', '--help']; from bnrepro.cli import bnrepro_train; bnrepro_train()",
    ),
    "TAB (completion query)": (
        "import sys; sys.argv = ['bnrepro-train', '-sc', 'query=bash']; from bnrepro.train import main; main()",
        "import sys; sys.argv = ['bnrepro-train', '-sc', 'query=bash']; from bnrepro.cli import bnrepro_train; bnrepro_train()",
    ),
}


def timed(code: str, pythonpath: str) -> float:
    env = dict(os.environ, PYTHONPATH=pythonpath, COMP_LINE="bnrepro-train experiment=bn_x")
    start = time.perf_counter()
    # cwd: `python -c` puts it first on sys.path, before PYTHONPATH
    subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=pythonpath, check=True, capture_output=True
    )
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git ref of the code to compare with")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "archive", args.before], cwd=REPO, capture_output=True, check=True
        ).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(old, filter="data")
        times = {name: ([], []) for name in COMMANDS}
        for _ in range(args.repeats):
            for name, (code_before, code_now) in COMMANDS.items():
                times[name][0].append(timed(code_before, old))
                times[name][1].append(timed(code_now, str(REPO)))
    print(
        f"{'command':<24} {'before best/median':>20} {'now best/median':>18} {'ratio (best)':>13}"
    )
    for name, (before, now) in times.items():
        print(
            f"{name:<24} {min(before):>9.2f}/{statistics.median(before):.2f} s"
            f" {min(now):>9.2f}/{statistics.median(now):.2f} s {min(now) / min(before):>12.2f}"
        )


if __name__ == "__main__":
    main()
