"""Fault injection (issue 20): what a real ImageNet copy, a shared cluster filesystem and a tired
researcher produce. Every case asserts the exit status, the one line that names the problem and
the fix, and that every file that was there before (user data, checkpoints, metrics, summaries,
the synthetic cache) is byte-identical afterwards, with no new file or folder left behind.

The commands run as their console scripts run them (bnrepro.cli's functions: the same error path
and SystemExit status) in this process, which keeps each case under a second or two; the cases
that need a process of their own (a file-size limit, a signal, torchrun) run one.

Classes (the issue's): data loss; writes before a refusal; lost or merged results; silent wrong
results; tracebacks for user mistakes; faults (full disk, Ctrl-C); torchrun.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN

from bnrepro import checkpoint, cli
from bnrepro import data as D
from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR

# ---------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under `roots`: a file's sha256, a folder, a link's target. Equal snapshots:
    nothing changed, nothing removed, nothing (not even an empty folder) added."""
    out = {}
    for root in map(Path, roots):
        if not os.path.lexists(root):
            out[str(root)] = "absent"
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                if p.is_symlink():
                    out[str(p)] = "link " + os.readlink(p)
                elif p.is_dir():
                    out[str(p)] = "folder"
                else:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(root)] = (
            "folder" if root.is_dir() else hashlib.sha256(root.read_bytes()).hexdigest()
        )
    return out


def run(capsys, command, *args: str) -> tuple[int, str]:
    """A console command as its script runs, in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        command([str(a) for a in args])
        status = 0
    except SystemExit as e:
        status = e.code or 0
    return status, capsys.readouterr().err


def refused(result: tuple[int, str], *words: str, status: int = EXIT_USER_ERROR) -> str:
    """The command ended with `status` and exactly one error line holding `words`, no traceback
    (warnings about skipped files may precede it)."""
    code, err = result
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == status, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def refused_unchanged(capsys, roots, command, *args, words=(), status=EXIT_USER_ERROR) -> str:
    """Refused in one line (`words`), and every entry under `roots` as it was."""
    before = snapshot(*roots)
    line = refused(run(capsys, command, *args), *words, status=status)
    assert snapshot(*roots) == before
    return line


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_data_root) -> Path:
    """A finished tiny run (checkpoints at 48 and 96 images, best.pt, metrics, summary): its
    out_dir. Copy it before changing anything (`run_copy`)."""
    out = tmp_path_factory.mktemp("trained")
    T.train(compose("train", [*TINY_TRAIN, f"data.root={tiny_data_root}", f"out_dir={out}"]))
    return out


@pytest.fixture
def run_copy(trained, tmp_path, tiny_data_root) -> tuple[Path, list[str]]:
    """(a copy of the trained run's out_dir, the overrides that resume it)."""
    out = copy_tree(trained, tmp_path / "out")
    return out, [*TINY_TRAIN, f"data.root={tiny_data_root}", f"out_dir={out}"]


def train_cmd(capsys, *args):
    return run(capsys, cli.bnrepro_train, *args)


@pytest.fixture
def tree(tmp_path, tiny_data_root) -> Path:
    """A copy of the tiny synthetic tree, as data=imagenet reads it (10 classes, 16 + 4 each)."""
    return copy_tree(Path(tiny_data_root), tmp_path / "imagenet")


TINY_IMAGENET = [o for o in TINY_TRAIN if not o.startswith("data.synthetic.")]  # data=synthetic's


def imagenet(root: Path, out: Path) -> list[str]:
    return [*TINY_IMAGENET, "data=imagenet", f"data.root={root}", "data.num_classes=10",
            "data.train_crop=32", "data.eval_resize=36", "data.eval_crop=32", f"out_dir={out}"]  # fmt: skip


# ---------------------------------------------------------------- data loss


@pytest.mark.parametrize(
    "make, words",
    [
        # a folder of the user's that happens to hold a manifest.json (deleted before issue 20)
        (lambda r: (r / "manifest.json").write_text('{"experiment": "mine"}'),
         ["is not a synthetic tree", "manifest.json is not the generator's"]),
        # not JSON at all (a traceback before issue 20)
        (lambda r: (r / "manifest.json").write_text("not json {"),
         ["is not a synthetic tree", "no readable manifest.json"]),
        # no manifest (refused before too)
        (lambda r: (r / "thesis.tex").write_text("precious"),
         ["is not a synthetic tree", "no readable manifest.json"]),
    ],
    ids=["foreign-manifest", "manifest-not-json", "no-manifest"],
)  # fmt: skip
def test_synthetic_never_takes_a_folder_it_cannot_prove_its_own(capsys, tmp_path, make, words):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my notes")
    make(root)
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN, f"data.root={root}",
                      f"out_dir={tmp_path / 'out'}", words=words)  # fmt: skip


def test_synthetic_keeps_its_own_tree_once_a_user_file_is_inside(capsys, tmp_path, tiny_data_root):
    """The generator's tree with a file of the user's added and other parameters asked for: the
    tree is not provably the generator's alone any more, so it is not replaced (it was: renamed
    aside and deleted, user file included)."""
    root = copy_tree(Path(tiny_data_root), tmp_path / "syn")
    (root / "val" / "my_labels.csv").write_text("precious")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN, f"data.root={root}",
                      "data.num_classes=5", f"out_dir={tmp_path / 'out'}",
                      words=["is not a synthetic tree", "val/ holds other files"])  # fmt: skip


def test_synthetic_data_root_that_is_a_file(capsys, tmp_path):
    (tmp_path / "data").write_text("a file")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN,
                      f"data.root={tmp_path / 'data'}", f"out_dir={tmp_path / 'out'}",
                      words=["is a file, not a folder"])  # fmt: skip


def test_synthetic_replaces_its_own_tree_and_only_that(tmp_path):
    """The one removal the generator does: its own tree (manifest keys, files by name and count)
    when asked for other parameters; no temporary folder is left."""
    from bnrepro.data.synthetic import ensure_tree

    root = ensure_tree(tmp_path / "syn", **SMALL)
    ensure_tree(root, **{**SMALL, "train_per_class": 3})
    assert json.loads((root / "manifest.json").read_text())["train_per_class"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]


SMALL = dict(num_classes=3, train_per_class=2, val_per_class=1, min_side=20, max_side=30,
             quality=90, seed=1)  # fmt: skip
READER = f"""
import sys, time
from bnrepro.data.synthetic import ensure_tree
ensure_tree(sys.argv[1], **{SMALL!r})  # and reads it, as a run does, until it is killed
print("reading", flush=True)
time.sleep(600)
"""


def test_a_synthetic_tree_another_run_reads_is_not_replaced_under_it(capsys, tmp_path):
    """A run with other data.synthetic.* in the same data.root regenerated the tree under a
    run reading it (which then crashed)."""
    root = tmp_path / "syn"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        while reader.stdout.readline().strip() != "reading":  # after the generator's line
            assert reader.poll() is None
        refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN, f"data.root={root}",
                          f"out_dir={tmp_path / 'out'}", words=["another run is reading"])  # fmt: skip
    finally:
        reader.kill()
        reader.wait()


def _make(root, **changes) -> None:
    from bnrepro.data.synthetic import ensure_tree

    ensure_tree(root, **{**SMALL, **changes})


def test_ranks_replacing_a_tree_at_once_leave_one_tree(tmp_path):
    """Every rank of a job with new data.synthetic.* replaces the old tree: one does, the others
    wait for it (they are no readers of the old tree), and none is refused."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    first = ctx.Process(target=_make, args=(tmp_path / "syn",))  # a process that is gone now
    first.start()
    first.join()
    procs = [ctx.Process(target=_make, args=(tmp_path / "syn",), kwargs={"train_per_class": 3})
             for _ in range(3)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert json.loads((tmp_path / "syn" / "manifest.json").read_text())["train_per_class"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:5000]), ["truncated or corrupt"]),
        (lambda p: torch.save({**torch.load(p, weights_only=True),
                               "format": "bnrepro-checkpoint/2"}, p),
         ["another bnrepro version", "bnrepro-checkpoint/2"]),
    ],
    ids=["truncated", "newer-format"],
)  # fmt: skip
def test_a_run_folder_whose_checkpoints_are_all_unusable_is_refused(
    capsys, run_copy, damage, words
):
    """Never restarted from scratch (it was: metrics.jsonl emptied, best.pt and summary.json
    overwritten, exit 0); the line names each file and why."""
    out, overrides = run_copy
    for p in (out / "bn_x30_seed0" / "checkpoints").glob("ckpt_*.pt"):
        damage(p)
    line = refused_unchanged(capsys, [out], cli.bnrepro_train, *overrides,
                             words=["no checkpoint it can continue", *words])  # fmt: skip
    assert "ckpt_000000000048.pt" in line and "ckpt_000000000096.pt" in line


def test_a_run_folder_with_best_and_summary_but_no_checkpoint_is_refused(capsys, run_copy):
    out, overrides = run_copy
    for p in (out / "bn_x30_seed0" / "checkpoints").glob("ckpt_*.pt"):
        p.unlink()
    refused_unchanged(capsys, [out], cli.bnrepro_train, *overrides,
                      words=["no checkpoint it can continue", "best.pt", "summary.json"])  # fmt: skip


@pytest.mark.parametrize("key", ["optimizer", "rng"])
def test_a_checkpoint_missing_keys_is_one_line(capsys, run_copy, key):
    """A KeyError traceback before issue 20."""
    out, overrides = run_copy
    for p in (out / "bn_x30_seed0" / "checkpoints").glob("ckpt_*.pt"):
        state = torch.load(p, weights_only=True)
        del state[key]
        torch.save(state, p)
    refused_unchanged(capsys, [out], cli.bnrepro_train, *overrides,
                      words=[f"lacks {key}", "no checkpoint it can continue"])  # fmt: skip


def test_resuming_weights_only_names_what_is_missing(capsys, run_copy, tmp_path):
    out, overrides = run_copy
    weights = tmp_path / "weights.pt"
    state = torch.load(out / "bn_x30_seed0/checkpoints/ckpt_000000000096.pt", weights_only=True)
    torch.save({k: state[k] for k in ("format", "arch", "classes", "model")}, weights)
    refused_unchanged(capsys, [out, weights], cli.bnrepro_train, *overrides,
                      f"trainer.resume={weights}", words=["lacks optimizer", "a run cannot continue"])  # fmt: skip


# ---------------------------------------------------------------- writes before a refusal


def test_a_refused_resume_leaves_the_shared_synthetic_cache_alone(capsys, run_copy, tmp_path):
    """Another data.num_classes in a run folder of 10: refused, and the synthetic tree it names
    (other parameters) is neither regenerated nor touched (it was regenerated first)."""
    out, overrides = run_copy
    cache = copy_tree(Path(overrides[-2].split("=", 1)[1]), tmp_path / "cache")
    args = [*overrides[:-2], f"data.root={cache}", overrides[-1], "data.num_classes=5"]
    refused_unchanged(capsys, [out, cache], cli.bnrepro_train, *args,
                      words=["holds a run with another config", "data.num_classes"])  # fmt: skip


def test_a_refused_start_leaves_no_folder_behind(capsys, tmp_path):
    """Hydra used to make the run folder (and its parents) before the job could refuse."""
    out = tmp_path / "a" / "b"
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_IMAGENET, "data=imagenet",
                      "data.root=/no/such/dir", f"out_dir={out}", words=["does not exist"])  # fmt: skip
    assert not (tmp_path / "a").exists()


def test_a_sweep_of_refused_jobs_leaves_no_sweep_folder(capsys, tmp_path):
    """Hydra's multirun.yaml and the jobs' folders went into outputs/multirun/<time>/."""
    result = train_cmd(capsys, "-m", *TINY_IMAGENET, "data=imagenet", "data.root=/no/a,/no/b",
                       f"out_dir={tmp_path}")  # fmt: skip
    assert result[0] == EXIT_USER_ERROR and result[1].count(": error: ") == 2, result[1]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_monitor_layer_is_refused_before_any_file_is_rewritten(capsys, run_copy):
    """A ValueError traceback after config.yaml and overrides.yaml were rewritten and the
    metrics truncated, before issue 20."""
    out, overrides = run_copy
    refused_unchanged(capsys, [out], cli.bnrepro_train, *overrides, "trainer.max_images=192",
                      "trainer.monitor.layers=[no_such_block]",
                      words=["trainer.monitor.layers", "no_such_block"])  # fmt: skip


def test_an_output_folder_that_cannot_be_made_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("in the way")
    for command, args in (
        (cli.bnrepro_train, TINY_TRAIN),
        (cli.bnrepro_ensemble, ["checkpoints=x.pt"]),
    ):
        refused_unchanged(capsys, [tmp_path], command, *args, f"out_dir={tmp_path / 'file' / 'out'}",
                          words=["cannot create the run folder", "Not a directory", "set out_dir"])  # fmt: skip


# ---------------------------------------------------------------- lost or merged results


def test_a_run_folder_in_use_is_refused_naming_its_holder(capsys, run_copy):
    out, overrides = run_copy
    holder = checkpoint.FolderLock(out / "bn_x30_seed0").acquire()
    try:
        line = refused_unchanged(capsys, [out], cli.bnrepro_train, *overrides,
                                 words=["is in use by pid", f"{os.getpid()}", "on host"])  # fmt: skip
    finally:
        holder.release()
    assert "since" in line


def test_a_crashed_holder_leaves_no_stuck_lock(tmp_path):
    """The kernel ends a flock with its process: a run killed with SIGKILL leaves its run.lock
    file, but the next process takes the folder."""
    code = (
        "import os, signal, sys\n"
        "from bnrepro.checkpoint import FolderLock\n"
        "FolderLock(sys.argv[1]).acquire()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120)
    assert out.returncode == -signal.SIGKILL and (tmp_path / "run.lock").is_file()
    lock = checkpoint.FolderLock(tmp_path).acquire()  # not FolderBusy
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_two_ensembles_started_in_the_same_second_get_two_folders():
    """hydra.run.dir had seconds only: both wrote one folder. Now microseconds, and each
    process holds its folder (FolderLock) whatever its name."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from bnrepro.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        dirs = {
            OmegaConf.to_container(
                hydra_compose("ensemble", ["checkpoints=x"], return_hydra_config=True).hydra.run,
                resolve=True,
            )["dir"]
            for _ in range(3)
        }
    assert len(dirs) == 3


def ensemble_args(tiny_data_root, out) -> list[str]:
    return ["crops=1", f"data.root={tiny_data_root}", *[o for o in TINY_TRAIN if o.startswith("data.")],
            "runtime.progress=false", "logger.wandb.mode=disabled", f"out_dir={out}"]  # fmt: skip


def test_an_ensemble_folder_in_use_or_holding_results_is_refused(capsys, run_copy, tmp_path,
                                                                 tiny_data_root):  # fmt: skip
    out, _ = run_copy
    folder = tmp_path / "ens"
    folder.mkdir()
    args = [
        f"checkpoints={out}",
        *ensemble_args(tiny_data_root, tmp_path),
        f"hydra.run.dir={folder}",
    ]
    holder = checkpoint.FolderLock(folder).acquire("ensemble folder")
    try:
        refused_unchanged(capsys, [out, folder], cli.bnrepro_ensemble, *args,
                          words=["ensemble folder", "is in use by pid"])  # fmt: skip
    finally:
        holder.release()
    (folder / "results.json").write_text("{}")
    refused_unchanged(capsys, [out, folder], cli.bnrepro_ensemble, *args,
                      words=["holds the results of another evaluation"])  # fmt: skip


@pytest.mark.parametrize("how", ["checkpoints-folder", "hard-link", "symlink", "copy"])
def test_one_network_reached_twice_is_refused(capsys, run_copy, tmp_path, tiny_data_root, how):
    """A run's checkpoints/ folder holds best.pt hard-linked to a ckpt; a symbolic link; a copy
    (the sha256 the ensemble records): each counted one network twice."""
    out, _ = run_copy
    ckpts = out / "bn_x30_seed0" / "checkpoints"
    last = ckpts / "ckpt_000000000096.pt"
    if how == "checkpoints-folder":
        (ckpts / "ckpt_000000000048.pt").unlink()
        os.link(last, ckpts / "best.pt.new")
        os.replace(ckpts / "best.pt.new", ckpts / "best.pt")
        specs, words = f"{ckpts}", ["same file", "a link"]
    elif how == "hard-link":
        os.link(last, tmp_path / "member.pt")
        specs, words = f"[{last},{tmp_path / 'member.pt'}]", ["same file", "a link"]
    elif how == "symlink":
        (tmp_path / "member.pt").symlink_to(last)
        specs, words = f"[{last},{tmp_path / 'member.pt'}]", ["same file", "a link"]
    else:
        shutil.copy(last, tmp_path / "member.pt")
        specs, words = f"[{last},{tmp_path / 'member.pt'}]", ["hold the same network", "sha256"]
    refused_unchanged(capsys, [out, tmp_path], cli.bnrepro_ensemble, f"checkpoints={specs}",
                      *ensemble_args(tiny_data_root, tmp_path / "ens"), words=words)  # fmt: skip


def test_bn_stats_never_overwrites_its_out_file(capsys, run_copy, tiny_data_root):
    out, _ = run_copy
    ckpt = out / "bn_x30_seed0" / "checkpoints" / "ckpt_000000000096.pt"
    refused_unchanged(capsys, [out], cli.bnrepro_bn_stats, str(ckpt), f"data.root={tiny_data_root}",
                      "--out", str(ckpt), words=["--out", "exists"])  # fmt: skip


# ---------------------------------------------------------------- silent wrong results


def test_an_unreadable_val_file_is_left_out_and_counted(tree, tiny_data_root):
    """It was replaced by the next readable file: one image counted twice, perhaps of another
    class. Now the loader leaves it out and evaluate() says how many (val/skipped)."""
    from conftest import cpu_runtime
    from torch import nn

    from bnrepro import engine

    cfg = compose("train", imagenet(tree, tree)).data
    bad = sorted((tree / "val").iterdir())[3]
    bad.write_bytes(b"not a jpeg")
    _, val_ds, _ = D.build_datasets(cfg)
    loader = D.build_val_loader(cfg, val_ds, rank=0, world_size=1)
    with pytest.warns(UserWarning, match=f"skipping unreadable image .*{bad.name}"):
        labels = torch.cat([y for _, y in loader])
    assert len(labels) == len(val_ds) - 1  # each readable file once, the bad one out
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))
    metrics = engine.evaluate(model, loader, cpu_runtime(cfg))
    assert metrics["val/skipped"] == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_whose_files_are_all_unreadable_is_refused_at_start(capsys, tree, tmp_path, split):
    for p in (tree / split).rglob("*.JPEG"):
        p.write_bytes(b"")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *imagenet(tree, tmp_path / "out"),
                      words=[f"{split} files", "are all unreadable", "intact copy"])  # fmt: skip


def test_every_val_image_unreadable_at_evaluation_is_one_line(tree):
    """A ZeroDivisionError when no val file could be read (the loader left them all out)."""
    from conftest import cpu_runtime
    from torch import nn

    from bnrepro import engine
    from bnrepro.errors import DataError

    cfg = compose("train", imagenet(tree, tree)).data
    _, val_ds, _ = D.build_datasets(cfg)
    for p in (tree / "val").iterdir():
        p.write_bytes(b"")
    loader = D.build_val_loader(cfg, val_ds, rank=0, world_size=1)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no val image could be read"):
        engine.evaluate(nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), loader, cpu_runtime(cfg))


def remove_one_train_file(root: Path) -> None:
    next((root / "train").rglob("*.JPEG")).unlink()


def test_a_resume_after_the_training_set_changed_is_refused(capsys, run_copy, tmp_path):
    """It went on as if its data position were exact."""
    out, overrides = run_copy
    data = copy_tree(Path(overrides[-2].split("=", 1)[1]), tmp_path / "data")
    remove_one_train_file(data)
    args = [*overrides[:-2], f"data.root={data}", overrides[-1], "trainer.max_images=144"]
    refused_unchanged(capsys, [out, data], cli.bnrepro_train, *args,
                      words=["training set changed", "160 files then, 159 now"])  # fmt: skip


def test_an_explicit_resume_on_changed_data_goes_on_loudly_from_the_next_epoch(tmp_path):
    ckpts = checkpoint.Checkpointer(checkpoint.RunFolder(tmp_path), keep_last=2)
    identity = {"train_files": 10, "train_sha256": "a", "val_files": 2, "val_sha256": "b"}
    from test_checkpoint import ARCH, CLASSES, fake_ckpt

    state = fake_ckpt(64, data={"epoch": 3, "images_in_epoch": 4, "identity": identity})
    checkpoint.save(tmp_path / "c.pt", state)
    changed = dict(identity, train_files=9, train_sha256="c")
    with pytest.warns(UserWarning, match="continuing from the start of epoch 4"):
        ckpt = ckpts.resume_point(str(tmp_path / "c.pt"), {}, ARCH, CLASSES, changed)
    assert checkpoint.data_position(ckpt) == (4, 0)
    ckpts.folder.checkpoints.mkdir()
    checkpoint.save(ckpts.folder.periodic(64), state)
    with pytest.raises(checkpoint.CheckpointError, match="training set changed"):
        ckpts.resume_point(None, state["config"], ARCH, CLASSES, changed)
    old = fake_ckpt(64)  # no identity: written before issue 20
    checkpoint.save(ckpts.folder.periodic(64), old)
    with pytest.warns(UserWarning, match="does not record its data's file list"):
        assert ckpts.resume_point(None, old["config"], ARCH, CLASSES, changed) is not None


def test_the_planned_synthetic_tree_is_the_one_generated(tmp_path):
    """A run checks a synthetic tree it has not generated yet by what its parameters give: that
    must be exactly what the generator then writes."""
    cfg = compose("train", [*TINY_TRAIN, f"data.root={tmp_path / 'syn'}"]).data
    planned = D.identify(cfg)
    assert not (tmp_path / "syn").exists()  # nothing written
    D.build_datasets(cfg, planned)  # generates, then refuses anything else than planned
    assert D.identify(cfg) == planned


@pytest.mark.parametrize(
    "override, words",
    [
        ("trainer.eval_max_images=-5", ["trainer.eval_max_images=-5", ">= 1"]),
        ("optim.lr=inf", ["optim.lr=inf", "a number > 0"]),
        ("data.augment.min_area=0", ["data.augment.min_area=0"]),
        ("seed=-1", ["seed=-1", ">= 0"]),
        ("data.num_workers=-1", ["data.num_workers=-1", ">= 0"]),
        ("trainer.preempt_signal=WAKEUP", ["trainer.preempt_signal", "is no signal"]),
        ("runtime.amp=fp16", ["runtime.amp=fp16 needs a GPU"]),
    ],
)
def test_invalid_values_are_refused_before_anything_is_written(capsys, tmp_path, override, words):
    if override == "runtime.amp=fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is valid with CUDA")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN, override,
                      f"out_dir={tmp_path / 'out'}", words=words)  # fmt: skip


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["data.augment.min_area=0.9", "data.augment.max_area=0.5"], ["min_area <= max_area"]),
        (["data.eval_crop=48"], ["data.eval_crop must be in [1, data.eval_resize=36]"]),
        (["data.batch_size=512"], ["fewer than one batch"]),
    ],
)
def test_settings_that_contradict_each_other_are_refused_before_the_data_is_made(
    capsys, tmp_path, overrides, words
):
    """Checked only once the synthetic tree had been generated (a write before the refusal)."""
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN, *overrides,
                      f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'out'}", words=words)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- image trees users have


def test_file_names_that_are_not_utf8_are_read(tree):
    """A UnicodeEncodeError traceback before issue 20 (Split.of encoded names as UTF-8)."""
    folder = next((tree / "train").iterdir())
    first = next(folder.iterdir())
    os.rename(first, os.fsencode(folder) + b"/caf\xe9.JPEG")
    train, _, _ = D.find_imagenet(tree)
    odd = [i for i in range(len(train.files)) if b"\xe9" in train.files[i]]
    assert len(odd) == 1 and Path(train.path(odd[0])).is_file()


def test_a_link_to_nowhere_is_counted_not_silently_dropped(tree):
    folder = next((tree / "train").iterdir())
    (folder / "zz_moved.JPEG").symlink_to(tree / "gone.JPEG")
    train, _, _ = D.find_imagenet(tree)
    assert any(f.endswith(b"zz_moved.JPEG") for f in train.files)  # listed: unreadable, counted


def test_a_class_folder_link_to_nowhere_is_refused(capsys, tree, tmp_path):
    (tree / "train" / "n09999999").symlink_to(tmp_path / "unmounted")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *imagenet(tree, tmp_path / "out"),
                      words=["n09999999 is a symbolic link that leads nowhere"])  # fmt: skip


def test_hidden_folders_are_no_class(capsys, tree, tmp_path):
    """`.ipynb_checkpoints` in train/ was an 11th class (and the fix offered: num_classes=11)."""
    (tree / "train" / ".ipynb_checkpoints").mkdir()
    assert len(D.find_imagenet(tree)[2]) == 10


def test_val_labels_missing_or_of_a_class_train_lacks(capsys, tree, tmp_path):
    csv = tree / "LOC_val_solution.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(rows[:-1]) + "\n")  # the last val file has no label
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *imagenet(tree, tmp_path / "out"),
                      words=["has no label for"])  # fmt: skip
    wnid = rows[-1].split(",")[1].split()[0]
    csv.write_text("\n".join(rows[:-1] + [rows[-1].replace(wnid, "n00000001")]) + "\n")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *imagenet(tree, tmp_path / "out"),
                      words=["n00000001", "does not have"])  # fmt: skip


def test_cuda_asked_for_without_cuda(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_train, *TINY_TRAIN, "runtime.device=cuda",
                      f"out_dir={tmp_path / 'out'}", words=["runtime.device=cuda but no CUDA"])  # fmt: skip


def test_an_error_in_a_dataloader_worker_is_its_own_one_line():
    """A DataError raised in a worker came back wrapped in the worker's traceback text."""
    from torch.utils.data import DataLoader, Dataset

    from bnrepro.errors import DataError, one_line

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i):
            raise DataError("32 unreadable images in a row: restore them")

    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert one_line(caught.value) == "32 unreadable images in a row: restore them"


# ---------------------------------------------------------------- faults: full disk, Ctrl-C


def test_ctrl_c_while_a_checkpoint_is_written_leaves_no_partial_file(tmp_path, monkeypatch):
    ckpts = checkpoint.Checkpointer(checkpoint.RunFolder(tmp_path), keep_last=2)
    from test_checkpoint import fake_ckpt

    ckpts.save(fake_ckpt(100), periodic=True, best=True)
    before = snapshot(tmp_path)

    def interrupted(obj, f) -> None:
        f.write(b"\0" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpts.save(fake_ckpt(200), periodic=True, best=True)
    assert snapshot(tmp_path) == before


def test_ctrl_c_in_a_command_is_one_line_and_status_130(capsys, tmp_path, monkeypatch):
    """And the synthetic generator, interrupted, leaves no temporary folder."""
    from bnrepro.data import synthetic

    real = synthetic.draw_image
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "draw_image", interrupted)
    refused_unchanged(capsys, [tmp_path], cli.bnrepro_synthetic, "--out", str(tmp_path / "syn"),
                      words=["interrupted (Ctrl-C)"], status=EXIT_INTERRUPTED)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_a_run_starts_stops_at_once_with_nothing_written(
    capsys, run_copy, monkeypatch
):
    """Before the run is accepted, Ctrl-C is no preemption: nothing to checkpoint, nothing
    written (it used to be a KeyboardInterrupt traceback)."""
    out, overrides = run_copy

    def interrupted(data_cfg, **ranks):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "identify", interrupted)
    refused_unchanged(capsys, [out], cli.bnrepro_train, *overrides, "trainer.max_images=192",
                      words=["interrupted (Ctrl-C)"], status=EXIT_INTERRUPTED)  # fmt: skip


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from bnrepro.cli import bnrepro_train
bnrepro_train(sys.argv[2:])
"""


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_the_earlier_checkpoints(run_copy):
    """torch's zip writer turned the OSError into a RuntimeError: exit 1, a traceback and a
    .tmp file. Now: one line, exit 2, no temporary file, the earlier checkpoints untouched, and
    the same command resumes once there is room."""
    out, overrides = run_copy
    ckpts = out / "bn_x30_seed0" / "checkpoints"
    (ckpts / "ckpt_000000000096.pt").unlink()  # resumes at 48: its next write is at 96
    (ckpts / "best.pt").unlink()
    kept = snapshot(ckpts)
    cmd = [sys.executable, "-c", LIMITED, str(1 << 20), *overrides]  # 1 MiB: a checkpoint is 1.5
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    refused((result.returncode, result.stderr), "could not write checkpoint",
            "ckpt_000000000096.pt", "File too large", "intact")  # fmt: skip
    assert snapshot(ckpts) == kept  # no .tmp, ckpt_48 as it was
    checkpoint.load(ckpts / "ckpt_000000000048.pt")


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_stops_like_sigterm(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "trainer.max_images=100000", "trainer.eval_every_images=100000",
                 "trainer.ckpt_every_images=100000"]  # fmt: skip
    job = subprocess.Popen([sys.executable, "-m", "bnrepro.train", *overrides],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "bn_x30_seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert job.poll() is None and time.time() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 0 and "Traceback" not in stderr, stderr
    assert "preempted: checkpointed" in stdout
    ckpts = tmp_path / "bn_x30_seed0" / "checkpoints"
    assert not list(ckpts.glob("*.tmp")) and len(list(ckpts.glob("ckpt_*.pt"))) == 1
    assert not (tmp_path / "bn_x30_seed0" / "run.lock").exists()


# ---------------------------------------------------------------- torchrun


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
PER_RANK_ROOT = """
import os, sys
os.environ["DATA_ROOT"] = sys.argv[1 + int(os.environ["RANK"])]  # a node-local copy per rank
from bnrepro.cli import bnrepro_train
bnrepro_train(sys.argv[3:])
"""


@pytest.mark.slow
def test_under_torchrun_a_user_error_is_one_line_from_rank_0(tmp_path):
    """Every rank printed it; torchrun's report now carries it too (its own exit status is 1
    for any failed rank: it does not pass a rank's status on; the report says `exitcode: 2`)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([*TORCHRUN, "-m", "bnrepro.train", *TINY_TRAIN, "optim.lr=nan",
                          f"out_dir={tmp_path}"], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    lines = [line for line in out.stderr.splitlines() if line.startswith("bnrepro-train: error:")]
    assert len(lines) == 1 and "optim.lr=nan" in lines[0], out.stderr[-3000:]
    assert out.returncode == 1 and "exitcode  : 2" in out.stderr, out.stderr[-3000:]
    assert "traceback : bnrepro-train: error: optim.lr=nan" in out.stderr, out.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ranks_whose_data_differ_refuse_to_train_together(tree, tmp_path):
    """An incomplete node-local copy (a class folder short) trained and evaluated with the
    others. Rank 0 lists the files for every rank; each rank looks at its own copy cheaply
    (its class folders, 64 sampled files per split) and the ranks compare."""
    partial = copy_tree(tree, tmp_path / "partial")
    shutil.rmtree(sorted((partial / "train").iterdir())[-1])
    (tmp_path / "worker.py").write_text(PER_RANK_ROOT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [a for a in imagenet(tree, tmp_path / "out") if not a.startswith("data.root=")]
    before = snapshot(tree, partial)
    out = subprocess.run([*TORCHRUN, str(tmp_path / "worker.py"), str(tree), str(partial), *args,
                          "data.root=${oc.env:DATA_ROOT}", "runtime.device=cpu"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in out.stderr.splitlines() if line.startswith("bnrepro-train: error:")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "rank 1 sees other data than rank 0" in lines[0], lines[0]
    assert "its class folders, or files rank 0 listed" in lines[0], lines[0]
    assert "exitcode  : 2" in out.stderr
    assert snapshot(tree, partial) == before and not (tmp_path / "out").exists()
