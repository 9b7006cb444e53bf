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

"""The EMA teacher of HPM: an exponential moving average copy of the whole student, updated after every step.

The teacher is ignite's :class:`~ignite.handlers.EMAHandler` with two changes, which its arguments cannot express:
HPM's decay schedule (linear over *epochs*, then constant; ``EMAHandler`` warms its momentum up linearly over
iterations), and the update as one fused ``torch._foreach_lerp_`` over all float tensors (``EMAHandler`` runs two
kernels per parameter and buffer, which adds about 2 x 200 kernel launches per step to a ViT-B step that is already
host-bound on a GPU).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

__all__ = ["unwrap", "ema_decay_at", "EMATeacher"]

logger = logging.getLogger(__name__)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers (in any
    nesting), or the network itself."""
    while True:
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif isinstance(network, torch._dynamo.eval_frame.OptimizedModule):
            network = network._orig_mod
        else:
            return network


def ema_decay_at(epoch: int, decay_start: float = 0.999, decay_end: float = 0.9999, ramp_epochs: int = 100) -> float:
    """EMA decay at a 0-based ``epoch``: rises linearly from ``decay_start`` to ``decay_end`` over ``ramp_epochs``,
    then stays at ``decay_end`` (HPM's schedule).

    Examples::

        >>> ema_decay_at(0), round(ema_decay_at(50), 6), ema_decay_at(100), ema_decay_at(500)
        (0.999, 0.99945, 0.9999, 0.9999)
    """
    if ramp_epochs <= 0:
        return decay_end
    return decay_start + (decay_end - decay_start) * min(epoch / ramp_epochs, 1.0)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


class EMATeacher(EMAHandler):
    """EMA copy of a student network, ``theta_T = d * theta_T + (1 - d) * theta_S`` after each iteration, with
    ``d = ema_decay_at(epoch)``: ignite's ``EMAHandler`` (``momentum = 1 - d`` in ``engine.state.ema_momentum``,
    buffers copied) with HPM's per-epoch schedule and a fused update.

    Checkpointable (``state_dict`` / ``load_state_dict``: the teacher's weights), so checkpoints save it beside the
    model. :class:`~selfmedhpm.engine.HPMTrainer` attaches its teacher itself (one EMA update after every
    iteration): do not also put it in ``train#handlers``, which would update it twice per step. The teacher never
    takes gradients and stays in eval mode. Under DDP every rank applies the same update to the same synchronised
    student weights, so the teachers stay identical; ``check_sync`` verifies that at each epoch's end.

    Args:
        student: the student network (a DDP wrapper is unwrapped).
        decay_start: d at epoch 0, in (0, 1). Defaults to 0.999.
        decay_end: d after the ramp, in (0, 1). Defaults to 0.9999.
        ramp_epochs: epochs of the linear ramp. Defaults to 100.
        check_sync: under torch.distributed, compare a checksum of the teacher across ranks at each epoch's end and
            raise if they differ. Defaults to True.

    Examples::

        >>> student = nn.Linear(2, 2)
        >>> teacher = EMATeacher(student, decay_start=0.5, decay_end=0.5)
        >>> with torch.no_grad():
        ...     _ = student.weight.add_(1.0)
        >>> teacher.update(student, 0.5)
        >>> torch.allclose(teacher.module.weight, student.weight - 0.5)
        True
    """

    def __init__(
        self,
        student: nn.Module,
        decay_start: float = 0.999,
        decay_end: float = 0.9999,
        ramp_epochs: int = 100,
        check_sync: bool = True,
    ) -> None:
        for name, value in (("decay_start", decay_start), ("decay_end", decay_end)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}.")
        super().__init__(unwrap(student), momentum=1.0 - decay_start, handle_buffers="copy")
        self.decay_start, self.decay_end, self.ramp_epochs = decay_start, decay_end, ramp_epochs
        self.check_sync = check_sync
        self.decay = decay_start

    @property
    def module(self) -> nn.Module:
        """The teacher network (ignite's ``ema_model``)."""
        return self.ema_model

    def decay_at(self, epoch: int) -> float:
        """Decay at a 0-based epoch."""
        return ema_decay_at(epoch, self.decay_start, self.decay_end, self.ramp_epochs)

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """One EMA step towards ``student``'s current weights (float parameters and buffers); other buffers are
        copied. Walks the parameters and buffers themselves (the teacher is a deep copy, so they pair up in order)
        rather than two state dicts, which would dispatch a ``detach`` per tensor: about 460 host operators
        per step at ViT-B, for one fused ``lerp``."""
        teacher_float, student_float = [], []
        for theirs, ours in zip(_tensors(unwrap(student)), _tensors(self.module), strict=True):
            if ours.is_floating_point():
                teacher_float.append(ours)
                student_float.append(theirs if theirs.dtype == ours.dtype else theirs.to(ours.dtype))
            else:
                ours.copy_(theirs)
        torch._foreach_lerp_(teacher_float, student_float, 1.0 - decay)

    def checksum(self) -> torch.Tensor:
        """A float64 fingerprint of the teacher's weights (sum of |w| and of w * position)."""
        total = torch.zeros(2, dtype=torch.float64)
        for value in self.module.state_dict().values():
            if value.is_floating_point():
                flat = value.detach().double().flatten().cpu()
                total[0] += flat.abs().sum()
                total[1] += (flat * torch.linspace(0, 1, flat.numel(), dtype=torch.float64)).sum()
        return total

    def attach(self, engine: Engine, name: str = "ema_momentum", **kwargs: Any) -> None:
        """Updates the teacher after every iteration of ``engine``, towards the student it was built from, with the
        decay of the epoch (set at each epoch's start); checks the ranks agree at each epoch's end."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._schedule, name)
        super().attach(engine, name, warn_if_exists=False, **kwargs)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_sync)

    def _schedule(self, engine: Engine, name: str) -> None:
        setattr(engine.state, name, 1.0 - self.decay_at(engine.state.epoch - 1))

    def _update_ema_model(self, engine: Engine, name: str) -> None:
        self.decay = 1.0 - getattr(engine.state, name)
        self.update(self.model, self.decay)

    def _check_sync(self, engine: Engine) -> None:
        if not (self.check_sync and torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        local = self.checksum()
        device = next(self.module.parameters()).device
        gathered = [torch.zeros_like(local, device=device) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, local.to(device))
        if any(not torch.allclose(g.cpu(), local, rtol=1e-9, atol=1e-6) for g in gathered):
            raise RuntimeError(f"EMA teachers differ across ranks after epoch {engine.state.epoch}: {gathered}")
        logger.debug("EMA teacher identical on %d ranks", len(gathered))

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.module.load_state_dict(state_dict)

    def to(self, device: torch.device | str) -> EMATeacher:
        self.module.to(device)
        return self
