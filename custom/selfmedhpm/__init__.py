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

"""SelfMedHPM: hard-patches-mining masked autoencoder self-pretraining for 3D CT, packaged for MONAI bundles.

The runtime package: what the bundles under ``bundles/`` reference from their configs, and what MONAI lacks. The
tooling around it (demo, study, benchmarks, release, verification, the synthetic CT generator) is the separate
package :mod:`selfmedhpm_tools`, which imports this one and is never imported by it.

- :mod:`selfmedhpm.masking`, :mod:`selfmedhpm.views`: easy-to-hard hard-patch masks and the hard-ratio schedule; the
  teacher's view (what it sees when it scores patches: the full crop, complementary masked passes, or its real
  reconstruction loss in one masked pass).
- :mod:`selfmedhpm.patches`, :mod:`selfmedhpm.losses`: patch geometry; the masked reconstruction loss and the
  relative loss-prediction loss.
- :mod:`selfmedhpm.networks`: the HPM masked autoencoder (ViT encoder in MONAI ``UNETR.vit`` layout + two heads).
- :mod:`selfmedhpm.ema`, :mod:`selfmedhpm.engine`: the EMA teacher and the HPM trainer (a MONAI ``SupervisedTrainer``).
- :mod:`selfmedhpm.inferers`: mixed precision, the same way in both bundles.
- :mod:`selfmedhpm.augment`: domain randomisation MONAI lacks (per-label intensity, SynthSeg-style; Hounsfield-unit
  augmentations in front of the CT window).
- :mod:`selfmedhpm.transfer`, :mod:`selfmedhpm.checkpoint`: encoder export, strict loading into UNETR, atomic
  checkpoints (resumable epochs; the best model of the segmentation bundle).
- :mod:`selfmedhpm.check_data`: data checks with clear messages.
- :mod:`selfmedhpm.labels`, :mod:`selfmedhpm.evaluation`, :mod:`selfmedhpm.seg_data`: the segmentation bundle's
  label sets, evaluation reports and inputs.
- :mod:`selfmedhpm.bundle`, :mod:`selfmedhpm.handlers`, :mod:`selfmedhpm.tracking`, :mod:`selfmedhpm.journal`,
  :mod:`selfmedhpm.visualize`: config helpers, ignite handlers, MLflow tracking (and what it keeps while the server
  cannot be reached), the HPM figure.
- :mod:`selfmedhpm.utils`, :mod:`selfmedhpm.errors`, :mod:`selfmedhpm.faults`, :mod:`selfmedhpm.optim`,
  :mod:`selfmedhpm.quant`: leaf helpers.
"""

__version__ = "0.1.0"

import importlib
from typing import Any

_SUBMODULES = {
    "bundle",
    "check_data",
    "checkpoint",
    "ema",
    "engine",
    "handlers",
    "losses",
    "masking",
    "networks",
    "optim",
    "transfer",
    "visualize",
    "evaluation",
    "labels",
    "seg_data",
    "tracking",
    "quant",
    "errors",
    "faults",
    "utils",
    "patches",
    "inferers",
    "views",
    "journal",
    "augment",
}


def __getattr__(name: str) -> Any:
    """Imports submodules on first use, so configs can write ``$selfmedhpm.masking.hard_patch_mask`` after a plain
    ``$import selfmedhpm``."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
