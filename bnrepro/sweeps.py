"""What a -m sweep adds to a run's name, and the one-line forms a sweep reports itself in.

A run folder is fixed per (experiment, seed): `<out_dir>/<experiment>_seed<seed>`, which is what
makes resume and requeue automatic. In a -m sweep the keys it varies besides those go into the
run name (and so the job's folder and its W&B name), in a short form:

    bnrepro-train -m experiment=bn_x30 optim.lr=0.01,0.03   -> 0_bn_x30_lr0.01_seed0, 1_bn_x30_lr0.03_seed0

The sweep's own keys are known where it is launched (`swept_keys`, from the command line and
hydra.sweeper.params); cli.SweepReport passes them on to every job as Hydra's own
hydra.job.config.override_dirname.exclude_keys (everything the sweep does *not* vary), and the
resolver `${sweep_tag:}` in run_name builds the suffix from the job's overrides. Hydra's
`${hydra:job.override_dirname}` then names the same keys. A single run's tag is empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Keys a run name shows anyway: the experiment (its experiment_name), the seed, and
# bn_x30_ensemble's member (its run_name spells member<i>; its seed follows the member).
NAMED_ANYWAY = ("experiment", "seed", "member")


def _parsed(overrides: Iterable[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def sweep_arguments(task_overrides: Iterable[str], sweeper_params: dict | None) -> list[str]:
    """A sweep's arguments as Hydra's basic sweeper takes them: hydra.sweeper.params first, the
    command line after (a key on both: the command line's wins)."""
    params = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    return [*params, *task_overrides]


def swept_keys(arguments: Iterable[str]) -> list[str]:
    """The keys (or config groups) a sweep's arguments vary: `optim.lr=0.01,0.03`,
    `choice(...)`, `range(...)`, `glob(...)`; the last value of a key decides, as in Hydra."""
    last = {o.key_or_group: o.is_sweep_override() for o in _parsed(arguments)}
    return [key for key, swept in last.items() if swept]


def fixed_keys(arguments: Iterable[str]) -> list[str]:
    """The keys a sweep's arguments give one value: what its run names leave out."""
    swept = set(swept_keys(arguments))
    keys = dict.fromkeys(o.key_or_group for o in _parsed(arguments) if not o.is_hydra_override())
    return [key for key in keys if key not in swept]


def short_form(name: str, value: str) -> str:
    """`lr`, `0.01` -> `lr0.01`; a word value gets a dash: `data`, `mnist` -> `data-mnist`.
    Path-safe: anything but letters, digits and `._+-` becomes a dash."""
    text = re.sub(r"[^\w.+-]+", "-", value).strip("-") or "none"
    return f"{name}{text}" if re.match(r"[\d.+-]", text) else f"{name}-{text}"


def tag(pairs: list[tuple[str, str]]) -> str:
    """`_lr0.01_width_mult0.5`: the short forms of (key, value) pairs, each key by its last part,
    in their order; empty for none. Keys that end alike keep their whole names (`optim.lr`)."""
    ends = [re.split(r"[./]", key)[-1] for key, _ in pairs]
    return "".join(
        "_" + short_form(end if ends.count(end) == 1 else key.replace("/", "."), value)
        for (key, value), end in zip(pairs, ends, strict=True)
    )


def job_tag(task_overrides: Iterable[str], excluded: Iterable[str]) -> str:
    """A sweep job's tag: its overrides of the keys the sweep varies (all but `excluded` and
    NAMED_ANYWAY)."""
    skip = {*excluded, *NAMED_ANYWAY}
    pairs = [
        (o.key_or_group, o.get_value_element_as_str())
        for o in _parsed(task_overrides)
        if o.key_or_group not in skip and not o.is_delete()
    ]
    return tag(pairs)


def sweep_tag() -> str:
    """The `${sweep_tag:}` resolver: in a -m sweep's job, the tag of the keys the sweep varies
    (read from the job's Hydra config: its overrides and hydra.job.config.override_dirname's
    exclude_keys); "" in a single run and outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return ""
    return job_tag(hydra.overrides.task, hydra.job.config.override_dirname.exclude_keys)


def suggested_run_name(config: dict, keys: list[str]) -> str:
    """A run name for `config` that shows its values of `keys` (dotted), in the sweep's form:
    `bn_x30_seed0` with optim.lr -> `bn_x30_lr0.01_seed0`."""
    pairs = []  # values as the command line writes them (false, null)
    for key in keys:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        text = "null" if node is None else str(node).lower() if isinstance(node, bool) else node
        pairs.append((key, str(text)))
    run_name, suffix = str(config.get("run_name")), f"_seed{config.get('seed')}"
    stem = run_name.removesuffix(suffix)
    return f"{stem}{tag(pairs)}{suffix if stem != run_name else ''}"
