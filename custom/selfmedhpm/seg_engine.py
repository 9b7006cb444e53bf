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

"""Engine pieces of the segmentation bundle: resumable best-model tracking. Everything else is MONAI's
``SupervisedTrainer`` / ``SupervisedEvaluator`` (mixed precision: :mod:`selfmedhpm.inferers`).
"""

from __future__ import annotations

import logging

from monai.handlers import CheckpointSaver

__all__ = ["BestMetricState"]

logger = logging.getLogger(__name__)


class BestMetricState:
    """The best-model tracking of a ``CheckpointSaver`` (its key-metric scores so far) as a checkpointable object,
    so that a resumed training run only replaces ``model.pt`` by a better model than the interrupted run's best.

    Args:
        saver: the ``CheckpointSaver`` with ``save_key_metric=True``.

    Examples::

        >>> import tempfile
        >>> import torch
        >>> saver = CheckpointSaver(tempfile.mkdtemp(), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True)
        >>> BestMetricState(saver).state_dict()
        {'_saved': []}
    """

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict:
        """``{"_saved": [(score, file name), ...]}`` of the key-metric checkpoints, or ``{}`` without one."""
        checkpoint = self.saver._key_metric_checkpoint
        return dict(checkpoint.state_dict()) if checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores what :meth:`state_dict` returned."""
        if state_dict:
            self.saver.load_state_dict(state_dict)
