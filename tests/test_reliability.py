# Copyright (c) 2026 SelfMedHPM bundles contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Reliability and safety: untrusted files never execute, killed runs resume exactly, NaN losses stop training."""

from __future__ import annotations

import json
import pickle
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PRETRAIN, configs
from selfmedhpm.checkpoint import CheckpointError, ResumeFromCheckpoint, load_weights, save_atomic


class _CreatesFile:
    """Unpickling this runs code: it would create the file named in ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "weights.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _CreatesFile(str(marker))}, f)
    return path, marker


def test_load_weights_refuses_code_in_pickle(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_weights(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_pretrained_encoder_load_refuses_code_in_pickle(malicious):
    from monai.networks.nets import UNETR
    from selfmedhpm.transfer import load_pretrained_encoder

    path, marker = malicious
    with pytest.raises(CheckpointError, match="refused to load"):
        load_pretrained_encoder(UNETR(1, 3, (32, 32, 32), hidden_size=48, mlp_dim=96, num_heads=4), path)
    assert not marker.exists()


def test_resume_refuses_code_in_pickle(malicious, tmp_path):
    from ignite.engine import Engine

    path, marker = malicious
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    path.rename(ckpt_dir / "checkpoint_epoch=3.pt")
    engine = Engine(lambda e, b: None)
    ResumeFromCheckpoint(str(ckpt_dir), {"model": torch.nn.Linear(2, 2)}).attach(engine)
    with pytest.raises(CheckpointError, match="refused to load"):
        engine.run([0], max_epochs=5)
    assert not marker.exists()


def test_monai_checkpoint_loader_refuses_code_in_pickle(malicious):
    from ignite.engine import Engine
    from monai.handlers import CheckpointLoader

    path, marker = malicious
    engine = Engine(lambda e, b: None)
    CheckpointLoader(str(path), {"model": torch.nn.Linear(2, 2)}).attach(engine)
    with pytest.raises(pickle.UnpicklingError):
        engine.run([0], max_epochs=1)
    assert not marker.exists()


def test_truncated_checkpoint_is_named_in_error(tmp_path):
    path = save_atomic({"w": torch.ones(1000)}, tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable PyTorch weight file") as info:
        load_weights(path)
    assert "model.pt" in str(info.value)


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path):
    path = save_atomic({"w": torch.ones(3)}, tmp_path / "model.pt")
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        save_atomic({"w": torch.zeros(2), "f": lambda: None}, path)  # not picklable: fails mid-write
    assert torch.equal(load_weights(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.slow
def test_non_finite_loss_stops_training_with_iteration(phantom_dir, tmp_path):
    from monai.bundle import ConfigWorkflow
    from selfmedhpm.engine import NonFiniteLossError

    workflow = ConfigWorkflow(
        config_file=configs(PRETRAIN, "train.json", "train_cpu.json"),
        workflow_type="train",
        dataset_dir=str(phantom_dir),
        output_dir=str(tmp_path),
        epochs=2,
        pixdim=[3.0, 3.0, 3.0],
        learning_rate=1e30,
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as info:
        workflow.run()
    cause = info.value.__cause__
    assert isinstance(cause, NonFiniteLossError)
    assert re.search(r"non-finite loss \(\S+\) at epoch \d, iteration \d+", str(cause)), str(cause)
    assert not (tmp_path / "model.pt").exists()  # no NaN weights written


def _pretrain_command(phantom_dir: Path, out: Path, *extra: str) -> list[str]:
    config = str(configs(PRETRAIN, "train.json", "train_cpu.json"))
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(phantom_dir),
        "--output_dir", str(out), "--epochs", "4", "--save_interval", "1", "--save_min_seconds", "0",
        "--pixdim", "[3.0, 3.0, 3.0]", "--teacher_precision", "fp32", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(phantom_dir, tmp_path_factory, python_env) -> Path:
    """The reference: the same 4-epoch pretraining, never killed."""
    full = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_pretrain_command(phantom_dir, full), env=python_env, check=True, capture_output=True, timeout=600)
    return full


# 4 training cases, batch 1: 4 iterations per epoch. Each point is where a SIGKILL lands (selfmedhpm.faults).
CRASH_POINTS = {
    "mid-iteration of epoch 3": ("iteration:10", ["checkpoint_epoch=2.pt"]),
    "right after the checkpoint of epoch 3": ("checkpoint_saved:3", ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]),
    "while writing the checkpoint of epoch 3": ("checkpoint_writing:3", ["checkpoint_epoch=2.pt"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_sigkill_then_resume_matches_uninterrupted_run(point, phantom_dir, uninterrupted, tmp_path, python_env):
    """Killed at an exact point (no sleeps: the run kills itself there), a resumed run has the same history,
    optimizer steps and weights as the uninterrupted one, whatever the point and the machine's load."""
    from selfmedhpm.faults import ENV

    crash_at, checkpoints = CRASH_POINTS[point]
    killed = tmp_path / "killed"
    env = dict(python_env, **{ENV: crash_at})
    process = subprocess.run(_pretrain_command(phantom_dir, killed), env=env, capture_output=True, timeout=600)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    saved = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.suffix == ".pt")
    assert saved == checkpoints  # the older one is pruned after the new one is complete
    load_weights(killed / "checkpoints" / saved[-1])  # intact, loadable
    if crash_at.startswith("checkpoint_writing"):  # the cut-off write left its temporary file only
        assert [p.name for p in (killed / "checkpoints").glob(".*.tmp")]

    resume = subprocess.run(
        _pretrain_command(phantom_dir, killed, "--resume", "True"), env=python_env, capture_output=True, timeout=600
    )
    assert resume.returncode == 0, resume.stderr.decode()[-2000:]
    assert not list((killed / "checkpoints").glob(".*.tmp"))
    assert_same_run(killed, uninterrupted)


def assert_same_run(out: Path, reference: Path) -> None:
    """The 4-epoch pretraining in ``out`` has the history, optimizer steps and weights of the one in ``reference``."""
    history = json.loads((out / "history.json").read_text())
    expected = json.loads((reference / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["iterations"] for r in history] == [r["iterations"] for r in expected] == [4, 4, 4, 4]
    for ours, theirs in zip(history, expected):
        for key in ("loss", "rec_loss", "pred_loss", "hard_ratio", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (ours["epoch"], key)
    a, b = load_weights(reference / "model.pt"), load_weights(out / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    final = load_weights(out / "checkpoints" / "checkpoint_epoch=4.pt")
    assert final["trainer"]["iteration"] == 16 and [r["epoch"] for r in final["history"]["records"]] == [1, 2, 3, 4]


FULL_DISK = {  # SELFMEDHPM_FAIL_WRITE, the file it hits, the checkpoint left, what the message says, the history kept
    "checkpoint, no space": ("checkpoint_epoch=2.pt:1", "ckpt/checkpoint_epoch=2.pt", 1, "no space left on device", 2),
    "history, read-only": ("history.json:2:EROFS", "history.json", 1, "is on a read-only file system", 1),
    "checkpoint, quota": ("checkpoint_*:3:EDQUOT", "ckpt/checkpoint_epoch=3.pt", 2, "disk quota exceeded", 3),
}  # the history of an epoch is written as its checkpoint takes the history's state, just before the checkpoint


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_a_write_that_finds_no_space_names_its_file_and_the_last_good_checkpoint(case, tmp_path, monkeypatch):
    from ignite.engine import Engine
    from selfmedhpm import errors
    from selfmedhpm.checkpoint import EpochCheckpointer
    from selfmedhpm.errors import OutputWriteError
    from selfmedhpm.faults import WRITE_ENV
    from selfmedhpm.handlers import HistoryRecorder

    spec, failing, last_epoch, words, kept = FULL_DISK[case]
    monkeypatch.setenv(WRITE_ENV, spec)
    monkeypatch.setattr(errors, "_resume_point", None)  # forgotten after the test: its engine never completes
    engine = Engine(lambda e, b: {"loss": float(b) * e.state.epoch})
    EpochCheckpointer(tmp_path / "ckpt", {"weights": torch.nn.Linear(300, 300)}).attach(engine)
    HistoryRecorder(tmp_path / "history.json", ["loss"]).attach(engine)
    with pytest.raises(OutputWriteError) as info:
        engine.run([1.0, 3.0], max_epochs=4)
    last = tmp_path / "ckpt" / f"checkpoint_epoch={last_epoch}.pt"
    line = info.value.summary()
    assert line.startswith(f"{tmp_path / failing}: ") and words in line and "\n" not in line
    assert f"the last good checkpoint is {last}" in line and line.endswith("--resume True")
    if "no space" in words:  # the size of the checkpoint that failed, about that of the one before it
        needed = float(re.search(r"the file needs ([\d.]+) KB, [\d.]+ [KMG]B free in ", line).group(1)) * 2**10
        assert needed == pytest.approx(last.stat().st_size, rel=0.05)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [last.name]  # no temporary file left
    assert load_weights(last)["trainer"]["iteration"] == 2 * last_epoch
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == list(range(1, kept + 1))


def test_an_os_error_of_a_full_disk_anywhere_ends_with_one_line_naming_the_file(monkeypatch):
    """A write that is not the project's (an image saved by MONAI) still ends with the ``ERROR`` line."""
    import errno

    from selfmedhpm import errors
    from selfmedhpm.errors import user_error

    monkeypatch.setattr(errors, "_resume_point", None)  # not a training run

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/out/ct_07_seg.nii.gz")
        except OSError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        line = user_error(wrapped).summary()
    assert line.startswith("/out/ct_07_seg.nii.gz: no space left on device") and "run the same command" in line
    assert user_error(RuntimeError("x")) is None


def _mount_tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir()
    try:
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["ENOSPC injected at epoch 3", "small tmpfs"])
def test_full_disk_ends_with_one_line_and_its_resume_command_matches_uninterrupted_run(
    disk, phantom_dir, uninterrupted, tmp_path, python_env
):
    """The run stops with one last line naming the checkpoint being written, its size, the last good checkpoint and
    the resume command; running that command (after freeing space) ends with the uninterrupted run's weights. On a
    tmpfs just too small for a second checkpoint when it can be mounted (root), else with the fault hook."""
    from selfmedhpm.faults import WRITE_ENV

    out, env, failing, last = tmp_path / "out", dict(python_env), 3, 2
    sizes = {p.name: p.stat().st_size for p in [*uninterrupted.glob("*.pt"), *uninterrupted.glob("checkpoints/*")]}
    checkpoint = sizes.pop("checkpoint_epoch=4.pt")
    mounted = disk == "small tmpfs" and _mount_tmpfs(out, checkpoint + sum(sizes.values()) + checkpoint // 2)
    if mounted:  # epoch 1 fits with its checkpoint and exports; the checkpoint of epoch 2 does not
        failing, last = 2, 1
    else:
        env[WRITE_ENV] = f"checkpoint_epoch={failing}.pt:1"
    try:
        stopped = subprocess.run(
            _pretrain_command(phantom_dir, out), env=env, capture_output=True, text=True, timeout=600
        )
        assert stopped.returncode == 1, stopped.stderr[-3000:]
        line = stopped.stderr.strip().splitlines()[-1]
        written = out / "checkpoints" / f"checkpoint_epoch={failing}.pt"
        assert line.startswith(f"ERROR {written}: no space left on device (the file needs "), line
        needed = float(re.search(r"the file needs ([\d.]+) MB", line).group(1)) * 2**20
        assert needed == pytest.approx(checkpoint, rel=0.05)
        assert f"the last good checkpoint is {out / 'checkpoints' / f'checkpoint_epoch={last}.pt'}" in line
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"checkpoint_epoch={last}.pt"]
        assert load_weights(out / "checkpoints" / f"checkpoint_epoch={last}.pt")["trainer"]["iteration"] == 4 * last
        assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == list(range(1, failing + 1))
        if mounted:  # free space: the tmpfs grows
            subprocess.run(["mount", "-o", "remount,size=256m", str(out)], check=True, timeout=60)
        command = shlex.split(line.split("then resume: ", 1)[1])
        assert command[:4] == ["python", "-m", "monai.bundle", "run"] and command[-2:] == ["--resume", "True"]
        resumed = subprocess.run(
            [sys.executable, *command[1:]], env=python_env, capture_output=True, text=True, timeout=600
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_run(out, uninterrupted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out)], timeout=60)


def test_history_file_is_rebuilt_from_the_checkpoint(tmp_path):
    """The checkpoint carries the history: a resume rewrites history.json from it, dropping a record written after
    the checkpoint and restoring one the file lacked."""
    from ignite.engine import Engine
    from selfmedhpm.checkpoint import EpochCheckpointer
    from selfmedhpm.handlers import HistoryRecorder

    def run(out: Path, epochs: int, resume: bool) -> HistoryRecorder:
        engine = Engine(lambda e, b: {"loss": float(b) * e.state.epoch})
        history = HistoryRecorder(out / "history.json", ["loss"])
        ResumeFromCheckpoint(str(out / "ckpt"), {}, enabled=resume).attach(engine)
        EpochCheckpointer(out / "ckpt", {}).attach(engine)  # before the recorder: any order works
        history.attach(engine)
        engine.run([1.0, 3.0], max_epochs=epochs)
        return history

    run(tmp_path, 2, resume=False)
    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["loss"] for r in records] == [2.0, 4.0]
    (tmp_path / "history.json").write_text(json.dumps(records[:1]))  # killed before the file got epoch 2
    run(tmp_path, 3, resume=True)
    assert [r["loss"] for r in json.loads((tmp_path / "history.json").read_text())] == [2.0, 4.0, 6.0]


def _segmentation_inference(folder: Path, out: Path, model: Path, env: dict) -> tuple[int, list[float], str]:
    """Runs the segmentation inference bundle (CPU preset) on a folder in a child process; returns its exit code,
    its resident memory in MB after each case (measured by the child when it logs the case, after a garbage
    collection and ``malloc_trim``, so that what the allocator caches does not count) and its stderr."""
    from helpers import SEGMENT

    config = str(configs(SEGMENT, "inference.json", "train_cpu.json"))
    script = (
        "import ctypes, gc, logging, os, sys, runpy\n"
        "class Rss(logging.Handler):\n"
        "    def emit(self, record):\n"
        "        if record.getMessage().startswith('case '):\n"
        "            gc.collect()\n"
        "            ctypes.CDLL('libc.so.6').malloc_trim(0)  # freed heap back to the OS: what stays is held\n"
        "            pages = int(open('/proc/self/statm').read().split()[1])\n"
        "            print('RSS_MB', pages * os.sysconf('SC_PAGE_SIZE') / 2**20, file=sys.stderr, flush=True)\n"
        "logging.getLogger('selfmedhpm.handlers').addHandler(Rss())\n"
        "sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
        "runpy.run_module('monai.bundle', run_name='__main__')\n"
    )
    command = [sys.executable, "-c", script, "run", "--config_file", config, "--dataset_dir", str(folder),
               "--output_dir", str(out), "--model_file", str(model), "--pixdim", "[5.0, 5.0, 5.0]",
               "--num_workers", "0"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    rss = [float(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("RSS_MB")]
    return result.returncode, rss, result.stderr


@pytest.mark.slow
def test_folder_inference_memory_does_not_grow_per_volume_and_a_bad_case_is_skipped(tmp_path, python_env):
    """24 volumes of 4 sizes in turn: the resident memory after each case must not grow from one round of sizes to
    the next (keeping one case's image and prediction, a few MB here, would show); a truncated file is reported and
    skipped."""
    import nibabel as nib
    from helpers import SEGMENT
    from monai.bundle import ConfigParser
    from selfmedhpm_tools.phantom import generate_case

    parser = ConfigParser()
    parser.read_config(configs(SEGMENT, "inference.json", "train_cpu.json"))
    model = save_atomic(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(24):
        shape = (64 + 16 * (i % 4), 64 + 16 * (i % 4), 32 + 8 * (i % 4))  # four sizes in turn
        image, _, affine = generate_case(i, shape=shape)
        nib.save(nib.Nifti1Image(image, affine), folder / f"ct_{i:02d}.nii.gz")
    (folder / "ct_99_broken.nii.gz").write_bytes((folder / "ct_00.nii.gz").read_bytes()[:300])  # truncated

    code, rss, stderr = _segmentation_inference(folder, tmp_path / "out", model, python_env)
    assert code == 0, stderr[-3000:]
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*_seg.nii.gz"))
    assert len(outputs) == 24 and "ct_99_broken_seg.nii.gz" not in outputs
    assert "ct_99_broken.nii.gz: cannot be read" in stderr
    assert len(rss) == 24, stderr[-2000:]
    rounds = np.array(rss).reshape(6, 4)  # one row per round of the four sizes
    growth = (rounds[-3:].mean() - rounds[1:4].mean()) / (3 * 4)  # MB per volume, after the first round's warm-up
    print(f"resident memory per round (MB): {rounds.mean(1).round(1).tolist()}; growth {growth:.2f} MB per volume")
    assert growth < 1.0, rounds.round(1).tolist()
