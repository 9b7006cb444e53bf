"""SelfMedHPM: hard-patches-mining masked autoencoder self-pretraining for 3D CT, packaged for MONAI bundles.

The package holds only what MONAI lacks; the bundles under ``bundles/`` reference these pieces from their configs:

- :mod:`selfmedhpm.masking`: easy-to-hard hard-patch masks and the hard-ratio schedule.
- :mod:`selfmedhpm.losses`: patch targets, the masked reconstruction loss and the relative loss-prediction loss.
- :mod:`selfmedhpm.networks`: the HPM masked autoencoder (ViT encoder in MONAI ``UNETR.vit`` layout + two heads).
- :mod:`selfmedhpm.ema`: the EMA teacher, an ignite handler.
- :mod:`selfmedhpm.engine`: the HPM trainer, a MONAI ``SupervisedTrainer``.
- :mod:`selfmedhpm.transfer`: encoder export and strict loading into UNETR.
- :mod:`selfmedhpm.phantom`: the synthetic abdominal CT generator.
- :mod:`selfmedhpm.check_data`: data checks with clear messages.
- :mod:`selfmedhpm.labels`, :mod:`selfmedhpm.evaluation`, :mod:`selfmedhpm.seg_engine`, :mod:`selfmedhpm.seg_data`:
  the segmentation bundle's label sets, evaluation reports, engine pieces and inputs.
- :mod:`selfmedhpm.reports`, :mod:`selfmedhpm.visualize`, :mod:`selfmedhpm.demo`: figures, tables and the main job.
"""

__version__ = "0.1.0"

import importlib
from typing import Any

from selfmedhpm.errors import install_excepthook

_SUBMODULES = {
    "bundle",
    "check_data",
    "checkpoint",
    "ema",
    "engine",
    "handlers",
    "losses",
    "masking",
    "metrics",
    "networks",
    "optim",
    "phantom",
    "reports",
    "transfer",
    "visualize",
    "demo",
    "evaluation",
    "labels",
    "seg_data",
    "seg_engine",
    "tracking",
    "release",
    "verify",
    "quant",
    "label_app",
    "errors",
    "faults",
    "utils",
    "patches",
}

install_excepthook()  # a run that fails on the user's input ends with one line naming the file and the problem


def __getattr__(name: str) -> Any:
    """Imports submodules on first use, so configs can write ``$selfmedhpm.masking.hard_patch_mask`` after a plain
    ``$import selfmedhpm``."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
