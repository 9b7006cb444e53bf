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

"""Safe checkpoint files: atomic writes, ``weights_only`` loads with clear errors, resuming a training run, and the
settings weights were trained with (``trained_with.json`` beside them)."""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader
from selfmedhpm.ema import unwrap
from selfmedhpm.errors import UserInputError, set_resume_point
from selfmedhpm.faults import crash_point
from selfmedhpm.utils import as_bool, atomic_write, is_rank0, write_json_atomic

__all__ = [
    "CheckpointError",
    "save_atomic",
    "tensor_bytes",
    "load_weights",
    "latest_checkpoint",
    "rng_state",
    "set_rng_state",
    "register_state",
    "PeriodicWriter",
    "EpochCheckpointer",
    "ResumeFromCheckpoint",
    "BestModelSaver",
    "TRAINED_WITH",
    "trained_with_path",
    "read_trained_with",
    "WeightsLoader",
]

logger = logging.getLogger(__name__)


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint or weight file that cannot be used; the message names the file and the problem."""


TRAINED_WITH = "trained_with.json"
"""Written beside the weights of every training run of both bundles: ``{config key: value}`` of the settings that
shape the network and its input (crop, spacing, intensity window, widths, label set). Evaluation and inference apply
them (:func:`selfmedhpm.bundle.apply_trained_with`); releases and MONAI Label apps merge them into their configs."""


def trained_with_path(weights: str | os.PathLike) -> Path:
    """Where the settings of a weight file (or of a folder of weights) are recorded: ``<folder>/trained_with.json``.

    Examples::

        >>> trained_with_path("out/model.pt").as_posix()
        'out/trained_with.json'
    """
    weights = Path(weights)
    return (weights if weights.is_dir() else weights.parent) / TRAINED_WITH


def read_trained_with(weights: str | os.PathLike) -> dict[str, Any]:
    """The settings recorded beside ``weights`` (a weight file or its folder), ``{}`` when there is no record.

    Raises:
        CheckpointError: a record that is not a JSON object.

    Examples::

        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> read_trained_with(folder / "model.pt")
        {}
        >>> _ = (folder / TRAINED_WITH).write_text(json.dumps({"roi_size": [64, 64, 64]}))
        >>> read_trained_with(folder / "model.pt")
        {'roi_size': [64, 64, 64]}
    """
    import json

    record = trained_with_path(weights)
    if not record.is_file():
        return {}
    try:
        values = json.loads(record.read_text())
    except ValueError as error:
        raise CheckpointError(f"{record}: not JSON ({error}).") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{record}: expected an object of config values, found {type(values).__name__}.")
    return values


def save_atomic(obj: Any, path: str | os.PathLike, before_replace: Callable[[], None] | None = None) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a reader (or a crash) never sees a
    half-written file, and the previous file stays intact until the new one is complete.

    Args:
        obj: what to save (tensors and plain containers, so that :func:`load_weights` reads it).
        path: the file to write.
        before_replace: called when the temporary file is complete, just before the rename (a crash point for
            tests, see :mod:`selfmedhpm.faults`).

    Examples::

        >>> import tempfile
        >>> p = save_atomic({"w": torch.ones(2)}, Path(tempfile.mkdtemp()) / "m.pt")
        >>> load_weights(p)["w"].tolist()
        [1.0, 1.0]
    """
    return atomic_write(
        path, lambda f: torch.save(obj, f), binary=True, before_replace=before_replace, size=lambda: tensor_bytes(obj)
    )


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists and tuples), each storage counted once: about the size of
    ``torch.save(obj)``.

    Examples::

        >>> w = torch.zeros(1000)
        >>> tensor_bytes({"a": w, "b": [w, torch.zeros(10, dtype=torch.float64)]})
        4080
    """
    seen: dict[int, int] = {}

    def visit(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(item, Mapping):
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    visit(obj)
    return sum(seen.values())


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: only tensors and plain containers are unpickled, so a file that
    would run code when loaded is refused. Raises :class:`CheckpointError` naming the file for a missing,
    unreadable or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain containers, which could "
            f"run code when unpickled (torch.load weights_only=True). Only load weight files you trust. ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weight file ({type(e).__name__}: {e}).") from None


_EPOCH = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """The checkpoint of the highest epoch in ``ckpt_dir`` (``<prefix>_epoch=N.pt``, as MONAI's
    ``CheckpointSaver`` names them), or None when there is none."""
    found = []
    for file in Path(ckpt_dir).glob(f"{prefix}*epoch=*.pt"):
        match = _EPOCH.search(file.name)
        if match:
            found.append((int(match.group(1)), file))
    return max(found)[1] if found else None


def _randomizables(transforms: Any) -> list:
    from monai.transforms import Compose, Randomizable

    if transforms is None:
        return []
    found = transforms.flatten().transforms if isinstance(transforms, Compose) else list(transforms)
    return [t for t in found if isinstance(t, Randomizable)]


def rng_state(engine: Engine | None = None, transforms: Any = None) -> dict[str, Any]:
    """Every random state a resumed run needs to repeat the interrupted one, as tensors and plain values (so the
    checkpoint loads with ``weights_only=True``): torch, numpy and Python global states, the engine's mask
    generator when it has one, and the ``RandomState`` of each random MONAI transform in ``transforms``."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "transforms": [torch.from_numpy(t.R.get_state()[1].astype(np.int64)) for t in _randomizables(transforms)],
        "transforms_pos": [int(t.R.get_state()[2]) for t in _randomizables(transforms)],
    }
    generator = getattr(engine, "mask_generator", None)
    if generator is not None:
        state["mask_generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], engine: Engine | None = None, transforms: Any = None) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    for t, keys, pos in zip(_randomizables(transforms), state["transforms"], state["transforms_pos"]):
        t.R.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, 0, 0.0))
    generator = getattr(engine, "mask_generator", None)
    if generator is not None and "mask_generator" in state:
        generator.set_state(state["mask_generator"])


def register_state(engine: Engine, key: str, obj: Any) -> None:
    """Makes ``obj`` (with ``state_dict`` / ``load_state_dict``) part of every checkpoint of ``engine`` under ``key``:
    :class:`EpochCheckpointer` saves it and :class:`ResumeFromCheckpoint` restores it, whatever their ``save_dict``.
    Handlers whose state belongs with the weights (the per-epoch history) register themselves when attached."""
    engine.__dict__.setdefault("checkpoint_state", {})[key] = obj


def _registered(engine: Engine) -> dict[str, Any]:
    return dict(getattr(engine, "checkpoint_state", {}))


class PeriodicWriter:
    """Base of handlers that write files after every ``interval`` epochs when at least ``min_seconds`` have passed
    since their last write, and when the run completes (unless its last epoch was just written). Subclasses implement
    :meth:`write`.

    Args:
        interval: epochs between writes. Defaults to 1.
        min_seconds: least wall time between two writes. Defaults to 0.
    """

    def __init__(self, interval: int = 1, min_seconds: float = 0.0) -> None:
        self.interval, self.min_seconds = interval, float(min_seconds)
        self._last = time.monotonic()
        self._written_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._periodic)
        engine.add_event_handler(Events.COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._last, self._written_epoch = time.monotonic(), None

    def _periodic(self, engine: Engine) -> None:
        if time.monotonic() - self._last >= self.min_seconds:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        if engine.last_event_name == Events.COMPLETED and self._written_epoch == engine.state.epoch:
            return  # the last epoch was written when it completed
        self._last, self._written_epoch = time.monotonic(), engine.state.epoch
        self.write(engine)

    def write(self, engine: Engine) -> None:
        raise NotImplementedError


class EpochCheckpointer(PeriodicWriter):
    """Saves a resumable checkpoint ``<prefix>_epoch=N.pt`` (rank 0 only, written atomically, older ones pruned to
    ``n_saved``): the objects of ``save_dict`` (e.g. the model and the optimizer) and those registered with
    :func:`register_state` (the per-epoch history, so that the history and the weights are one state), the trainer's
    state (epoch, iteration) under ``"trainer"``, and the random states (:func:`rng_state`) under ``"rng"``.

    A checkpoint is written after every ``interval`` epochs when at least ``min_seconds`` have passed since the
    previous one (so that short epochs on a fast GPU do not spend their time writing files), and always when the
    run completes. Once attached, an output that cannot be written (a full disk: any file of the run) stops the run
    with a message that names the last good checkpoint and the command that resumes from it
    (:class:`~selfmedhpm.errors.OutputWriteError`).

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict()``, e.g. ``{"model": net, "optimizer": opt}``.
        interval: epochs between checkpoints. Defaults to 1.
        n_saved: checkpoints kept. Defaults to 1.
        transforms: the training transforms whose random states are saved too.
        prefix: file prefix. Defaults to "checkpoint".
        min_seconds: least wall time between two checkpoints. Defaults to 0 (every ``interval`` epochs).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        interval: int = 1,
        n_saved: int = 1,
        transforms: Any = None,
        prefix: str = "checkpoint",
        min_seconds: float = 0.0,
    ) -> None:
        super().__init__(interval, min_seconds)
        self.save_dir, self.save_dict = Path(save_dir), dict(save_dict)
        self.n_saved, self.transforms, self.prefix = n_saved, transforms, prefix

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._claim_resume_point)

    def _claim_resume_point(self, engine: Engine) -> None:
        finder = weakref.WeakMethod(self.last_checkpoint)  # lives no longer than this checkpointer
        set_resume_point(lambda: finder()() if finder() is not None else None)
        if not engine.has_event_handler(self._release_resume_point, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self._release_resume_point)  # after the final writes

    def _release_resume_point(self, engine: Engine) -> None:
        set_resume_point(None)

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint in ``save_dir``, or None."""
        return latest_checkpoint(self.save_dir, self.prefix)

    def write(self, engine: Engine) -> None:
        if not is_rank0():
            return
        epoch = engine.state.epoch
        path = self.save_dir / f"{self.prefix}_epoch={epoch}.pt"
        objects = {**_registered(engine), **self.save_dict}
        checkpoint = {key: obj.state_dict() for key, obj in objects.items()}
        checkpoint["trainer"] = engine.state_dict()
        checkpoint["rng"] = rng_state(engine, self.transforms)
        save_atomic(checkpoint, path, before_replace=lambda: crash_point("checkpoint_writing", epoch))
        crash_point("checkpoint_saved", epoch)
        for old in sorted(self.save_dir.glob(f"{self.prefix}_epoch=*.pt"), key=_epoch_of)[: -self.n_saved]:
            old.unlink()
        logger.info("epoch %d: checkpoint %s", epoch, path)


def _epoch_of(path: Path) -> int:
    match = _EPOCH.search(path.name)
    return int(match.group(1)) if match else -1


class ResumeFromCheckpoint:
    """Restores a run from the latest epoch checkpoint in ``ckpt_dir`` when the engine starts.

    The checkpoint (written by :class:`EpochCheckpointer` with the same ``load_dict`` keys) is loaded with
    ``weights_only=True``; the trainer's epoch and iteration and the random states are restored too, so the run
    continues where it stopped and ends at the planned ``max_epochs``. Keep it in ``train#handlers`` always:
    ``enabled`` switches it.

    Args:
        ckpt_dir: folder of the epoch checkpoints.
        load_dict: objects to restore, e.g. ``{"model": net, "optimizer": opt}`` (the trainer is added).
        enabled: resume when True (bundle key ``resume``); when False the handler does nothing.
        map_location: device for the loaded tensors. Defaults to "cpu".
        prefix: checkpoint file prefix. Defaults to "checkpoint".
        transforms: the training transforms whose random states are restored.
    """

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: Mapping[str, Any],
        enabled: bool = True,
        map_location: str | torch.device = "cpu",
        prefix: str = "checkpoint",
        transforms: Any = None,
    ) -> None:
        self.ckpt_dir, self.load_dict, self.enabled = ckpt_dir, dict(load_dict), as_bool(enabled, "resume")
        self.map_location, self.prefix, self.transforms = map_location, prefix, transforms
        self.loaded_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is None:
            logger.warning("resume requested but no checkpoint in %s: starting from scratch.", self.ckpt_dir)
            return
        for stale in Path(self.ckpt_dir).glob(f".{self.prefix}_epoch=*.tmp"):  # a write cut off by a crash
            stale.unlink()
        checkpoint = load_weights(path, self.map_location)
        to_load = {**self.load_dict, "trainer": engine}
        for key, obj in _registered(engine).items():
            if key in checkpoint:
                to_load.setdefault(key, obj)
            else:
                logger.warning("%s has no %r (written by an older version): it is rebuilt as the run goes.", path, key)
        missing = [key for key in to_load if key not in checkpoint]
        if missing:
            raise CheckpointError(f"{path}: cannot resume, the checkpoint lacks {missing} (it has {list(checkpoint)}).")
        max_epochs = engine.state.max_epochs
        checkpoint["trainer"]["max_epochs"] = max_epochs  # the planned length wins over the checkpoint's
        Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint)
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"], engine, self.transforms)
        self.loaded_from = path
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)


class BestModelSaver:
    """Writes the model's ``state_dict`` to ``save_dir/filename`` (atomically, rank 0 only) each time an evaluator's
    key metric beats the best so far, as MONAI's ``CheckpointSaver(save_key_metric=True)`` does, plus what it lacks:
    the write is atomic (a crash never leaves a half-written ``model.pt``), and the best score is checkpointable, so
    a resumed run only replaces the file by a better model than the interrupted run's best. Attach it to the
    evaluator and put it under ``"best_model"`` in the trainer's :class:`EpochCheckpointer` ``save_dict`` and
    :class:`ResumeFromCheckpoint` ``load_dict``.

    Args:
        save_dir: folder of the file.
        network: the model (a DDP or ``torch.compile`` wrapper is unwrapped, so the keys are the model's own).
        filename: file name. Defaults to "model.pt".
        metric_name: the metric to compare; None takes the evaluator's key metric. Higher is better.
        settings: the config values the model is trained with (crop, spacing, widths, label set), written as
            ``trained_with.json`` beside the file, so evaluation and inference can apply them. Defaults to none.

    Examples::

        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> saver = BestModelSaver(tempfile.mkdtemp(), torch.nn.Linear(1, 1))
        >>> for epoch, dice in [(1, 0.5), (2, 0.4), (3, 0.7)]:
        ...     state = SimpleNamespace(epoch=epoch, metrics={"dice": dice}, key_metric_name="dice")
        ...     saver(SimpleNamespace(state=state))
        >>> saver.state_dict()
        {'best': 0.7, 'epoch': 3}
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        filename: str = "model.pt",
        metric_name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.network, self.metric_name = network, metric_name
        self.settings = dict(settings or {})
        self.best: float | None = None
        self.best_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        score = float(engine.state.metrics[name])
        if score != score or (self.best is not None and score <= self.best):  # NaN, or not better
            return
        self.best, self.best_epoch = score, engine.state.epoch
        if is_rank0():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(unwrap(self.network).state_dict(), self.path)
            if self.settings:
                write_json_atomic(self.settings, trained_with_path(self.path))
            logger.info("epoch %d: best %s %.4f, model written to %s", engine.state.epoch, name, score, self.path)

    def report(self) -> str:
        """Logs (rank 0) and returns the line a training run ends with: the best validation score, its epoch and
        the model file, or that no validation ran (so no model was written)."""
        if self.best is None:
            line = (
                f"no validation ran, so no {self.path.name} was written: validation runs every val_interval epochs "
                "(make it at most epochs)"
            )
        else:
            record = f" (settings: {TRAINED_WITH})" if self.settings else ""
            line = f"best validation {self.metric_name or 'mean Dice'} {self.best:.3f} at epoch {self.best_epoch}: "
            line += f"{self.path}{record}"
        if is_rank0():
            logger.info(line)
        return line

    def state_dict(self) -> dict[str, Any]:
        """``{"best": score, "epoch": e}``, or ``{}`` before the first evaluation."""
        return {} if self.best is None else {"best": self.best, "epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned; an empty dict leaves no best."""
        self.best = float(state_dict["best"]) if "best" in state_dict else None
        self.best_epoch = int(state_dict.get("epoch", 0))


class WeightsLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for the weights evaluation and inference use (``model_file``), whose failure is
    one line: weights that do not fit the network raise :class:`CheckpointError` naming the file, the count of
    mismatched tensors and the record of its settings (or its absence), not ``load_state_dict``'s list of every key.
    Takes ``CheckpointLoader``'s arguments; being one, :func:`selfmedhpm.handlers.rank_handlers` attaches it on every
    rank.

    Examples::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "model.pt"
        >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
        >>> try:
        ...     WeightsLoader(str(path), {"model": torch.nn.Linear(2, 4)})(Engine(lambda e, b: None))
        ... except CheckpointError as e:
        ...     print(str(e).split(": ", 1)[1].split(";")[0])
        does not fit the network of this config (2 tensors of other shapes)
    """

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise CheckpointError(f"{self.load_path}: weight file not found (--model_file).")
        try:
            super().__call__(engine)
        except RuntimeError as error:
            if "state_dict" not in str(error):
                raise
            raise CheckpointError(_misfit(self.load_path, str(error))) from None


def _misfit(path: str, message: str) -> str:
    mismatched = message.count("size mismatch")
    missing = message.count("Missing key")
    counts = f"{mismatched} tensors of other shapes" + (", missing keys" if missing else "")
    record = trained_with_path(path)
    where = (
        f"{record} records what it was trained with, and its values were applied"
        if record.is_file()
        else f"no {TRAINED_WITH} beside it: add the preset or the sizes it was trained with to the command "
        "(e.g. configs/train_cpu.json to --config_file, or --roi_size/--hidden_size/--mlp_dim/--num_heads/"
        "--feature_size)"
    )
    return f"{path}: does not fit the network of this config ({counts}); {where}."
