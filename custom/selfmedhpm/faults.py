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

"""Named crash points, so that tests can kill a run at an exact moment instead of after a sleep.

A run crashes at a point only when the environment variable ``SELFMEDHPM_CRASH_AT`` names it (``point:number``);
otherwise :func:`crash_point` does nothing. The points:

- ``iteration:N``: in the middle of training iteration N (after the backward pass, before the optimiser step);
- ``checkpoint_writing:N``: while the checkpoint of epoch N is being written (its temporary file complete, not yet
  renamed);
- ``checkpoint_saved:N``: right after the checkpoint of epoch N is written, before anything else happens.

The process kills itself with SIGKILL, like the out-of-memory killer or a cluster's pre-emption would: no
handler, ``finally`` block or buffered write runs.

Examples::

    >>> crash_point("iteration", 3)  # SELFMEDHPM_CRASH_AT unset: nothing happens
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "crash_point"]

ENV = "SELFMEDHPM_CRASH_AT"


def crash_point(point: str, number: int) -> None:
    """Kills this process with SIGKILL when ``SELFMEDHPM_CRASH_AT`` is ``f"{point}:{number}"``.

    Args:
        point: the crash point's name (see the module docstring).
        number: the iteration or epoch the point is reached at.
    """
    if os.environ.get(ENV) == f"{point}:{number}":
        os.kill(os.getpid(), signal.SIGKILL)
