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

"""Shared fixtures: a tiny synthetic CT data set and helpers to run the bundles in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "bundles" / "selfmedhpm_ct_pretraining"
SEGMENT = ROOT / "bundles" / "selfmedhpm_ct_segmentation"
SCHEMA = ROOT / "docs" / "schema" / "meta_schema_20240725.json"

os.environ.setdefault("OMP_NUM_THREADS", "2")


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


SEG_TINY = {  # the segmentation CPU preset at a 32^3 crop on a 6 mm grid: seconds per epoch
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


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Five synthetic abdominal CTs (4 training, 1 validation) of 96x96x48 voxels."""
    return phantom_set(tmp_path_factory, "phantom", cases=5)


@pytest.fixture(scope="session")
def python_env() -> dict:
    """Environment for subprocesses: this interpreter's packages, two threads."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on shared, busy cores two OpenMP threads can run ten times slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
