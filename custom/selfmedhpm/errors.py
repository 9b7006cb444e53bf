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

"""Errors that a user's input causes (data, data lists, weight files, config overrides), and how they are shown.

MONAI's config parser wraps an exception raised while a config expression is evaluated in a ``RuntimeError`` ("Failed
to evaluate ConfigExpression ..."), so the message that names the user's file ends up in the middle of a long
traceback. :func:`install_excepthook` prints the :class:`UserInputError` found in its chain as one line, prefixed
with ``ERROR``, instead of the traceback (and of the error records MONAI's and ignite's loggers write while the error
unwinds); ``SELFMEDHPM_DEBUG=1`` keeps the traceback above that line, for bug reports. Errors that are not the
user's print as Python prints them. It changes how every uncaught error of the process is printed, so only code that
owns the process installs it: the bundles' workflows (first step of ``initialize``) and the command-line tools (under
``if __name__ == "__main__"``); importing :mod:`selfmedhpm` installs nothing.

The same goes for an output that cannot be written (:class:`OutputWriteError`: a full disk, an exceeded quota, a
read-only or forbidden folder): its line names the file, the space it needed and, in a training run, the last good
checkpoint and the command that resumes from it.

Examples::

    >>> class MissingThing(UserInputError, FileNotFoundError):
    ...     pass
    >>> try:
    ...     try:
    ...         raise MissingThing("/data/dataset_0.json: datalist not found")
    ...     except MissingThing as e:
    ...         raise RuntimeError("Failed to evaluate ConfigExpression") from e
    ... except RuntimeError as wrapped:
    ...     print(user_error(wrapped))
    /data/dataset_0.json: datalist not found
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = [
    "UserInputError",
    "InputNotFoundError",
    "FlagError",
    "OutputWriteError",
    "WRITE_ERRNOS",
    "storage_errno",
    "set_resume_point",
    "resume_command",
    "user_error",
    "debugging",
    "KNOWN_NOTICES",
    "quiet_known_notices",
    "install_excepthook",
]

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""The errors of a write that the user's machine causes, not the program: no space, quota, read-only, forbidden."""
_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # never raised by a read

_resume_point: Callable[[], str | os.PathLike | None] | None = None


class UserInputError(Exception):
    """Base of the errors a user's input causes; their message names the file (or flag) and the problem."""

    def summary(self) -> str:
        """What a run prints last: the message, or a shorter form of it."""
        return str(self)


class InputNotFoundError(UserInputError, FileNotFoundError):
    """An input file or folder the user named does not exist or holds nothing usable."""


class FlagError(UserInputError, ValueError):
    """A config flag with a value that is not a boolean."""


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def set_resume_point(finder: Callable[[], str | os.PathLike | None] | None) -> None:
    """Tells :class:`OutputWriteError` that this process trains a resumable run: ``finder()`` returns its last
    complete checkpoint (None before the first). :class:`selfmedhpm.checkpoint.EpochCheckpointer` sets it when
    attached; None forgets it."""
    global _resume_point
    _resume_point = finder


def resume_command(argv: list[str] | None = None) -> str:
    """The command that resumes this run: ``python -m monai.bundle`` with the same arguments and ``--resume True``
    when that is how the run was started (a single process); otherwise a description of it.

    Examples::

        >>> argv = ["/x/monai/bundle/__main__.py", "run", "--config_file", "['t.json','cpu.json']", "--resume", "no"]
        >>> print(resume_command(argv))
        python -m monai.bundle run --config_file "['t.json','cpu.json']" --resume True
    """
    argv = list(sys.argv if argv is None else argv)
    distributed = "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
    if distributed or not argv or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return "the same command with --resume True"
    args, skip = [], False
    for arg in argv[1:]:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        args.append(arg)
    return " ".join(_quote(arg) for arg in ["python", "-m", "monai.bundle", *args, "--resume", "True"])


def _quote(arg: str) -> str:
    """``arg`` for a shell: as it is when it can be, else in double quotes when that is enough (a config list
    ``"['a.json','b.json']"`` reads better so than in shlex's single quotes)."""
    quoted = shlex.quote(arg)
    if quoted != arg and not set(arg) & set('"$`\\!'):
        return f'"{arg}"'
    return quoted


class OutputWriteError(UserInputError, OSError):
    """An output file that cannot be written: no space left on its device (ENOSPC), a disk quota exceeded (EDQUOT), a
    read-only file system (EROFS) or a folder the process may not write to (EACCES, EPERM). Files written before are
    intact (the writes are atomic); in a training run (:func:`set_resume_point`) the message names the last good
    checkpoint and the command that resumes from it.

    Args:
        code: the ``errno`` of the failed write.
        path: the file being written.
        needed: bytes the file needed, when known.
        written: bytes that reached the disk before the write failed, when ``needed`` is unknown.

    Examples::

        >>> error = OutputWriteError(errno.ENOSPC, "/out/checkpoint_epoch=3.pt", needed=12_500_000)
        >>> error.summary().split(". ")[0]  # doctest: +ELLIPSIS
        '/out/checkpoint_epoch=3.pt: no space left on device (the file needs 11.9 MB...'
    """

    def __init__(self, code: int, path: str | os.PathLike, needed: int | None = None, written: int | None = None):
        OSError.__init__(self, code, os.strerror(code), os.fspath(path))
        self.path, self.needed, self.written = Path(path), needed, written
        self.free = _free_bytes(self.path.parent)
        self.training = _resume_point is not None
        self.last_checkpoint = None
        if _resume_point is not None:
            try:
                found = _resume_point()
            except Exception:  # the message matters more than this detail
                found = None
            self.last_checkpoint = Path(found) if found else None
        self.resume = resume_command()

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """One line: the file, what went wrong, the space it needed and the free space, then what to do."""
        folder = self.path.parent
        if self.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "no space left on device" if self.errno == errno.ENOSPC else "disk quota exceeded"
            if self.needed is not None:
                size = f"the file needs {_size(self.needed)}"
            else:
                size = f"{_size(self.written)} were written before the error" if self.written else "size unknown"
            free = f", {_size(self.free)} free in {folder}" if self.free is not None else ""
            problem, fix = f"{what} ({size}{free})", "Free some space"
        elif self.errno == errno.EROFS:
            problem, fix = f"cannot write: {folder} is on a read-only file system", "Make the folder writable"
        else:
            problem, fix = f"cannot write: permission denied in {folder}", "Make the folder writable"
        message = f"{self.path}: {problem}. Nothing written before is damaged"
        if self.last_checkpoint is not None:
            return f"{message}; the last good checkpoint is {self.last_checkpoint}. {fix}, then resume: {self.resume}"
        if self.training:
            return f"{message}; no checkpoint was complete yet. {fix}, then run the same command again."
        return f"{message}. {fix}, then run the same command again."


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def storage_errno(error: BaseException | None) -> int | None:
    """The ``errno`` of the first ``OSError`` in ``error``'s chain that is in :data:`WRITE_ERRNOS`, or None. (torch
    reports a full disk as ``RuntimeError: ... unexpected pos``, with the ``OSError`` as its context.)"""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error.errno
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_error(error: BaseException | None) -> UserInputError | None:
    """The first :class:`UserInputError` in ``error``'s chain of causes and contexts, or None; failing that, an
    :class:`OutputWriteError` for an ``OSError`` that only a write raises (no space, quota, read-only file system)
    and that names its file (e.g. an image saved by MONAI)."""
    seen, chain = set(), error
    while chain is not None and id(chain) not in seen:
        if isinstance(chain, UserInputError):
            return chain
        seen.add(id(chain))
        chain = chain.__cause__ or chain.__context__
    seen, chain = set(), error
    while chain is not None and id(chain) not in seen:
        if isinstance(chain, OSError) and chain.errno in _WRITE_ONLY_ERRNOS and chain.filename:
            return OutputWriteError(chain.errno, chain.filename)
        seen.add(id(chain))
        chain = chain.__cause__ or chain.__context__
    return None


def debugging() -> bool:
    """True when ``SELFMEDHPM_DEBUG`` is set to anything but ``0``/empty: user errors keep their traceback."""
    return os.environ.get("SELFMEDHPM_DEBUG", "0") not in ("", "0")


class _UserErrorRecords(logging.Filter):
    """Drops the error records that loggers write about a user error while it unwinds (ignite's "Engine run is
    terminating due to exception", MONAI's ``StatsHandler`` "Exception: ..." with its traceback): the excepthook's
    ``ERROR`` line says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or debugging():
            return True
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return user_error(error) is None


_RECORDS_FILTER = _UserErrorRecords()


def _hook(previous):
    def excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        found = user_error(error)
        if found is None or debugging():
            previous(kind, error, tb)
        if found is not None:
            print(f"{chr(10) if debugging() else ''}ERROR {found.summary()}", file=sys.stderr, flush=True)

    excepthook.selfmedhpm = True  # type: ignore[attr-defined]
    return excepthook


KNOWN_NOTICES: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, r"parsing config_file"),  # MONAI's config-security notice, on every parse (shown at the first)
    (UserWarning, r"NvImgCodecPydicomReader"),  # nvImageCodec is a GPU decoder; the CPU readers are used
    (FutureWarning, r".*Orientationd.__init__:labels"),  # MONAI's own transform, default changing in a later MONAI
    (UserWarning, r"torch.meshgrid: in an upcoming release"),  # inside MONAI's sin-cos embedding
    (FutureWarning, r".*get_mask_edges:always_return_as_numpy"),  # inside MONAI's Hausdorff distance
    (UserWarning, r"the (prediction|ground truth) of class \d+ is all 0"),  # HD95 undefined: the report says n/a
)
"""Third-party warnings that say nothing a user of these bundles can act on: ``(category, message regex)``."""


class _OnceRecords(logging.Filter):
    """Lets a logger's record of a given message through once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE = _OnceRecords()


def quiet_known_notices() -> None:
    """Filters :data:`KNOWN_NOTICES` from here on and lets MONAI's "nvImageCodec is not available" log line through
    once per process. What came before (the notice of the first config parse) stays. Idempotent."""
    import warnings

    for category, message in KNOWN_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)
    plugin = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    if _ONCE not in plugin.filters:
        _ONCE.seen.add("nvImageCodec is not available; skipping pydicom decoder plugin registration.")
        plugin.addFilter(_ONCE)


def install_excepthook() -> None:
    """Makes an uncaught :class:`UserInputError` (however deeply wrapped) end the process with one ``ERROR`` line
    (its traceback too with ``SELFMEDHPM_DEBUG=1``), and quiets the known third-party notices
    (:func:`quiet_known_notices`): what a process that this project owns prints. Idempotent."""
    quiet_known_notices()
    if not getattr(sys.excepthook, "selfmedhpm", False):
        sys.excepthook = _hook(sys.excepthook)
    root = logging.getLogger()
    for owner in [root, *root.handlers]:
        if _RECORDS_FILTER not in owner.filters:
            owner.addFilter(_RECORDS_FILTER)
