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

"""Shared fixtures: a tiny synthetic CT data set, the environment of subprocesses, one intra-op thread. The helpers
test modules import are in ``helpers.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import phantom_set

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
