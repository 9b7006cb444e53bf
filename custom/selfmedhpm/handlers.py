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

"""Ignite handlers of the bundles: per-epoch history, the pretraining bundle's model export, case progress, and the
warning that a paper-scale run has started on a CPU."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, LrScheduleHandler, ValidationHandler
from selfmedhpm.checkpoint import (
    PeriodicWriter,
    ResumeFromCheckpoint,
    register_state,
    save_atomic,
    trained_with_path,
)
from selfmedhpm.ema import EMATeacher, unwrap
from selfmedhpm.transfer import encoder_settings_path, encoder_state_dict
from selfmedhpm.utils import EpochMeans, is_rank0, rank, write_json_atomic

__all__ = [
    "HistoryRecorder",
    "PretrainExporter",
    "CaseProgress",
    "CPUCostWarning",
    "rank_handlers",
]

logger = logging.getLogger(__name__)

EVERY_RANK_HANDLERS: tuple[type, ...] = (LrScheduleHandler, ValidationHandler, CheckpointLoader, ResumeFromCheckpoint)
"""Handlers that every process of a multi-GPU run must attach: they change the weights, the lr or run collective
metric computations. Other handlers (logging, saving) run on rank 0 only; a handler can opt in with a true
``every_rank`` attribute."""


def rank_handlers(handlers: Sequence | None) -> list:
    """The handlers this process attaches in a multi-GPU run: all of them on rank 0; on other ranks only those in
    :data:`EVERY_RANK_HANDLERS` (lr schedule, resume, checkpoint loading, validation) and those with a true
    ``every_rank`` attribute. Selecting by type, not by position, keeps working when a tool inserts a handler
    (MONAI Label puts a ``CheckpointLoader`` first) or appends one (``--tracking mlflow``).

    Examples::

        >>> handlers = [ValidationHandler(interval=1), object()]
        >>> len(rank_handlers(handlers))  # rank 0 outside torch.distributed
        2
    """
    handlers = list(handlers or [])
    if rank() == 0:
        return handlers
    return [h for h in handlers if isinstance(h, EVERY_RANK_HANDLERS) or getattr(h, "every_rank", False)]


class HistoryRecorder:
    """Records per-epoch means of scalar outputs, the learning rate, epoch time and (optionally) an evaluator's
    metrics, and writes them as a JSON list to ``path`` after every epoch (rank 0 only).

    Args:
        path: the JSON file, e.g. ``models/history.json``.
        output_keys: scalar keys of ``engine.state.output`` to average over each epoch.
        optimizer: its first group's lr is recorded when given.
        evaluator: its ``state.metrics`` (e.g. validation Dice) are copied into the record of each epoch after which
            it ran.
        resume: when the run resumes from a checkpoint that did not carry the history (older checkpoints), keep the
            file's records of the epochs before the engine's start epoch.

    The records are part of the run's state: the recorder registers itself (key ``"history"``) in the checkpoints of
    the engine it is attached to (:func:`~selfmedhpm.checkpoint.register_state`), and a resumed run rewrites the
    file from the checkpoint, so the history and the weights always come from the same moment, wherever the
    process was killed.

    Examples::

        >>> import tempfile
        >>> from ignite.engine import Engine
        >>> engine = Engine(lambda e, b: {"loss": float(b)})
        >>> path = Path(tempfile.mkdtemp()) / "history.json"
        >>> HistoryRecorder(path, ["loss"]).attach(engine)
        >>> _ = engine.run([1.0, 3.0], max_epochs=2)
        >>> [r["loss"] for r in json.loads(path.read_text())]
        [2.0, 2.0]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        output_keys: Sequence[str] = ("loss",),
        optimizer: torch.optim.Optimizer | None = None,
        evaluator: Engine | None = None,
        resume: bool = True,
    ) -> None:
        self.path = Path(path)
        self.output_keys = list(output_keys)
        self.optimizer, self.evaluator, self.resume = optimizer, evaluator, resume
        self.records: list[dict] = []
        self._means = EpochMeans()
        self._count = 0
        self._start = time.perf_counter()
        self._validated = False
        self._restored = False
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        register_state(engine, "history", self)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._validation_done)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def state_dict(self) -> dict:
        """``{"records": [...]}``, the current epoch's record included when called at its end (whatever the order
        in which the checkpoint and this recorder handle ``EPOCH_COMPLETED``)."""
        engine = self._engine
        if engine is not None and engine.last_event_name in (Events.EPOCH_COMPLETED, Events.COMPLETED):
            self._epoch_completed(engine)
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict) -> None:
        """Restores the records of a checkpoint; the file is rewritten from them when the run starts."""
        self.records = [dict(r) for r in state["records"]]
        self._restored = True

    def _validation_done(self, evaluator: Engine) -> None:
        self._validated = True

    def _started(self, engine: Engine) -> None:
        if self._restored:
            self.records = [r for r in self.records if r["epoch"] <= engine.state.epoch]
        elif self.resume and self.path.is_file() and engine.state.epoch > 0:
            self.records = [r for r in json.loads(self.path.read_text()) if r["epoch"] <= engine.state.epoch]
        else:
            self.records = []
        self._restored = False
        if engine.state.epoch > 0 and is_rank0():
            write_json_atomic(self.records, self.path)  # the file now matches the checkpoint resumed from

    def _epoch_started(self, engine: Engine) -> None:
        self._means.reset()
        self._count = 0
        self._start = time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, (list, tuple)) and output:  # decollated by MONAI: batch scalars repeat per sample
            output = output[0]
        self._means.add({key: output[key] for key in self.output_keys})  # on the device: no sync
        self._count += 1

    def _epoch_completed(self, engine: Engine) -> None:
        if self.records and self.records[-1]["epoch"] == engine.state.epoch:
            return  # recorded already (a checkpoint asked for the state first)
        record: dict = {"epoch": engine.state.epoch, "iterations": self._count}
        record.update(self._means.means())
        if self.optimizer is not None:  # the base lr: the group without layer-wise decay
            record["lr"] = max(group["lr"] for group in self.optimizer.param_groups)
        if self.evaluator is not None and self._validated:
            record.update({k: _plain(v) for k, v in self.evaluator.state.metrics.items()})
        self._validated = False
        record["seconds"] = time.perf_counter() - self._start
        self.records.append(record)
        if is_rank0():
            write_json_atomic(self.records, self.path)


def _plain(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() > 1 else value.item()
    return value


class PretrainExporter(PeriodicWriter):
    """Writes the pretraining results (rank 0, atomic): ``model.pt`` (the student's full state), ``teacher.pt`` (the
    EMA teacher's full state) and ``encoder.pt`` (the student's encoder in ``UNETR.vit`` layout), all plain tensor
    state dicts, and ``encoder.json`` (the ``settings`` the encoder is pretrained with); after every ``interval``
    epochs when at least ``min_seconds`` have passed since the last export, and always at the end of the run.

    Args:
        output_dir: folder of the files (the bundle's ``models/`` by default).
        teacher: the EMA teacher.
        interval: epochs between exports. Defaults to 1.
        min_seconds: least wall time between two exports. Defaults to 0.
        snapshot_epochs: epochs after which the teacher is also kept as ``teacher_epoch<N>.pt`` (to compare what
            it finds hard early and late in the run). Defaults to none.
        settings: spacing, intensity window, crop and ViT sizes, recorded as ``{"pretrained_with": settings,
            "epoch": N}`` in ``encoder.json`` so that fine-tuning can check its own against them. Defaults to none.
        model_settings: the config values the whole model is trained with (``settings`` plus the decoder and the
            teacher's view), written as ``trained_with.json`` so the heat-map workflow applies them. Defaults to none.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        teacher: EMATeacher,
        interval: int = 1,
        min_seconds: float = 0.0,
        snapshot_epochs: Sequence[int] = (),
        settings: Mapping[str, Any] | None = None,
        model_settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(interval, min_seconds)
        self.output_dir, self.teacher = Path(output_dir), teacher
        self.settings = dict(settings or {})
        self.model_settings = dict(model_settings or {})
        self.snapshot_epochs = {int(e) for e in snapshot_epochs or ()}

    def attach(self, engine: Engine) -> None:
        if self.snapshot_epochs:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._snapshot)
        super().attach(engine)

    def _snapshot(self, engine: Engine) -> None:
        if engine.state.epoch in self.snapshot_epochs and is_rank0():
            state = {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
            save_atomic(state, self.output_dir / f"teacher_epoch{engine.state.epoch}.pt")

    def write(self, engine: Engine) -> None:
        if not is_rank0():
            return
        student = unwrap(engine.network)
        save_atomic({k: v.detach().cpu() for k, v in student.state_dict().items()}, self.output_dir / "model.pt")
        save_atomic({k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}, self.output_dir / "teacher.pt")
        save_atomic(encoder_state_dict(student), self.output_dir / "encoder.pt")
        record = {"pretrained_with": self.settings, "epoch": engine.state.epoch}
        write_json_atomic(record, encoder_settings_path(self.output_dir / "encoder.pt"))
        if self.model_settings:
            write_json_atomic(self.model_settings, trained_with_path(self.output_dir / "model.pt"))
        logger.info(
            "epoch %d: wrote model.pt, teacher.pt, encoder.pt/.json, trained_with.json to %s",
            engine.state.epoch,
            self.output_dir,
        )


class CaseProgress:
    """Logs one line per case as an evaluator goes: ``case i/N <input> -> <output>`` (the output is the file that
    ``SaveImaged(savepath_in_metadict=True)`` wrote, when there is one).

    Args:
        image_key: key of the input image, whose meta names the input file. Defaults to "image".
        output_key: key of the saved prediction. Defaults to "pred".

    Examples::

        >>> from monai.data import MetaTensor
        >>> engine = Engine(lambda e, b: [{"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": b})}])
        >>> CaseProgress().attach(engine)
        >>> _ = engine.run(["a.nii.gz", "b.nii.gz"])
    """

    def __init__(self, image_key: str = "image", output_key: str = "pred") -> None:
        self.image_key, self.output_key = image_key, output_key
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.count = 0

    @staticmethod
    def _total(engine: Engine) -> int | str:
        try:
            return len(engine.data_loader.sampler)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            return engine.state.epoch_length or "?"

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, (list, tuple)) else [output]
        for item in items:
            self.count += 1
            source = getattr(item.get(self.image_key), "meta", {}).get("filename_or_obj", "?")
            target = getattr(item.get(self.output_key), "meta", {}).get("saved_to")
            arrow = f" -> {target}" if target else ""
            logger.info("case %d/%s %s%s", self.count, self._total(engine), source, arrow)


class CPUCostWarning:
    """Warns when a paper-scale run (a ViT-B, ``hidden_size`` 768 or more) trains on a CPU: after the first
    ``iterations`` timed iterations it logs the time per iteration, the estimated time of the whole run and the CPU
    preset to add instead. Nothing happens on a GPU or with a smaller model.

    Args:
        device: the run's device.
        hidden_size: the ViT width of the run.
        cpu_preset: the override file to suggest (the bundle's ``configs/train_cpu.json``).
        iterations: iterations timed after the first (which includes one-off work). Defaults to 2.

    Examples::

        >>> engine = Engine(lambda e, b: None)
        >>> warning = CPUCostWarning("cpu", 768, "configs/train_cpu.json", iterations=1)
        >>> warning.attach(engine)
        >>> _ = engine.run([0, 1, 2], max_epochs=2)
        >>> warning.message.split(":")[0]
        'paper-scale model (ViT width 768) training on a CPU'
    """

    def __init__(
        self, device: torch.device | str, hidden_size: int, cpu_preset: str | os.PathLike, iterations: int = 2
    ) -> None:
        self.enabled = torch.device(device).type == "cpu" and int(hidden_size) >= 768
        self.hidden_size, self.cpu_preset, self.iterations = int(hidden_size), str(cpu_preset), max(int(iterations), 1)
        self.message: str | None = None
        self._start: float | None = None
        self._timed = 0

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _iteration(self, engine: Engine) -> None:
        if self.message is not None:
            return
        if self._start is None:
            self._start = time.perf_counter()
            return
        self._timed += 1
        if self._timed >= self.iterations:
            self._warn(engine)

    def _epoch(self, engine: Engine) -> None:
        if self.message is None and self._timed:
            self._warn(engine)

    def _warn(self, engine: Engine) -> None:
        seconds = (time.perf_counter() - (self._start or time.perf_counter())) / max(self._timed, 1)
        per_epoch = engine.state.epoch_length or 1
        epochs = engine.state.max_epochs or 1
        total = seconds * per_epoch * (epochs - engine.state.epoch + 1)
        hours = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.0f} min"
        self.message = (
            f"paper-scale model (ViT width {self.hidden_size}) training on a CPU: "
            f"{seconds:.{1 if seconds >= 1 else 3}f} s per iteration, "
            f"about {hours} for {epochs} epochs of {per_epoch} iterations (validation not counted). On a machine "
            f"without a GPU use the CPU preset: add {self.cpu_preset} to --config_file"
        )
        if is_rank0():
            logger.warning(self.message)
