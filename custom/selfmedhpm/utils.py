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

"""Small helpers every runtime module may use: the process's rank and process group, atomic file writes, config flags
as bools and the autocast context of a precision name.

A leaf module (it imports only the standard library, torch, :mod:`selfmedhpm.errors` and :mod:`selfmedhpm.faults`),
so that no module has to import a bigger one for one of these helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from selfmedhpm.errors import FlagError, OutputWriteError, storage_errno
from selfmedhpm.faults import write_fault

__all__ = [
    "rank", "world_size", "is_rank0", "init_distributed", "end_distributed", "atomic_write", "write_json_atomic",
    "as_bool", "autocast", "EpochMeans",
]  # fmt: skip

_UMASK = os.umask(0)
os.umask(_UMASK)


def rank() -> int:
    """This process's rank, 0 outside torch.distributed."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if initialised else 0


def world_size() -> int:
    """Number of processes, 1 outside torch.distributed."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if initialised else 1


def is_rank0() -> bool:
    """True outside torch.distributed and on rank 0."""
    return rank() == 0


def init_distributed(backend: str | None = None, device: torch.device | str | None = None) -> bool:
    """Joins the process group of a ``torchrun`` launch (once; ``backend`` defaults to nccl with CUDA, else gloo) and
    makes ``device`` this process's CUDA device. The multi-GPU configs run it in ``initialize``. Returns True."""
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    return True


def end_distributed() -> bool:
    """Waits for every rank, then leaves the process group (a rank that left while rank 0 still wrote its checkpoint
    aborted once). The multi-GPU configs run it in ``finalize``. Returns whether there was a group."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[Any]], object],
    binary: bool = False,
    before_replace: Callable[[], object] | None = None,
    size: Callable[[], int | None] | None = None,
) -> Path:
    """Writes ``path`` through ``write(file)`` into a temporary file of the same folder, flushed to disk, then renamed
    over ``path``: a reader sees the old file or the new one, never a part; on any error ``path`` is left as it was
    and the temporary file is removed.

    A write that fails for lack of space or permission (an ``OSError`` with ENOSPC, EDQUOT, EROFS, EACCES or EPERM
    anywhere in the error's chain: torch reports a full disk as a ``RuntimeError``) raises
    :class:`~selfmedhpm.errors.OutputWriteError`, whose message names ``path`` and the space it needed.
    ``SELFMEDHPM_FAIL_WRITE`` injects such a failure (:func:`selfmedhpm.faults.write_fault`).

    Args:
        path: the file to write (its folder is created).
        write: called with the open temporary file.
        binary: open the temporary file in binary mode.
        before_replace: called after the data is on disk and before the rename (fault-injection tests).
        size: returns the bytes the file needs, for the message of a failed write (called only then); without it
            the message gives the bytes written before the failure.

    Examples::

        >>> import tempfile
        >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.txt", lambda f: f.write("new"))
        >>> p.read_text()
        'new'
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            write_fault(path)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as error:
        written = _remove(tmp)
        code = storage_errno(error)
        if code is None or isinstance(error, OutputWriteError):
            raise
        raise OutputWriteError(code, path, needed=size() if size is not None else None, written=written) from error
    return path


def _remove(tmp: str | None) -> int | None:
    """Removes a temporary file left by a failed write; returns how many bytes it held."""
    if tmp is None or not os.path.exists(tmp):
        return None
    written = os.path.getsize(tmp)
    with contextlib.suppress(OSError):
        os.remove(tmp)
    return written


def write_json_atomic(obj: object, path: str | os.PathLike) -> Path:
    """Writes ``obj`` as indented JSON to ``path`` with :func:`atomic_write`."""
    text = json.dumps(obj, indent=2)
    return atomic_write(path, lambda f: f.write(text), size=lambda: len(text.encode()))


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", "none", "null", ""}


def as_bool(value: object, name: str = "value") -> bool:
    """A config flag as a bool. ``--resume true`` reaches a bundle as the *string* "true" (and "false" would be
    truthy), so flags go through this: bools, 0/1 and the usual words are accepted, anything else is an error.

    Examples::

        >>> as_bool("false"), as_bool("True"), as_bool(1), as_bool(None)
        (False, True, True, False)
    """
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FlagError(f"--{name} must be true or false (true/false, yes/no, on/off, 1/0), got {value!r}.")


_DTYPES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` in {"fp32", "bf16", "fp16"} on the device's type; fp32 is a no-op.

    Examples::

        >>> with autocast("cpu", "bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    key = (precision or "fp32").lower()
    if key not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}.")
    dtype = _DTYPES[key]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class EpochMeans:
    """Per-key means of the scalars an engine outputs over an epoch (the history file and MLflow's epoch metrics).
    Tensors are summed where they are, so nothing waits for the device until :meth:`means` is read.

    Examples::

        >>> means = EpochMeans()
        >>> means.add({"loss": torch.tensor(0.5), "hard_ratio": 0.25})
        >>> means.add({"loss": torch.tensor(1.5)})
        >>> means.means()
        {'loss': 1.0, 'hard_ratio': 0.25}
    """

    def __init__(self) -> None:
        self.sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def add(self, values: Mapping[str, float | torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] += value.detach() if isinstance(value, torch.Tensor) else value
            self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: float(total) / self.counts[key] for key, total in self.sums.items() if self.counts[key]}
