"""The EMA teacher of HPM: an exponential moving average copy of the whole student, updated after every step."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

__all__ = ["unwrap", "ema_decay_at", "EMATeacher"]

logger = logging.getLogger(__name__)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, or the network itself."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


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


class EMATeacher:
    """EMA copy of a student network, ``theta_T = d * theta_T + (1 - d) * theta_S`` after each iteration.

    An ignite handler and a checkpointable object (``state_dict`` / ``load_state_dict``), so checkpoints save it
    beside the model. :class:`~selfmedhpm.engine.HPMTrainer` attaches its teacher itself (one EMA update after every
    iteration): do not also put it in ``train#handlers``, which would update it twice per step. The teacher never
    takes gradients and stays in eval mode. Under DDP every rank applies the same update to the same synchronised
    student weights, so the teachers stay identical; ``check_sync`` verifies that at each epoch's end.

    Args:
        student: the student network (a DDP wrapper is unwrapped).
        decay_start: d at epoch 0. Defaults to 0.999.
        decay_end: d after the ramp. Defaults to 0.9999.
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
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        self.module = copy.deepcopy(unwrap(student)).eval().requires_grad_(False)
        self.decay_start, self.decay_end, self.ramp_epochs = decay_start, decay_end, ramp_epochs
        self.check_sync = check_sync
        self.decay = decay_start

    def decay_at(self, epoch: int) -> float:
        """Decay at a 0-based epoch."""
        return ema_decay_at(epoch, self.decay_start, self.decay_end, self.ramp_epochs)

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """One EMA step towards ``student``'s current weights (float tensors); other buffers are copied."""
        student_state = unwrap(student).state_dict()
        teacher_float, student_float = [], []
        for name, value in self.module.state_dict().items():
            source = student_state[name]
            if value.is_floating_point():
                teacher_float.append(value)
                student_float.append(source.to(value.dtype))
            else:
                value.copy_(source)
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

    def attach(self, engine: Engine) -> None:
        """Updates the teacher after every iteration of ``engine`` (its ``network`` is the student)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)

    def _on_iteration(self, engine: Engine) -> None:
        self.decay = self.decay_at(engine.state.epoch - 1)
        self.update(engine.network, self.decay)

    def _on_epoch(self, engine: Engine) -> None:
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
