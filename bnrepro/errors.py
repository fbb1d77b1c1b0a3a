"""Errors a user can fix, and the exit statuses every bnrepro command ends with.

A UserError's message names the problem and the fix; every `bnrepro-*` command prints it as one
line, `<command>: error: <message>`, and exits with the error's `exit_status`. Anything else is a
bug and keeps its traceback. HYDRA_FULL_ERROR=1 shows the traceback of a user error too.

Exit statuses (README "Exit statuses"):
    0  done (a preempted run that checkpointed, and requeued under SLURM, included)
    1  a bug: a traceback follows
    2  EXIT_USER_ERROR: bad config, data, checkpoint, run folder or a missing optional dependency
    3  EXIT_DIVERGED: training diverged where divergence was not expected
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad config, data, checkpoint or run folder: the message says what to do
EXIT_DIVERGED = 3  # training diverged (non-finite loss or weights) where it was not expected


class UserError(RuntimeError):
    """A problem in what the user gave (config, data, checkpoint, run folder), not in the code."""

    exit_status = EXIT_USER_ERROR


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and a value that does."""


class DataError(UserError, FileNotFoundError):
    """Data that is missing or not where data.root says; the message says where to point."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency that this command needs is not installed."""


class Diverged(UserError):
    """Training produced non-finite values where divergence was not expected."""

    exit_status = EXIT_DIVERGED


# Run folders of this process's jobs that diverged where trainer.expect_divergence was false
# (train.train_job adds them); exit_diverged_after turns them into the command's exit status.
UNEXPECTED_DIVERGENCE: list[str] = []


@contextlib.contextmanager
def exit_diverged_after() -> Iterator[None]:
    """Run a training command's jobs, then exit EXIT_DIVERGED if any diverged unexpectedly: a job
    itself returns, so a -m sweep runs every job first."""
    UNEXPECTED_DIVERGENCE.clear()
    yield
    if UNEXPECTED_DIVERGENCE:
        sys.exit(EXIT_DIVERGED)


# The user's HYDRA_FULL_ERROR while a Hydra command runs (config.run_hydra_app sets Hydra's own
# to 1 to see its errors); a SLURM job inherits both.
FULL_ERROR_ENV = "BNREPRO_FULL_ERROR"


def full_error() -> bool:
    """HYDRA_FULL_ERROR=1: the user asked for tracebacks (Hydra's own convention)."""
    return os.environ.get(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ' | ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " | ".join(lines) or type(error).__name__


def report(program: str, error: BaseException) -> None:
    """Print `<program>: error: <message>` to stderr (flushed: the line must reach a SLURM log)."""
    print(f"{program}: error: {one_line(error)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def user_errors_exit(program: str) -> Iterator[None]:
    """Inside: a UserError ends the process with one line and its exit status; anything else
    keeps its traceback. What every argparse command's main() runs under."""
    try:
        yield
    except UserError as e:
        if full_error():
            raise
        report(program, e)
        raise SystemExit(e.exit_status) from None


def require(module: str, extra: str, program: str) -> object:
    """Import an optional dependency, or say which extra installs it (MissingExtraError)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{program} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'bnrepro[{extra}]' (or pip install -e '.[{extra}]' in a checkout)"
        ) from e
