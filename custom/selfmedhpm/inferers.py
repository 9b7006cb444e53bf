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

"""Mixed precision the same way in both bundles: the trainers' and evaluators' inferer runs the network under
``torch.autocast`` (bf16 on CPUs and GPUs, fp16 on GPUs) and hands float32 outputs to the losses and metrics; for
fp16 training the trainer's own ``amp`` flag adds MONAI's gradient scaler. The HPM teacher's pass has its own
precision (``teacher_precision`` of :class:`~selfmedhpm.engine.HPMTrainer`), as it only ranks patches.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from selfmedhpm.utils import autocast

__all__ = ["AutocastInferer"]


def _to_float(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float(o) for o in output)
    if isinstance(output, dict):
        return {k: _to_float(v) for k, v in output.items()}
    return output


class AutocastInferer(Inferer):
    """Runs another MONAI inferer under ``torch.autocast`` of the input's device and returns float32 outputs, so
    the loss and the metrics are computed in full precision. Unlike MONAI engines' ``amp`` flag (CUDA only), this
    gives bf16 on CPUs too.

    Args:
        inferer: the inferer to wrap (``SimpleInferer`` for training, ``SlidingWindowInferer`` for whole volumes).
            Defaults to ``SimpleInferer()``.
        precision: "fp32" (no autocast), "bf16" or "fp16" (GPU; for training also set the trainer's ``amp`` for
            its gradient scaler). Defaults to "fp32".

    Examples::

        >>> inferer = AutocastInferer(SimpleInferer(), precision="bf16")
        >>> inferer(torch.ones(1, 4), torch.nn.Linear(4, 2)).dtype
        torch.float32
    """

    def __init__(self, inferer: Inferer | None = None, precision: str = "fp32") -> None:
        super().__init__()
        autocast("cpu", precision)  # raises ValueError for an unknown precision
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs ``self.inferer(inputs, network, *args, **kwargs)`` under autocast."""
        with autocast(inputs.device, self.precision):
            output = self.inferer(inputs, network, *args, **kwargs)
        return _to_float(output)
