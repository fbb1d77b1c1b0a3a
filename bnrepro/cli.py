"""Every bnrepro-* command: its entry point and its one error path.

    bnrepro-train [overrides]        Hydra app (configs/train.yaml)    -> bnrepro.train.train
    bnrepro-ensemble [overrides]     Hydra app (configs/ensemble.yaml) -> bnrepro.evaluation.ensemble
    bnrepro-plan [-m] [overrides]    configs/plan.yaml, Hydra's sweep syntax -> bnrepro.plan
    bnrepro-report, -fig1, -dashboard, -synthetic, -bn-stats, -convert: argparse, main(argv)
    python -m bnrepro.train [overrides]   (torchrun) = bnrepro-train

Light on purpose: `--help`, `--cfg job` and shell completion need Hydra and the YAML only, so
torch, timm and the training loop are imported once a job actually starts.

The one error path (bnrepro/errors.py): a CommandError (a UserError: bad config, data,
checkpoint, run folder, missing extra; or Diverged) ends the command with one line,
`<command>: error: <message>`, and its exit status; Hydra's own refusals (an unknown key, a
missing config file, an override that does not parse) too; Ctrl-C is one line and status 130.
Anything else is a bug and keeps its traceback; HYDRA_FULL_ERROR=1 keeps every traceback. No
other module prints and exits. Launched as several processes (torchrun, srun), only rank 0 prints
the line; every rank exits with the status, and under torchrun each hands the line to torchrun's
failure report (torchrun itself exits 1 for any failed rank: it does not pass a status on).

Nothing left behind: the run folder of a Hydra command (or a -m sweep's folder) is made by
`OutputFolders` just before Hydra would make it, remembering which folders it made; a refused
start takes them back while they are still empty, and Hydra's multirun.yaml with a sweep
folder none of whose jobs was accepted. Also on the SIGTERM with which torchrun stops the other
ranks when one refuses: until the run's own handler takes over, SIGTERM ends the command as an
exception, so its folders are taken back too.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnrepro import distributed
from bnrepro.checkpoint import make_folders, remove_made
from bnrepro.config import CONFIG_DIR, composition_error
from bnrepro.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    FULL_ERROR_ENV,
    CommandError,
    ConfigError,
    full_error,
    one_line,
    require,
)


def report(program: str, error: BaseException | str) -> None:
    """Print `<program>: error: <message>` to stderr (flushed: the line must reach a SLURM log),
    on rank 0 alone when a launcher started several processes (every rank raises the same
    error: distributed.agree); under torchrun also into its failure report."""
    line = f"{program}: error: {error if isinstance(error, str) else one_line(error)}"
    distributed.tell_launcher(line)
    if distributed.launched_rank() == 0:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def command_errors(program: str) -> Iterator[None]:
    """Inside: a CommandError ends the process with one line (unless its job printed it already)
    and its exit status, Ctrl-C with one line and EXIT_INTERRUPTED; anything else keeps its
    traceback."""
    try:
        yield
    except CommandError as e:
        if full_error():
            raise
        if not e.reported:
            report(program, e)
        raise SystemExit(e.exit_status) from None
    except KeyboardInterrupt:
        if full_error():
            raise
        report(program, "interrupted (Ctrl-C)")
        raise SystemExit(EXIT_INTERRUPTED) from None


# ---- the folders a Hydra command makes -------------------------------------------------------

_MADE: list[Path] = []  # what OutputFolders made in this command, outermost first


class OutputFolders(Callback):
    """Hydra callback (hydra.callbacks in configs/train.yaml, configs/ensemble.yaml): makes the
    run folder (a -m sweep: its folder) just before Hydra would, so that one that cannot be made
    is one line, and remembers which folders it made (`_MADE`) for `take_back`."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        # Checked here too, before any folder: under torchrun a rank that refused in `job` and
        # took its folder back races the others, whose Hydra makes it again.
        _check(config, config_name)
        _make(config.hydra.run.dir, "run folder")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _make(config.hydra.sweep.dir, "sweep folder")


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM before the run has its own handler (distributed.Preemption): torchrun sends it to
    # the other ranks when one refuses to start; as an exception it still lets run_hydra_app
    # take back the folder this rank made (Python's default would end the process on the spot).
    raise SystemExit(128 + signum)


class _Unmade(BaseException):
    """A folder OutputFolders could not or would not make (its CommandError in args[0]), carried
    past Hydra's callback runner, which turns any Exception into a warning."""


def _check(config: DictConfig, config_name: str | None) -> None:
    from omegaconf import OmegaConf

    from bnrepro.schema import SCHEMAS, check

    if config_name in SCHEMAS:
        try:
            check(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]),
                  SCHEMAS[config_name])  # fmt: skip
        except CommandError as e:
            raise _Unmade(e) from None


def _make(folder: str, what: str) -> None:
    signal.signal(signal.SIGTERM, _terminated)  # restored by run_hydra_app
    try:
        _MADE.extend(make_folders(folder, what))
    except CommandError as e:
        raise _Unmade(e) from None


def take_back(folder: str | Path) -> None:
    """After a refused start: remove `folder` and the folders above it that this command made,
    while they are empty; a sweep folder left with Hydra's multirun.yaml alone (no job of it was
    accepted) goes too. Nothing that was there before the command, nothing written into."""
    folder = Path(folder).absolute()
    for made in map(Path, _MADE):
        if (made / "multirun.yaml").is_file() and {p.name for p in made.iterdir()} == {
            "multirun.yaml"
        }:
            (made / "multirun.yaml").unlink()  # Hydra's, written into a folder made for it
    remove_made(folder, _MADE)


def run_hydra_app(
    app: Callable[[], None], argv: list[str] | None, program: str, config_name: str
) -> None:
    """Run a @hydra.main function on `argv` (the command line after the program name; None =
    the process's own), ending a CommandError from the job (see `job`) or a refusal of Hydra's
    own in one line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _MADE.clear()
    # Hydra prints its errors itself unless HYDRA_FULL_ERROR=1: set it for the app, so that its
    # errors come here; the user's own setting travels in FULL_ERROR_ENV (SLURM jobs inherit both).
    # Both are restored afterwards: a later command started from this process (a test, a
    # notebook) must see the user's HYDRA_FULL_ERROR, not this run's.
    full_error_set_here = FULL_ERROR_ENV not in os.environ
    os.environ.setdefault(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR", ""))
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Hydra leaves its last job's config behind; a config composed later in this process (a
    # test's) must not take its run name from it (${sweep_tag:} reads it).
    hydra_config = HydraConfig.instance().cfg
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with command_errors(program):
            try:
                app()
            except _Unmade as e:
                raise e.args[0] from None
            except BaseException:  # a sweep none of whose jobs was accepted: its folder goes
                for made in list(_MADE):
                    take_back(made)
                raise
    except (HydraException, OmegaConfBaseException) as e:  # composing the config failed
        if full_error() or getattr(e, "in_job", False):
            raise  # raised by the job's code: a bug
        message = composition_error(e, config_name)
        print(f"{program}: error: {message}. `{program} --help` lists the config groups, "
              f"`{program} --cfg job` prints the config", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        HydraConfig.instance().cfg = hydra_config
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
        if full_error_set_here:
            os.environ.pop(FULL_ERROR_ENV, None)


@contextlib.contextmanager
def job(program: str, cfg: DictConfig, config_name: str) -> Iterator[None]:
    """Around the body of a @hydra.main function: check the composed config before the job does
    anything; end a CommandError in one line and its exit status (here: around the job, Hydra
    would add lines of its own). In a multirun a failing job prints its line when it fails and
    raises on, so Hydra's launcher goes on to the next job and the command still exits with the
    status of the first failure (run_hydra_app)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bnrepro.schema import SCHEMAS, check

    try:
        check(cfg, SCHEMAS[config_name])
        yield
    except CommandError as e:
        take_back(hydra_run_dir())  # a refused start leaves no folder behind
        if full_error():
            raise
        report(program, e)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(e.exit_status) from None
        e.reported = True
        raise
    except Exception as e:
        with contextlib.suppress(AttributeError):  # an exception type without a __dict__
            e.in_job = True  # the code's, whatever its type: not a composition error
        raise


def hydra_run_dir() -> str:
    """The run folder Hydra gave this job (hydra.run.dir, or the sweep's job folder)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def hydra_overrides() -> list[str]:
    """This job's command-line overrides, as Hydra records them."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


class SweepReport(Callback):
    """bnrepro-train's Hydra callback (configs/train.yaml, hydra.callbacks): a -m sweep names its
    runs by the keys it varies (bnrepro/sweeps.py), and a sweep whose jobs ran in this process
    (Hydra's local launcher) ends with a table of them and, over several experiments, their
    comparison and plot (bnrepro/figures/compare.py; SLURM: hydra_plugins/bnrepro_launcher)."""

    def __init__(self) -> None:
        self.expected, self.jobs, self.pid = 0, [], None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from omegaconf import read_write

        from bnrepro import sweeps
        from bnrepro.config import sweep

        hydra = config.hydra
        arguments = sweeps.sweep_arguments(hydra.overrides.task, hydra.sweeper.get("params"))
        # Every job gets the keys the sweep does not vary as Hydra's own override_dirname
        # exclusions (hydra.overrides.hydra is what each job is composed with, besides its own).
        fixed = ",".join(f"'{key}'" for key in sweeps.fixed_keys(arguments))
        with read_write(hydra.overrides.hydra):
            hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{fixed}]"
            )
        self.expected, self.jobs, self.pid = len(sweep(arguments)), [], os.getpid()
        self.sweep_dir = str(hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if self.pid != os.getpid():  # a single run, or a job on a SLURM node: not the sweep's end
            return
        self.jobs.append(job_return)
        if len(self.jobs) == self.expected:
            from bnrepro.figures import compare

            print(compare.sweep_report(self.sweep_dir, compare.runs_of(self.jobs)), flush=True)


# ---- the Hydra commands --------------------------------------------------------------------


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> None:
    with job("bnrepro-train", cfg, "train"):
        from bnrepro.train import train_job

        summary = train_job(cfg, hydra_run_dir(), hydra_overrides())
        if summary["requeued"]:
            # Leave without returning a result: under hydra-submitit-launcher a returned result
            # would mark the job done, and the launcher would stop waiting for its requeued
            # continuation.
            raise SystemExit(0)


@hydra.main(config_path=CONFIG_DIR, config_name="ensemble", version_base="1.3")
def _ensemble(cfg: DictConfig) -> None:
    with job("bnrepro-ensemble", cfg, "ensemble"):
        from bnrepro.evaluation.ensemble import evaluate_ensemble

        evaluate_ensemble(cfg, hydra_run_dir())


def bnrepro_train(argv: list[str] | None = None) -> None:
    """bnrepro-train [overrides]: see bnrepro/train.py and configs/train.yaml. A run that
    diverged unexpectedly makes the command exit EXIT_DIVERGED (in a -m sweep once every job
    has run)."""
    run_hydra_app(_train, argv, "bnrepro-train", "train")


def bnrepro_ensemble(argv: list[str] | None = None) -> None:
    """bnrepro-ensemble [overrides]: see bnrepro/evaluation/ensemble.py, configs/ensemble.yaml."""
    run_hydra_app(_ensemble, argv, "bnrepro-ensemble", "ensemble")


def bnrepro_plan(argv: list[str] | None = None) -> None:
    """bnrepro-plan [-m] [overrides]: what a run will cost before it starts (bnrepro/plan.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with command_errors("bnrepro-plan"):
        from bnrepro import plan

        if {"-h", "--help"} & set(argv):
            print(plan.__doc__)
            return
        multirun = bool({"-m", "--multirun"} & set(argv))
        overrides = [a for a in argv if a not in ("-m", "--multirun")]
        unknown = [a for a in overrides if a.startswith("-")]
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]}: bnrepro-plan takes -m, --help and "
                              "overrides (bnrepro-train's and plan.*)")  # fmt: skip
        plan.print_plans(overrides, multirun=multirun)


# ---- the argparse commands: <module>.main(argv) under the one error path --------------------


def _argparse_command(program: str, module: str, needs: tuple[str, ...] = (), extra: str = ""):
    """The console script `program`: import `module` (after the optional packages it `needs`,
    from the `extra`) only when it runs, then its main(argv)."""

    def command(argv: list[str] | None = None) -> None:
        with command_errors(program):
            for package in needs:
                require(package, extra, program)
            importlib.import_module(module).main(argv)

    command.__doc__ = f"{program}: see {module.replace('.', '/')}.py"
    return command


bnrepro_report = _argparse_command(  # Figures 2-4 from run folders
    "bnrepro-report", "bnrepro.figures.report", ("matplotlib", "pandas"), "figures"
)
bnrepro_fig1 = _argparse_command(  # Figure 1 on MNIST
    "bnrepro-fig1", "bnrepro.figures.fig1", ("matplotlib",), "figures"
)
bnrepro_dashboard = _argparse_command("bnrepro-dashboard", "bnrepro.figures.dashboard")
bnrepro_synthetic = _argparse_command("bnrepro-synthetic", "bnrepro.data.synthetic")
bnrepro_bn_stats = _argparse_command("bnrepro-bn-stats", "bnrepro.evaluation.bn_stats")
bnrepro_convert = _argparse_command("bnrepro-convert", "bnrepro.weights")  # the Caffe weights
