"""Where the YAML lives, and the quantities derived from a composed config.

The YAML is in the repository's top-level `configs/`; an installed wheel carries the same files
as `bnrepro/configs/`. `CONFIG_DIR` is whichever exists, so Hydra apps work both ways.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig

from bnrepro.errors import EXIT_USER_ERROR, FULL_ERROR_ENV, UserError, full_error, one_line, report
from bnrepro.paper import PAPER_BATCH

_PKG = Path(__file__).resolve().parent
CONFIG_DIR = str(_PKG / "configs" if (_PKG / "configs").is_dir() else _PKG.parent / "configs")


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The config a Hydra app would get, for tests and notebooks (no run folder is made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [], return_hydra_config=False)


def run_hydra_app(app: Callable[[], None], argv: list[str] | None, program: str) -> None:
    """Run a @hydra.main function on `argv` (the command line after the program name; None =
    the process's own): what every Hydra command's main(argv) does.

    A user error ends in one line and its exit status (bnrepro/errors.py): a UserError from the
    job (see `hydra_job`) and Hydra's own refusals (an unknown key, a missing config file, an
    override that does not parse), which Hydra would print over several lines. Anything else is
    a bug and keeps its traceback. HYDRA_FULL_ERROR=1 keeps every traceback.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    # Hydra prints its errors itself unless HYDRA_FULL_ERROR=1: set it for the app, so that its
    # errors come here; the user's own setting travels in FULL_ERROR_ENV (SLURM jobs inherit both).
    # Both are restored afterwards: a later command started from this process (a test, a
    # notebook) must see the user's HYDRA_FULL_ERROR, not this run's.
    full_error_set_here = FULL_ERROR_ENV not in os.environ
    os.environ.setdefault(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR", ""))
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except UserError as e:
        if full_error():
            raise
        if not getattr(e, "reported", False):
            report(program, e)
        raise SystemExit(e.exit_status) from None
    except (HydraException, OmegaConfBaseException) as e:  # composing the config failed
        if full_error() or getattr(e, "in_job", False):
            raise  # raised by the job's code: a bug
        cause = f" ({one_line(e.__cause__)})" if e.__cause__ is not None else ""
        message = one_line(e).split(" | Config search path:")[0]  # where Hydra looked: noise
        print(f"{program}: error: {message}{cause}. `{program} --help` lists the config "
              f"groups, `{program} --cfg job` prints the config", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
        if full_error_set_here:
            os.environ.pop(FULL_ERROR_ENV, None)


@contextlib.contextmanager
def hydra_job(program: str, cfg: DictConfig, config_name: str) -> Iterator[None]:
    """Around the body of a @hydra.main function: check the composed config's types before the
    job does anything, and end a UserError in one line with its exit status. In a multirun the
    error is printed when its run fails and raised on, so Hydra's launcher goes on to the next run
    and the command still exits with the status of the first failure (run_hydra_app)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bnrepro.schema import SCHEMAS, check_types

    try:
        check_types(cfg, SCHEMAS[config_name])
        yield
    except UserError as e:
        if full_error():
            raise
        report(program, e)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            e.reported = True
            raise
        raise SystemExit(e.exit_status) from None
    except Exception as e:
        with contextlib.suppress(AttributeError):  # an exception type without a __dict__
            e.in_job = True  # the code's, whatever its type: not a composition error
        raise


def effective_lr(lr: float, global_batch: int) -> float:
    """The paper's LR belongs to a batch of 32; scale it linearly with the global batch
    (Goyal et al. 2017; docs/paper.md section 3)."""
    return lr * global_batch / PAPER_BATCH


def model_kwargs(model_cfg: DictConfig, num_classes: int, in_chans: int) -> dict:
    """Keyword arguments for timm.create_model(model_cfg.name, **kwargs): every key of the model
    config except those that are not the network's own (name, sync_bn)."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "sync_bn")}
    return dict(kwargs, num_classes=num_classes, in_chans=in_chans)
