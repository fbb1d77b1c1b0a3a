"""hydra-submitit-launcher's launchers, saying what they submitted (configs/hydra/launcher/slurm.yaml):

    [hydra] Submitit 'slurm' sweep output dir : outputs/multirun/2026-12-07_10-00-00
    [hydra] 	#0 : experiment=bn_x30 optim.lr=0.01
    submitted job 4242_0: run folder outputs/multirun/.../0_bn_x30_lr0.01_seed0, log outputs/multirun/.../.submitit/4242_0/4242_0_0_log.out
    ...
    sweep outputs/multirun/2026-12-07_10-00-00: 2 jobs, 2 done      (once every job has ended)

Each job's id, run folder and log as it is submitted (the command then waits for the jobs, as the
plugin's own launcher does), and the sweep's table of jobs at the end (bnrepro/figures/compare.py).
The jobs themselves run exactly as under the plugin's launcher: `launch` builds its executor the
way hydra-submitit-launcher 1.2's does and hands each job the same arguments.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import filter_overrides
from hydra_plugins.hydra_submitit_launcher import config as submitit_config
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class ReportingLauncher(submitit_launcher.BaseSubmititLauncher):
    """A submitit launcher that prints each job's id, run folder and log as it submits it, and
    the sweep's table of jobs once they have all ended."""

    def _executor(self):  # -> submitit.AutoExecutor, as BaseSubmititLauncher.launch builds it
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        folder = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            folder[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **folder)
        base = set(OmegaConf.structured(submitit_config.BaseQueueConf).keys())
        executor.update_parameters(**{
            key if key in base else f"{self._EXECUTOR}_{key}": value
            for key, value in self.params.items() if key not in init_keys
        })  # fmt: skip
        return executor

    def run_folder(self, overrides: list[str], num: int) -> Path:
        """The folder job `num` will run in: its config composed as the job composes it, with
        Hydra's config set as run_job sets it before it names the folder."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)
        try:
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        finally:
            HydraConfig.instance().cfg = saved

    def launch(self, job_overrides, initial_job_idx: int) -> Any:
        from bnrepro.figures import compare

        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        arguments = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            arguments.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                              Singleton.get_state()))  # fmt: skip
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        for (overrides, _, num, _, _), job in zip(arguments, jobs, strict=True):
            print(f"submitted job {job.job_id}: run folder {self.run_folder(overrides, num)}, "
                  f"log {job.paths.stdout}", flush=True)  # fmt: skip
        returns = [job.results()[0] for job in jobs]
        print(compare.sweep_report(sweep_dir, compare.runs_of(returns)), flush=True)
        return returns


class SlurmLauncher(ReportingLauncher):
    """hydra/launcher=slurm: SLURM jobs (one array job per sweep)."""

    _EXECUTOR = "slurm"


class LocalLauncher(ReportingLauncher):
    """submitit's local executor (processes on this machine): the same path without a cluster."""

    _EXECUTOR = "local"
