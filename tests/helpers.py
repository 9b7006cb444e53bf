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

"""Helpers the test modules import (``from helpers import ...``): where the bundles are, running a workflow as the
model zoo's CI does, the tiny segmentation preset, a synthetic data set. Fixtures live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "bundles" / "selfmedhpm_ct_pretraining"
SEGMENT = ROOT / "bundles" / "selfmedhpm_ct_segmentation"
SCHEMA = ROOT / "docs" / "schema" / "meta_schema_20240725.json"


def configs(bundle: Path, *names: str) -> list[str]:
    """Config file paths of ``bundle`` for ``ConfigWorkflow(config_file=...)``."""
    return [str(bundle / "configs" / name) for name in names]


def run_workflow(config_file: list[str], workflow_type: str = "train", **overrides):
    """initialize / check_properties / run / finalize, as the model zoo's CI does; returns the workflow."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_file,
        meta_file=str(Path(config_file[0]).parent / "metadata.json"),
        logging_file=str(Path(config_file[0]).parent / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


SEG_TINY = {  # the segmentation CPU preset at a 32^3 crop on a 6 mm grid, validated every epoch: seconds per epoch
    "val_interval": 1,
    "roi_size": [32, 32, 32],
    "pixdim": [6.0, 6.0, 6.0],
    "feature_size": 8,
    "num_samples": 2,
    "sw_batch_size": 4,
    "warmup_epochs": 1,
}


def phantom_set(tmp_path_factory, name: str, cases: int, val_fraction: float = 0.2) -> Path:
    """``cases`` synthetic abdominal CTs of 96x96x48 voxels in a fresh folder, BTCV layout (seed 0)."""
    from selfmedhpm_tools.phantom import generate_dataset

    out = tmp_path_factory.mktemp(name)
    generate_dataset(out, cases=cases, seed=0, val_fraction=val_fraction, shape=(96, 96, 48), verbose=False)
    return out


def paired_p(a, b) -> float:
    """One-sided p-value of ``mean(a - b) > 0``: a paired permutation test (the signs of the differences flipped at
    random, exactly when there are few pairs), scipy's ``permutation_test``."""
    import numpy as np
    from scipy.stats import permutation_test

    differences = np.subtract(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    test = permutation_test(
        (differences,), np.mean, permutation_type="samples", alternative="greater", n_resamples=10_000, random_state=0
    )
    return float(test.pvalue)
