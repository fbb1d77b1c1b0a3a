"""The errors a command ends with on purpose, and their exit statuses.

A `CommandError` is an expected end: its message names the problem and the fix, and the command
layer (bnrepro/cli.py, the one error path) prints it as one line, `<command>: error: <message>`,
and exits with the error's `exit_status`. Anything else is a bug and keeps its traceback.
HYDRA_FULL_ERROR=1 shows the traceback of a CommandError too.

Exit statuses (README "Exit statuses"):
    0  done (a preempted run that checkpointed, and requeued under SLURM, included)
    1  a bug: a traceback follows
    2  EXIT_USER_ERROR: bad config, data, checkpoint, run folder or a missing optional dependency
    3  EXIT_DIVERGED: training diverged where divergence was not expected
  130  EXIT_INTERRUPTED: Ctrl-C (training first checkpoints and stops as on SIGTERM: 0)
"""

from __future__ import annotations

import importlib
import os

EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad config, data, checkpoint or run folder: the message says what to do
EXIT_DIVERGED = 3  # training diverged (non-finite loss or weights) where it was not expected
EXIT_INTERRUPTED = 130  # Ctrl-C outside training's own handling (128 + SIGINT, the shell's)


class CommandError(Exception):
    """An expected end of a command, with a documented exit status: one line, no traceback."""

    exit_status = EXIT_USER_ERROR
    reported = False  # set once its line is printed (a -m sweep prints each job's as it fails)


class UserError(CommandError, RuntimeError):
    """A problem in what the user gave (config, data, checkpoint, run folder), not in the code."""

    exit_status = EXIT_USER_ERROR


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and a value that does."""


class DataError(UserError, FileNotFoundError):
    """Data that is missing or not where data.root says; the message says where to point."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency that this command needs is not installed."""


class Diverged(CommandError):
    """A run diverged (non-finite loss or weights) where trainer.expect_divergence was false."""

    exit_status = EXIT_DIVERGED


# The user's HYDRA_FULL_ERROR while a Hydra command runs (cli.run_hydra_app sets Hydra's own to 1
# to see its errors); a SLURM job inherits both.
FULL_ERROR_ENV = "BNREPRO_FULL_ERROR"


def full_error() -> bool:
    """HYDRA_FULL_ERROR=1: the user asked for tracebacks (Hydra's own convention)."""
    return os.environ.get(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ' | '). An error
    raised in a DataLoader worker comes back wrapped in the worker's traceback: its own message
    is what follows the last `<module>.<ErrorType>: `."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        head = f"{type(error).__module__}.{type(error).__name__}: "
        text = text.rsplit(head, 1)[-1] if head in text else text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines) or type(error).__name__


def first_names(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 4 more': a list in an error message, short whatever its length."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(map(str, names[:shown])) + more


def require(module: str, extra: str, program: str) -> object:
    """Import an optional dependency, or say which extra installs it (MissingExtraError)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{program} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'bnrepro[{extra}]' (or pip install -e '.[{extra}]' in a checkout)"
        ) from e
