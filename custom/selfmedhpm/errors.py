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
traceback. :func:`install_excepthook` keeps the traceback and prints the :class:`UserInputError` found in its chain
once more as the last lines, prefixed with ``ERROR``. It changes how every uncaught error of the process is printed,
so only code that owns the process installs it: the bundles' workflows (first step of ``initialize``) and the
command-line tools (under ``if __name__ == "__main__"``); importing :mod:`selfmedhpm` installs nothing.

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

import sys
from types import TracebackType

__all__ = ["UserInputError", "InputNotFoundError", "FlagError", "user_error", "install_excepthook"]


class UserInputError(Exception):
    """Base of the errors a user's input causes; their message names the file (or flag) and the problem."""

    def summary(self) -> str:
        """What a run prints last: the message, or a shorter form of it."""
        return str(self)


class InputNotFoundError(UserInputError, FileNotFoundError):
    """An input file or folder the user named does not exist or holds nothing usable."""


class FlagError(UserInputError, ValueError):
    """A config flag with a value that is not a boolean."""


def user_error(error: BaseException | None) -> UserInputError | None:
    """The first :class:`UserInputError` in ``error``'s chain of causes and contexts, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _hook(previous):
    def excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        previous(kind, error, tb)
        found = user_error(error)
        if found is not None:
            print(f"\nERROR {found.summary()}", file=sys.stderr, flush=True)

    excepthook.selfmedhpm = True  # type: ignore[attr-defined]
    return excepthook


def install_excepthook() -> None:
    """Makes an uncaught :class:`UserInputError` (however deeply wrapped) the last thing a run prints. Idempotent."""
    if not getattr(sys.excepthook, "selfmedhpm", False):
        sys.excepthook = _hook(sys.excepthook)
