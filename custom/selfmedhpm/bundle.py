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

"""Small helpers that the bundles' configs call: where the bundle lives, the data list, the default device, unknown
override keys, the settings recorded beside the weights a run uses. The rank and config flags are
:mod:`selfmedhpm.utils`'s.

Where the bundle lives and which overrides a run was given are read from the ``monai.bundle`` workflow being run,
found on the call stack, whether it was started on the command line (``python -m monai.bundle run``, ``torchrun -m
monai.bundle run``) or from Python (``monai.bundle.run(...)``, as the demo, the study and MONAI Label do), not from
``sys.argv``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from selfmedhpm.check_data import DataCheckError, Problem, datalist_path, load_datalist_checked
from selfmedhpm.checkpoint import read_trained_with, trained_with_path
from selfmedhpm.errors import UserInputError
from selfmedhpm.utils import rank

__all__ = [
    "bundle_root", "running_workflow", "datalist", "pretraining_splits", "log_pretraining_splits", "default_device",
    "check_overrides", "UnknownConfigKeyError", "apply_trained_with", "SettingsConflictError", "SHAPE_KEYS",
]  # fmt: skip

logger = logging.getLogger("selfmedhpm.bundle")


def _as_files(value: object) -> list[str]:
    """``config_file`` as MONAI takes it: a path, a list of paths, ``"['a.json','b.json']"`` or ``"a.json,b.json"``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        return [str(v) for v in ast.literal_eval(text)]
    return [v for v in text.split(",") if v] if not os.path.isfile(text) else [text]


def _calling_frame(found: Callable[[FrameType], bool]) -> FrameType | None:
    """The innermost frame of this call's stack for which ``found`` is true."""
    frame = sys._getframe(2)
    while frame is not None and not found(frame):
        frame = frame.f_back
    return frame


def running_workflow() -> tuple[list[str], dict[str, Any]] | None:
    """The config files and the other arguments (run options and ``key: value`` overrides) of the ``monai.bundle``
    run that this process is initialising, or None outside ``initialize`` or outside such a run (a ``ConfigWorkflow``
    built directly).

    Read from the frame of MONAI's ``create_workflow``, which creates and initialises the workflow of
    ``python -m monai.bundle run``, ``monai.bundle.run(...)`` and ``run_workflow``, so overrides given in Python are
    seen as those given on the command line or in an ``--args_file``.
    """
    from monai.bundle import scripts

    frame = _calling_frame(lambda f: f.f_code is scripts.create_workflow.__code__)
    if frame is None:
        return None
    return _as_files(frame.f_locals.get("config_file")), dict(frame.f_locals.get("_args") or {})


def bundle_root(config_files: Sequence[str] | None = None) -> str:
    """The bundle folder of the running config: the parent of the ``configs/`` folder of its first config file (the
    folder MONAI's ``ConfigWorkflow`` puts on ``sys.path``), else the current folder (the model zoo's ``"."``).

    So ``python -m monai.bundle run --config_file bundles/X/configs/train.json`` and ``monai.bundle.run`` (or a
    ``ConfigWorkflow``) with the same file write to ``bundles/X/models`` from any working folder; ``--bundle_root``
    overrides it, as MONAI Label does.

    Args:
        config_files: the config files; by default those of the ``ConfigWorkflow`` whose expressions are being
            evaluated (found on the call stack).

    Examples::

        >>> bundle_root(["b/configs/train.json", "b/configs/x.json"]).endswith("b")
        True
    """
    if config_files is None:
        from monai.bundle import ConfigWorkflow

        frame = _calling_frame(lambda f: isinstance(f.f_locals.get("self"), ConfigWorkflow))
        config_files = [] if frame is None else [str(Path(frame.f_locals["self"].config_root_path) / "_")]
    if config_files:
        config_dir = Path(config_files[0]).resolve().parent
        return str(config_dir.parent if config_dir.name == "configs" else config_dir)
    return os.path.abspath(".")


def datalist(
    dataset_dir: str,
    datalist_file: str | None,
    split: str | Sequence[str],
    labels: bool = True,
    check_files: bool = True,
) -> list:
    """Entries of ``split`` (or several splits joined) of a BTCV-style data list, paths made absolute under
    ``dataset_dir``. ``datalist_file`` as :func:`~selfmedhpm.check_data.datalist_path` finds it (default
    ``dataset_dir/dataset_0.json``). With ``labels=False`` only the image is kept.

    The file is checked before anything else reads it: a missing, empty or malformed file, a missing split, an entry
    without an image (or label) and (with ``check_files``) files that do not exist raise
    :class:`~selfmedhpm.check_data.DataCheckError` naming the data list and each problem. The configs pass
    ``check_files=False`` when their data check runs: it names missing files together with every other problem of
    the data, in one run.

    Examples::

        >>> import json, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(os.path.join(folder, "dataset_0.json"), "w").write('{"training": [{"image": "a.nii.gz",')
        >>> try:
        ...     datalist(folder, None, "training")
        ... except ValueError as e:
        ...     print(str(e).splitlines()[-1].split(": ", 1)[1])
        is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 36
    """
    from monai.data import load_decathlon_datalist

    datalist_file = datalist_path(dataset_dir, datalist_file)
    splits = [split] if isinstance(split, str) else list(split)
    if not os.path.isdir(dataset_dir):
        raise DataCheckError([Problem(str(dataset_dir), "dataset folder not found (--dataset_dir)")], datalist_file)
    load_datalist_checked(datalist_file, splits)
    entries: list = []
    for name in splits:
        try:
            entries += load_decathlon_datalist(
                datalist_file, is_segmentation=labels, data_list_key=name, base_dir=dataset_dir
            )
        except (KeyError, ValueError, TypeError) as e:
            raise DataCheckError([Problem(datalist_file, f"'{name}': {e}")], datalist_file) from None
    keys = ("image", "label") if labels else ("image",)
    problems = [
        (
            Problem(str(entry.get(key, "?")), f"listed in {os.path.basename(datalist_file)} but not found")
            if key in entry
            else Problem(datalist_file, f"an entry has no '{key}' (keys: {', '.join(entry)})")
        )
        for entry in entries
        for key in keys
        if key not in entry or (check_files and not os.path.exists(entry[key]))
    ]
    if problems:
        raise DataCheckError(problems, datalist_file)
    if not labels:
        entries = [{"image": e["image"]} for e in entries]
    return entries


def _read_splits(dataset_dir: str, datalist_file: str | None) -> dict[str, int]:
    """Split name -> number of entries of each list of images in the data list ({} when it cannot be read: the
    data check reports why)."""
    try:
        with open(datalist_path(dataset_dir, datalist_file), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: len(v) for k, v in data.items()
        if isinstance(v, list) and v and all(isinstance(e, str) or (isinstance(e, dict) and "image" in e) for e in v)
    }  # fmt: skip


def pretraining_splits(dataset_dir: str, datalist_file: str | None = None) -> list[str]:
    """The pretraining bundle's default ``train_splits``: ``training``, plus ``unlabeled`` when the data list has a
    non-empty one (``python -m selfmedhpm.datalist`` lists images without labels there). Validation and test
    splits are never in it: pretraining on them needs ``--train_splits`` naming them.

    Examples::

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(os.path.join(folder, "dataset_0.json"), "w").write('{"training": [], "unlabeled": ["a.nii"]}')
        >>> pretraining_splits(folder), pretraining_splits("/no/such/folder")
        (['training', 'unlabeled'], ['training'])
    """
    return ["training"] + (["unlabeled"] if _read_splits(dataset_dir, datalist_file).get("unlabeled") else [])


def log_pretraining_splits(dataset_dir: str, datalist_file: str | None, splits: str | Sequence[str]) -> str:
    """Logs (rank 0) and returns which splits of the data list pretraining reads and which it leaves out, e.g.
    ``pretraining on training (24 images) + unlabeled (20 images); not used: validation (6 images) ...``.

    Examples::

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(os.path.join(folder, "dataset_0.json"), "w").write('{"training": ["a"], "validation": ["b"]}')
        >>> print(log_pretraining_splits(folder, None, ["training"]))
        pretraining on training (1 image); not used: validation (1 image) (name a split in --train_splits to use it)
    """
    splits = [s for s in (splits.split(",") if isinstance(splits, str) else splits)]
    counts = _read_splits(dataset_dir, datalist_file)
    images = lambda n: f"{n} image{'s' * (n != 1)}"  # noqa: E731
    message = "pretraining on " + " + ".join(f"{s} ({images(counts.get(s, 0))})" for s in splits)
    held_out = [s for s in splits if s in ("validation", "test")]
    if held_out:
        message += f"; {' and '.join(held_out)} used because train_splits names it (not held out from pretraining)"
    unused = [f"{s} ({images(n)})" for s, n in counts.items() if s not in splits]
    if unused:
        message += f"; not used: {', '.join(unused)} (name a split in --train_splits to use it)"
    if rank() == 0:
        logger.info(message)
    return message


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when a GPU is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


_RUN_ARGS = {
    "config_file", "meta_file", "logging_file", "args_file", "tracking", "init_id", "run_id", "final_id",
    "workflow_type", "workflow_name", "properties_path", "bundle_root", "net_id", "filepath", "ckpt_file",
    "key_in_ckpt",
}  # fmt: skip
"""Arguments of ``monai.bundle`` commands that are not config keys."""


class UnknownConfigKeyError(UserInputError, KeyError):
    """A ``--key value`` override names no key of the bundle's configs (usually a typo)."""

    def __str__(self) -> str:
        return str(self.args[0])


SAME_MEANING = {"load_path": "model_file", "model_path": "model_file", "weights": "model_file", "ckpt": "model_file"}
"""Names users bring from other tools for a key these bundles call otherwise: ``--load_path`` (the heat-map
workflow's name before 0.8.0) is ``--model_file`` in both bundles."""


def _config_ids(config: object, prefix: str = "") -> set[str]:
    ids = set()
    if isinstance(config, dict):
        for key, value in config.items():
            ids.add(prefix + str(key))
            ids |= _config_ids(value, f"{prefix}{key}#")
    elif isinstance(config, list):
        for i, value in enumerate(config):
            ids.add(f"{prefix}{i}")
            ids |= _config_ids(value, f"{prefix}{i}#")
    return ids


def _tracking_ids(tracking: object) -> set[str]:
    """Top-level ids that ``tracking`` (a name such as "mlflow", a settings file or a settings dict) adds."""
    from selfmedhpm.tracking import tracking_config_ids

    if isinstance(tracking, dict):
        return {str(k) for k in tracking.get("configs", {}) if k not in tracking.get("handlers_id", {})}
    return tracking_config_ids(["--tracking", str(tracking)]) if tracking else set()


def check_overrides(config_files: Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None) -> bool:
    """Refuses overrides of a ``monai.bundle`` run that name no key of its config files: MONAI silently adds such a
    key, so a typo (``--epoch 5``, or ``monai.bundle.run(..., epoch=5)``) would otherwise be ignored. The bundles call
    it from ``initialize``.

    Args:
        config_files: the run's config files; by default those of the running workflow (:func:`running_workflow`).
        overrides: ``{key: value}`` overrides and run options; by default those of the running workflow. Nothing is
            checked when neither is given and no workflow is running.

    Raises:
        UnknownConfigKeyError: naming the key, the config files and the closest existing keys.

    Examples::

        >>> import json, tempfile
        >>> path = tempfile.mktemp(suffix=".json")
        >>> _ = open(path, "w").write(json.dumps({"epochs": 1}))
        >>> check_overrides([path], {"epochs": 3})
        True
        >>> try:
        ...     check_overrides([path], {"epoch": 3})
        ... except KeyError as e:
        ...     print(str(e).split(" in ")[0], str(e).split("; ")[-1])
        unknown config key 'epoch' did you mean 'epochs'?
    """
    import difflib

    from monai.bundle import ConfigParser

    if config_files is None or overrides is None:
        running = running_workflow()
        if running is None:
            return True
        config_files = running[0] if config_files is None else config_files
        overrides = running[1] if overrides is None else overrides
    files = [str(f) for f in config_files]
    if not files:
        return True
    known = _config_ids(ConfigParser.load_config_files(files)) | {"_meta_"} | _tracking_ids(overrides.get("tracking"))
    for name in overrides:
        key = str(name).replace("::", "#")
        if key in _RUN_ARGS or key.startswith("_meta_") or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3)
        if SAME_MEANING.get(key) in known:
            close = [SAME_MEANING[key]]
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownConfigKeyError(f"unknown config key {key!r} in {', '.join(files)}{hint}")
    return True


SHAPE_KEYS = (
    "roi_size", "patch_size", "feature_size", "hidden_size", "mlp_dim", "num_heads", "num_classes",
    "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers", "decoder_num_heads",
)  # fmt: skip
"""Settings that shape the network: weights trained with other values do not load."""


class SettingsConflictError(UserInputError, ValueError):
    """An override that contradicts what the weights were trained with, for a setting that shapes the network."""


def _plain(value: Any) -> Any:
    """A config value in a comparable form: sequences as lists, numbers as floats."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _option(key: str, value: Any) -> str:
    """``--key value`` as a shell takes it: ``--num_heads 4``, ``--roi_size "[64,64,64]"``."""
    text = json.dumps(value, separators=(",", ":"))
    return f"--{key} " + (text if isinstance(value, (int, float)) else f"'{text}'" if '"' in text else f'"{text}"')


def _running_parser() -> Any:
    """The ``ConfigParser`` whose expression is being evaluated (found on the call stack), or None."""
    from monai.bundle import ConfigParser

    frame = _calling_frame(lambda f: isinstance(f.f_locals.get("self"), ConfigParser))
    return None if frame is None else frame.f_locals["self"]


def apply_trained_with(model_file: str | os.PathLike | None, parser: Any = None) -> dict[str, Any]:
    """Applies the settings recorded beside ``model_file`` (``trained_with.json``, written by every training run of
    both bundles) to the running config before anything is built: a model trained with a preset (crop, spacing,
    widths, label set) is evaluated, run or served with that preset, whichever config files the command names.
    Evaluation and inference call it from ``initialize``; one line says what was applied.

    A value given explicitly as an override (``--roi_size ...``) is kept: a setting that shapes the network
    (:data:`SHAPE_KEYS`) then stops the run with one line naming the file and the override to remove, any other is
    kept with a warning. Keys the config does not have (``epochs`` in inference) are left alone.

    Args:
        model_file: the weights the run uses; nothing is done without a record beside them.
        parser: the ``ConfigParser`` to update; by default the one evaluating this call.

    Returns:
        ``{key: value}`` applied.

    Raises:
        SettingsConflictError: an override of a shape setting that contradicts the record.

    Examples::

        >>> import json, tempfile
        >>> from monai.bundle import ConfigParser
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(os.path.join(folder, "trained_with.json"), "w").write(json.dumps({"roi_size": [64, 64, 64]}))
        >>> parser = ConfigParser({"roi_size": [96, 96, 96], "twice": "$[2 * r for r in @roi_size]"})
        >>> apply_trained_with(os.path.join(folder, "model.pt"), parser)
        {'roi_size': [64, 64, 64]}
        >>> parser.get_parsed_content("twice")
        [128, 128, 128]
    """
    if not model_file:
        return {}
    recorded = read_trained_with(model_file)
    if not recorded:
        return {}
    parser = parser if parser is not None else _running_parser()
    if parser is None:
        return {}
    record = trained_with_path(model_file)
    running = running_workflow()
    given = {str(k).replace("::", "#") for k in (running[1] if running else {})}
    applied, kept = {}, []
    for key, value in recorded.items():
        if key not in parser:
            continue
        current = parser[key]
        if isinstance(current, str) and current.startswith(("$", "@")):
            current = parser.get_parsed_content(key)
        if _plain(current) == _plain(value):
            continue
        if key in given:
            if key in SHAPE_KEYS:
                raise SettingsConflictError(
                    f"{model_file} was trained with {key} {json.dumps(value)} ({record}); --{key} "
                    f"{json.dumps(current)} builds a network these weights do not fit: remove --{key} (or use weights "
                    "trained with it)"
                )
            kept.append(f"{key} {json.dumps(current)} (trained with {json.dumps(value)})")
            continue
        applied[key] = value
    for key, value in applied.items():
        parser[key] = value
    if applied:
        parser.parse(reset=True)
        if rank() == 0:
            logger.info(
                "%s: the weights were trained with %s; applied (%s)",
                record,
                ", ".join(f"{k} {json.dumps(v)}" for k, v in applied.items()),
                "the same as adding " + " ".join(_option(k, v) for k, v in applied.items()),
            )
    if kept and rank() == 0:
        logger.warning("%s: your overrides differ from what the weights were trained with: %s", record, "; ".join(kept))
    return applied
