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

"""Named crash points and failing writes, so that tests can break a run at an exact moment instead of after a sleep.

A run crashes at a point only when the environment variable ``SELFMEDHPM_CRASH_AT`` names it (``point:number``);
otherwise :func:`crash_point` does nothing. The points:

- ``iteration:N``: in the middle of training iteration N (after the backward pass, before the optimiser step);
- ``checkpoint_writing:N``: while the checkpoint of epoch N is being written (its temporary file complete, not yet
  renamed);
- ``checkpoint_saved:N``: right after the checkpoint of epoch N is written, before anything else happens.

The process kills itself with SIGKILL, like the out-of-memory killer or a cluster's pre-emption would: no
handler, ``finally`` block or buffered write runs.

A write fails when the environment variable ``SELFMEDHPM_FAIL_WRITE`` names it (``pattern:number[:ERRNO]``): the
``number``-th atomic write of this process (:func:`selfmedhpm.utils.atomic_write`: checkpoints, weights, exports,
``history.json``, reports) whose file name matches the glob ``pattern`` raises ``OSError(ENOSPC)`` after its data
went into the temporary file, as a full disk reports it when the data is flushed; ``ERRNO`` picks another error
(``EDQUOT``, ``EROFS``, ``EACCES``). For example:

- ``checkpoint_epoch=3.pt:1``: the checkpoint of epoch 3 finds the disk full;
- ``checkpoint_*:2``: the second checkpoint written;
- ``history.json:2:EROFS``: the second write of the history finds its folder read-only.

Examples::

    >>> crash_point("iteration", 3)  # SELFMEDHPM_CRASH_AT unset: nothing happens
    >>> write_fault("checkpoint_epoch=3.pt")  # SELFMEDHPM_FAIL_WRITE unset: nothing happens
    >>> os.environ[WRITE_ENV] = "model.pt:2"
    >>> write_fault("out/model.pt")  # the first write of model.pt goes through
    >>> write_fault("out/model.pt")
    Traceback (most recent call last):
    ...
    OSError: [Errno 28] No space left on device (SELFMEDHPM_FAIL_WRITE=model.pt:2): 'out/model.pt'
    >>> del os.environ[WRITE_ENV]
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from collections import Counter

__all__ = ["ENV", "WRITE_ENV", "crash_point", "write_fault"]

ENV = "SELFMEDHPM_CRASH_AT"
WRITE_ENV = "SELFMEDHPM_FAIL_WRITE"

_WRITES: Counter[str] = Counter()
"""How many writes matched each ``SELFMEDHPM_FAIL_WRITE`` value so far in this process."""


def crash_point(point: str, number: int) -> None:
    """Kills this process with SIGKILL when ``SELFMEDHPM_CRASH_AT`` is ``f"{point}:{number}"``.

    Args:
        point: the crash point's name (see the module docstring).
        number: the iteration or epoch the point is reached at.
    """
    if os.environ.get(ENV) == f"{point}:{number}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_fault(path: str | os.PathLike) -> None:
    """Raises ``OSError`` (ENOSPC unless named otherwise) when this write of ``path`` is the one that
    ``SELFMEDHPM_FAIL_WRITE`` (``pattern:number[:ERRNO]``) names; see the module docstring.

    Args:
        path: the file being written (its name is matched against the pattern).
    """
    spec = os.environ.get(WRITE_ENV)
    if not spec:
        return
    pattern, number, *code = spec.split(":")
    if not fnmatch.fnmatchcase(os.path.basename(os.fspath(path)), pattern):
        return
    _WRITES[spec] += 1
    if _WRITES[spec] == int(number):
        value = getattr(errno, code[0]) if code else errno.ENOSPC
        raise OSError(value, f"{os.strerror(value)} ({WRITE_ENV}={spec})", os.fspath(path))
