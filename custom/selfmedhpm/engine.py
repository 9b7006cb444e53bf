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

"""The HPM training iteration as a MONAI ``SupervisedTrainer``: teacher pass, hard-patch mask, student step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from selfmedhpm.ema import EMATeacher, unwrap
from selfmedhpm.faults import crash_point
from selfmedhpm.losses import HPMLoss
from selfmedhpm.masking import hard_patch_mask, hard_ratio_at, num_masked
from selfmedhpm.quant import Int8Teacher
from selfmedhpm.utils import autocast, rank
from selfmedhpm.views import TeacherView

__all__ = ["NonFiniteLossError", "check_finite", "HPMTrainer"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; training stops before the weights (and any checkpoint) are spoiled."""


def check_finite(loss: torch.Tensor, engine: Engine) -> None:
    """Raises :class:`NonFiniteLossError` naming the epoch and iteration when ``loss`` is NaN or Inf."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"non-finite loss ({loss.item()}) at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
            "training stopped before the weights were updated; the last checkpoint is intact. Lower the learning "
            "rate, check the input intensities (the data check reports NaN/Inf voxels), or use fp32."
        )


class HPMTrainer(SupervisedTrainer):
    """One HPM iteration per batch (Wang et al., CVPR 2023), on MONAI's ``SupervisedTrainer`` so that MONAI handlers
    (stats, checkpoints, lr schedules, MLflow) work unchanged.

    Per iteration: (1) the EMA teacher scores all L patches in its view (inference mode, optionally in reduced
    precision): its loss predictor on the full crop (``teacher_view="full"``, HPM's), in complementary masked passes
    (``"masked"``) or its real reconstruction loss in one masked pass (``"reconstruction"``, AnatoMask's; see
    :mod:`selfmedhpm.views`); (2) :func:`hard_patch_mask` masks the ``int(K * alpha_e)``
    highest-scored patches plus random others, ``alpha_e = final_hard_ratio * epoch / max_epochs``; (3) the student
    reconstructs and predicts losses, ``L = L_rec + lambda * L_pred``; (4) optimiser step. The EMA update runs after
    the iteration: the trainer attaches its :class:`~selfmedhpm.ema.EMATeacher` as a handler.

    ``engine.state.output`` holds ``image``, ``loss``, ``rec_loss``, ``pred_loss`` and ``hard_ratio``, decollated
    into one dict per sample like the outputs of MONAI's trainers (so ``from_engine(["loss"], first=True)`` works).

    Args:
        device: training device.
        max_epochs: E.
        train_data_loader: batches with an ``image`` key (labels are not used).
        network: the student :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` (DDP-wrapped is fine).
        optimizer: optimiser of the student.
        loss_function: an :class:`~selfmedhpm.losses.HPMLoss`.
        teacher: the :class:`~selfmedhpm.ema.EMATeacher` of the student.
        mask_ratio: gamma. Defaults to 0.75.
        final_hard_ratio: alpha_T. Defaults to 0.5.
        teacher_view: what the teacher scores patches in: ``"full"`` (HPM's paper and code), ``"masked"`` or
            ``"reconstruction"`` (:class:`~selfmedhpm.views.TeacherView`). Defaults to "full".
        teacher_passes: R, the masked passes of the ``"masked"`` view. Defaults to 4.
        teacher_precision: precision of the teacher pass: "fp32", "bf16"/"fp16" (autocast) where the hardware has
            it, or "int8" (a :class:`~selfmedhpm.quant.Int8Teacher` shadow of the EMA weights, for CPUs with int8
            dot products but no fast bf16; never a default, as its masks depend on the CPU). Defaults to "fp32"
            (the pretraining bundle: the student's precision). The teacher only ranks patches, so its precision
            changes which patches are hard at the margin only (``make bench`` reports the overlap of the hard sets
            against fp32). The int8 shadow has no reconstructor, so it serves the ``"full"`` and ``"masked"`` views
            only.
        teacher_refresh_interval: with ``teacher_precision="int8"``, re-quantise from the EMA weights every this many
            iterations, counted from each epoch's start (so a run resumed from an epoch checkpoint re-quantises
            at the same iterations as an uninterrupted one).
        seed: seed of the mask generator; each rank adds its rank, so ranks draw different random patches.
        train_handlers: ignite handlers, as in ``SupervisedTrainer``.
        kwargs: the other ``SupervisedTrainer`` arguments (``epoch_length``, ``key_train_metric``, ...), honoured as
            there: ``prepare_batch`` gives the images (its first item; labels are not used), ``inferer`` runs the
            student as ``inferer(images, network, mask, K)`` (MONAI's ``SimpleInferer`` by default; the student's mixed
            precision is an :class:`~selfmedhpm.inferers.AutocastInferer`, as in the segmentation bundle),
            ``amp=True`` adds MONAI's gradient scaler (fp16), ``postprocessing`` and ``decollate`` act on the
            output, ``compile=True`` (with ``compile_kwargs``) compiles the student with ``torch.compile`` as
            MONAI does, and here also the loss and the teacher pass (fp32/bf16/fp16; the int8 copy stays eager).
            Every shape in the step is static (the number of masked patches is passed, never read from the mask),
            so the compiled step has no graph breaks and compiles once. ``amp_kwargs`` (the inferer's precision
            does that) and gradient accumulation are refused with a ValueError rather than ignored.

    The step reads nothing back from the device except the finite-loss check (one synchronisation per iteration,
    which keeps a NaN out of the weights); ``rec_loss`` and ``pred_loss`` stay device tensors until a handler logs
    them.

    Raises:
        ValueError: an argument this trainer does not honour, or a precision the device lacks.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: HPMLoss,
        teacher: EMATeacher,
        mask_ratio: float = 0.75,
        final_hard_ratio: float = 0.5,
        teacher_view: str = "full",
        teacher_passes: int = 4,
        teacher_precision: str = "fp32",
        teacher_refresh_interval: int = 10,
        seed: int = 0,
        train_handlers: Sequence | None = None,
        **kwargs: Any,
    ) -> None:
        device = torch.device(device)
        refused = {k: kwargs[k] for k in ("amp_kwargs",) if kwargs.get(k)}
        refused.update({k: kwargs[k] for k in ("accumulation_steps",) if kwargs.get(k, 1) != 1})
        if refused:
            raise ValueError(
                f"HPMTrainer does not honour {refused}: the student's mixed precision is its inferer's "
                "(selfmedhpm.inferers.AutocastInferer(precision='bf16'), amp=True for fp16's gradient scaler), the "
                "teacher's is teacher_precision=; gradient accumulation is not implemented."
            )
        if teacher_refresh_interval < 1:
            raise ValueError(f"teacher_refresh_interval must be >= 1, got {teacher_refresh_interval}.")
        int8 = str(teacher_precision).lower() == "int8"
        if int8 and device.type != "cpu":
            raise ValueError(f"teacher_precision='int8' runs on CPU only; use 'bf16' on {device.type}.")
        self.view = TeacherView(teacher_view, mask_ratio, teacher_passes, getattr(loss_function, "norm_pix_loss", True))
        if int8 and teacher_view == "reconstruction":
            raise ValueError(
                "teacher_view='reconstruction' needs the teacher's reconstructor, which the int8 teacher "
                "drops: use teacher_precision 'fp32' (or 'bf16'), or the 'full' or 'masked' view."
            )
        autocast(device, "fp32" if int8 else teacher_precision)  # validate early
        self.teacher = teacher.to(device)
        self.mask_ratio, self.final_hard_ratio = mask_ratio, final_hard_ratio
        self.teacher_precision = teacher_precision
        self.teacher_refresh_interval = teacher_refresh_interval
        self.int8_teacher: Int8Teacher | None = None  # the int8 shadow, built on first use (after any resume)
        self.mask_generator = torch.Generator(device=device).manual_seed(seed + rank())
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=train_handlers,
            **kwargs,
        )
        self.teacher.attach(self)  # EMA update after every iteration, epoch-end rank check
        self._teacher_pass = self._predict_patch_loss
        if self.compile:  # MONAI's SupervisedTrainer compiled the student network; the loss and teacher pass too
            compile_kwargs = kwargs.get("compile_kwargs") or {}
            self.loss_function = torch.compile(self.loss_function, **compile_kwargs)
            self._teacher_pass = torch.compile(self._predict_patch_loss, **compile_kwargs)

    def hard_ratio(self, engine: Engine) -> float:
        """alpha_e of the current epoch."""
        return hard_ratio_at(engine.state.epoch - 1, engine.state.max_epochs, self.final_hard_ratio)

    def teacher_scores(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's per-patch scores ``[N, L]`` (higher: harder) of the crops ``images`` in its view, in
        inference mode. The view's random masks are drawn here, from the mask generator, outside the (compilable)
        network passes; the full view draws nothing."""
        masks = self.view.draw(images.shape[0], unwrap(self.teacher.module).num_patches, self.mask_generator,
                               images.device)  # fmt: skip
        if str(self.teacher_precision).lower() == "int8":
            return self.view.scores(self._int8_teacher(), images, masks).clone()
        with torch.inference_mode():
            scores = self._teacher_pass(images, masks)
        return scores.float().clone()  # a normal tensor, usable outside inference mode

    def _predict_patch_loss(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        with autocast(images.device, self.teacher_precision):
            return self.view.scores(self.teacher.module, images, masks)

    def _int8_teacher(self) -> Int8Teacher:
        if self.int8_teacher is None:
            self.int8_teacher = Int8Teacher(self.teacher.module, refresh_interval=None)
        else:
            steps = self.state.epoch_length or self.state.iteration or 1
            if (max(self.state.iteration, 1) - 1) % steps % self.teacher_refresh_interval == 0:
                self.int8_teacher.refresh()
        return self.int8_teacher

    def iteration(self, batchdata: dict[str, torch.Tensor]) -> dict:
        """One HPM iteration on ``batchdata`` outside :meth:`run` (benchmarks, tests): teacher pass, mask, student
        step, with the trainer's current state (epoch, iteration). The handlers of ``ITERATION_COMPLETED``, the EMA
        update among them, do not run; call ``teacher.update`` for that. Returns the iteration's output."""
        return self._iteration(self, batchdata)

    def _iteration(self, engine: HPMTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images = batch[0]  # labels, if the batch has them, are not used
        images = images.as_tensor() if hasattr(images, "as_tensor") else images  # [N, C, H, W, D]

        hard_ratio = self.hard_ratio(engine)
        scores = self.teacher_scores(images)  # [N, L]
        k = num_masked(scores.shape[1], self.mask_ratio)  # K, the same in every row: static shapes below
        mask = hard_patch_mask(scores, self.mask_ratio, hard_ratio, self.mask_generator)  # [N, L], True = masked

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        reconstruction, predicted_loss = engine.inferer(images, engine.network, mask, k)  # autocast in the inferer
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        losses = engine.loss_function(reconstruction, predicted_loss, images, mask, k)
        loss = losses["loss"]
        check_finite(loss, engine)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = getattr(engine, "scaler", None) if engine.amp else None  # MONAI's, made by Trainer.run for amp
        if scaler is not None:
            scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            crash_point("iteration", engine.state.iteration)
            engine.optimizer.step()
        engine.state.output = {
            Keys.IMAGE: images,
            Keys.LOSS: loss.detach(),
            "rec_loss": losses["rec_loss"],  # detached device tensors: read at the log interval, not here
            "pred_loss": losses["pred_loss"],
            "hard_ratio": hard_ratio,
        }
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI decollates the output here, as for its trainers
        return engine.state.output


def student(engine: SupervisedTrainer) -> torch.nn.Module:
    """The student network of ``engine`` without its DDP wrapper."""
    return unwrap(engine.network)
