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

"""Reproducible, self-contained releases of the bundles and their model-zoo style index.

``python -m selfmedhpm_tools.release`` packs each bundle of ``bundles/`` into ``dist/<name>_v<version>.zip``:

- top folder ``<name>/`` holding ``LICENSE``, ``configs/``, ``docs/``, the weights ``models/*.pt`` (with
  ``encoder.json``, the settings an ``encoder.pt`` was pretrained with) and the modules
  of the ``selfmedhpm`` package that the bundle's configs need (``<name>/selfmedhpm/``), so the unpacked bundle runs
  with only its ``required_packages_version`` installed: ``cd <name> && python -m monai.bundle run --config_file
  configs/inference.json`` (Python puts the working folder first on ``sys.path``), or ``PYTHONPATH=<name>`` from
  anywhere; MONAI Label puts the bundle folder first on ``sys.path`` by itself;
- reproducible: sorted entries, fixed timestamps (1980-01-01) and permissions, no caches, so two builds of the same
  files have the same sha1;
- checked: the weights that the inference config loads must be there (else the release is refused, unless
  ``--allow-missing-weights``), load as plain tensors (``torch.load(weights_only=True)``) and fit the inference
  network strictly (with the bundle's CPU preset when they are the demo's small weights).

``--update-index`` writes ``bundle_index.json`` (``"<name>_v<version>": {"checksum": <sha1>, "source": ...}`` as the
model zoo's ``model_info.json``, plus description, versions, weights and the bundle it builds on). An index entry is
never silently replaced by a different build of the same version: bump the version (``--force`` overrides).

Weights trained elsewhere (the demo writes them under ``results/demo``) come in with ``--weights_from NAME=FOLDER``;
values they were trained with from ``FOLDER/trained_with.json`` (every training run of both bundles writes it) and
``--set NAME:KEY=VALUE`` (which wins over the file): the weights are checked with them
and the release carries them as ``configs/released_weights.json``, listed in the index entry's
``inference_configs`` (the config list to run the released weights with).

Examples::

    python -m selfmedhpm_tools.release --update-index
    python -m selfmedhpm_tools.release --bundles selfmedhpm_ct_segmentation --allow-missing-weights
    python -m selfmedhpm_tools.release --update-index \
        --weights_from selfmedhpm_ct_segmentation=results/demo/finetune_hpm \
        --set "selfmedhpm_ct_segmentation:roi_size=[64,48,48]" --set "selfmedhpm_ct_segmentation:feature_size=16"

(the ``--set`` values are those the demo records in ``results/demo/finetune_hpm/trained_with.json``; they are
shown here for weights trained without such a record).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import selfmedhpm
from selfmedhpm.checkpoint import TRAINED_WITH as CHECKPOINT_TRAINED_WITH
from selfmedhpm.checkpoint import CheckpointError, read_trained_with, trained_with_path
from selfmedhpm.errors import install_excepthook
from selfmedhpm.transfer import encoder_settings_path
from selfmedhpm.utils import atomic_write

__all__ = [
    "ROOT",
    "ReleaseError",
    "UnsafeArchiveError",
    "bundle_metadata",
    "imported_modules",
    "package_modules",
    "release_files",
    "required_weights",
    "weights_fit",
    "write_zip",
    "sha1",
    "is_content",
    "content_sha1",
    "build",
    "index_entry",
    "update_index",
    "source_index",
    "merge_config",
    "assemble_bundle",
    "apply_overrides",
    "safe_extract",
    "main",
]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(selfmedhpm.__file__).resolve().parent  # the runtime package, the only one the zips carry
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644
BUILDS_ON = {"selfmedhpm_ct_segmentation": "selfmedhpm_ct_pretraining"}
"""Bundle -> the bundle whose output it starts from, unless its metadata names one (``"builds_on"``)."""
PRESETS = ([], ["train_cpu.json"])
"""Config overrides tried, in order, when checking that the weights fit the inference network."""
OVERRIDES_FILE = "released_weights.json"
TRAINED_WITH = CHECKPOINT_TRAINED_WITH
"""Beside weights: ``{config id: value}`` they were trained with (every training run of both bundles writes it)."""


def trained_with(weights: str | os.PathLike | None) -> dict[str, Any]:
    """The values recorded in ``trained_with.json`` beside ``weights`` (a folder, or a file in it); ``{}`` without.

    Examples::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> trained_with(folder)
        {}
        >>> _ = (folder / "trained_with.json").write_text('{"roi_size": [64, 48, 48]}')
        >>> trained_with(folder / "model.pt")
        {'roi_size': [64, 48, 48]}
    """
    if weights is None:
        return {}
    try:
        values = read_trained_with(weights)
    except CheckpointError as error:
        raise ReleaseError(str(error)) from error
    if values:
        logger.info("%s: the weights were trained with %s", trained_with_path(weights), values)
    return values


"""Written into a release's ``configs/``: the preset and values merged into its configs, for the record."""
MERGED_CONFIGS = ("inference.json", "train.json")
"""The configs that run as they are in a release (and in MONAI Label, whose ``BundleInferTask`` and
``BundleTrainTask`` read them with no override files): the weights' preset and values are merged into them."""

_CONFIG_SUFFIXES = (".json", ".yaml")
_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", ".DS_Store"}


class ReleaseError(RuntimeError):
    """A bundle cannot be released as it is (missing weights, weights that do not fit, an index conflict)."""


class UnsafeArchiveError(ValueError):
    """An archive entry would land outside the target folder (absolute path, ``..``, link)."""


def bundle_metadata(bundle_dir: str | os.PathLike) -> dict:
    """The bundle's ``configs/metadata.json``."""
    return json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())


def _config_files(bundle_dir: Path) -> list[Path]:
    return sorted(p for p in (bundle_dir / "configs").iterdir() if p.suffix in _CONFIG_SUFFIXES and p.is_file())


def _module_path(name: str, package_dir: Path) -> Path | None:
    """File of submodule ``name`` (``networks`` -> its ``__init__.py``), or None when the package has no such module."""
    parts = name.split(".")
    base = package_dir.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def imported_modules(source: str, module: str = "", module_level: bool = False) -> set[str]:
    """Dotted names of what a Python source imports: ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and
    ``a.b`` (``b`` may be a submodule or a name defined in ``a``); relative imports are resolved against ``module``
    (the source's own dotted name, ``pkg.__init__`` for a package's ``__init__.py``; left out when it is not given);
    and ``selfmedhpm.<name>`` attribute chains count as imports of ``selfmedhpm.<name>`` (the package imports its
    submodules on first use, as configs rely on). The one import scanner of the repository: the release follows it
    to the modules a bundle needs, ``make verify`` checks third-party imports with it, ``tests/test_house.py`` the
    layers.

    Args:
        source: the Python source.
        module: its dotted module name, to resolve relative imports.
        module_level: only what runs on import (imports inside functions and lambdas are left out).

    Examples::

        >>> sorted(imported_modules("import os.path\\nfrom selfmedhpm import losses\\ndef f():\\n    import numpy"))
        ['numpy', 'os.path', 'selfmedhpm', 'selfmedhpm.losses']
        >>> sorted(imported_modules("from .hpm_vit import HPMMaskedAutoEncoder", "selfmedhpm.networks.__init__", True))
        ['selfmedhpm.networks.hpm_vit', 'selfmedhpm.networks.hpm_vit.HPMMaskedAutoEncoder']
    """
    package = module.split(".")[:-1]
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level and not module:
                continue
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found |= {name} | {f"{name}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "selfmedhpm":
            found.add(f"selfmedhpm.{node.attr}")
        if not (module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
            todo.extend(ast.iter_child_nodes(node))
    return found


def package_modules(bundle_dir: str | os.PathLike, package_dir: str | os.PathLike = PACKAGE) -> list[str]:
    """Files of the ``selfmedhpm`` package (relative to it) that the bundle's configs need: the modules the configs
    name (``selfmedhpm.<module>``) and, recursively, what those import; always ``__init__.py``.

    Args:
        bundle_dir: the bundle folder.
        package_dir: the package's source folder. Defaults to this package.

    Returns:
        sorted POSIX paths such as ``["__init__.py", "bundle.py", "networks/__init__.py", ...]``.
    """
    package_dir = Path(package_dir)
    todo = {m for text in _config_code(Path(bundle_dir)) for m in re.findall(r"selfmedhpm\.([A-Za-z_]\w*)", text)}
    done: set[str] = set()
    files = {"__init__.py"}
    while todo:
        name = todo.pop()
        done.add(name)
        path = _module_path(name, package_dir)
        if path is None:  # an attribute (a class or function of a module), not a module
            continue
        files.add(path.relative_to(package_dir).as_posix())
        module = name + (".__init__" if path.name == "__init__.py" else "")
        for parent in _parents(name):
            init = _module_path(parent, package_dir)
            if init is not None:
                files.add(init.relative_to(package_dir).as_posix())
        reached = imported_modules(path.read_text(), f"selfmedhpm.{module}")
        todo |= {name.split(".", 1)[1] for name in reached if name.startswith("selfmedhpm.")} - done
    return sorted(files)


def _config_code(bundle_dir: Path) -> list[str]:
    """The expressions (``$...``) and ``_target_`` values of the bundle's configs: the code they run."""
    from monai.bundle import ConfigParser

    code: list[str] = []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and (value.startswith("$") or key == "_target_"):
            code.append(value)

    for path in _config_files(bundle_dir):
        if path.stem != "metadata" and not path.stem.endswith("_metadata"):
            walk(ConfigParser.load_config_file(path))
    return code


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def required_weights(bundle_dir: str | os.PathLike) -> list[str]:
    """Weight files a release must carry: ``models/model.pt`` (the model zoo's convention) and every
    ``models/<file>.pt`` that the inference config names (the pretraining bundle infers from ``teacher.pt``)."""
    bundle_dir = Path(bundle_dir)
    names = {"models/model.pt"}
    for config in _config_files(bundle_dir):
        if config.stem == "inference":
            names |= {f"models/{m}" for m in re.findall(r"/models/([\w.\-]+\.pt)", config.read_text())}
    return sorted(names)


def _skip(path: Path) -> bool:
    return any(part in _SKIP_PARTS for part in path.parts) or path.suffix in (".pyc", ".pyo")


def _tree(folder: Path) -> Iterable[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file() and not _skip(p.relative_to(folder)))


def release_files(
    bundle_dir: str | os.PathLike,
    package_dir: str | os.PathLike = PACKAGE,
    weights_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """What the release of a bundle holds: ``{path inside the zip: source file}``, paths under ``<name>/``.

    Args:
        bundle_dir: the bundle folder.
        package_dir: the ``selfmedhpm`` source folder whose needed modules are carried.
        weights_dir: take ``models/*.pt`` from here instead of the bundle's ``models/``.
    """
    bundle_dir, package_dir = Path(bundle_dir), Path(package_dir)
    name = bundle_dir.name
    files: dict[str, Path] = {}
    if (bundle_dir / "LICENSE").is_file():
        files[f"{name}/LICENSE"] = bundle_dir / "LICENSE"
    for folder in ("configs", "docs"):
        if (bundle_dir / folder).is_dir():
            for path in _tree(bundle_dir / folder):
                files[f"{name}/{path.relative_to(bundle_dir).as_posix()}"] = path
    models = Path(weights_dir) if weights_dir else bundle_dir / "models"
    for path in sorted(models.glob("*.pt")) if models.is_dir() else []:
        files[f"{name}/models/{path.name}"] = path
        if path.name == "encoder.pt" and encoder_settings_path(path).is_file():  # what it was pretrained with
            files[f"{name}/models/{encoder_settings_path(path).name}"] = encoder_settings_path(path)
    if models.is_dir() and (models / TRAINED_WITH).is_file():  # what the weights were trained with
        files[f"{name}/models/{TRAINED_WITH}"] = models / TRAINED_WITH
    for module in package_modules(bundle_dir, package_dir):
        files[f"{name}/selfmedhpm/{module}"] = package_dir / module
    return dict(sorted(files.items()))


def _inference_loader(parser: Any) -> tuple[str, str] | None:
    """(id of the checkpoint path, id of the network it loads into) of the inference config's CheckpointLoader."""
    for handler in parser.get("handlers", []) or []:
        if isinstance(handler, dict) and str(handler.get("_target_", "")).endswith(
            ("CheckpointLoader", "WeightsLoader")
        ):
            path, target = handler.get("load_path"), (handler.get("load_dict") or {}).get("model")
            if isinstance(path, str) and isinstance(target, str) and path.startswith("@") and target.startswith("@"):
                return path[1:], target[1:]
    return None


def weights_fit(
    bundle_dir: str | os.PathLike,
    weights_dir: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    presets: Sequence[Sequence[str]] = PRESETS,
) -> list[str]:
    """The inference config list whose network the bundle's inference weights load into strictly.

    Tries ``configs/inference.json`` alone, then with each of :data:`PRESETS` (``train_cpu.json``: the demo trains
    the CPU preset), each followed by ``overrides``, and loads the weights the inference handlers'
    ``CheckpointLoader`` loads. A preset that sets more of ``overrides``' values as recorded is tried first: weights
    trained with the CPU preset fit the plain config plus their record too, and their release should carry the
    preset's other values (epochs, validation interval) for MONAI Label's training.

    Args:
        bundle_dir: the bundle folder.
        weights_dir: where the ``.pt`` files are (default: the bundle's ``models/``).
        overrides: config values the weights were trained with beyond a preset (e.g. ``{"roi_size": [48, 48, 48]}``).
        presets: the override lists tried. Defaults to :data:`PRESETS`.

    Returns:
        the config file names, e.g. ``["inference.json", "train_cpu.json"]``.

    Raises:
        ReleaseError: when no config list fits the weights, naming the mismatch.
    """
    import torch
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir)
    models = Path(weights_dir) if weights_dir else bundle_dir / "models"
    errors = []
    for preset in sorted(presets, key=lambda preset: -_agreement(bundle_dir / "configs", preset, overrides or {})):
        names = ["inference.json"] + [p for p in preset if (bundle_dir / "configs" / p).is_file()]
        if len(names) != 1 + len(preset):
            continue
        parser = ConfigParser()
        parser.read_config([str(bundle_dir / "configs" / n) for n in names])
        parser.update({**dict(overrides or {}), "bundle_root": str(bundle_dir), "device": "$torch.device('cpu')"})
        loader = _inference_loader(parser)
        if loader is None:
            raise ReleaseError(f"{bundle_dir.name}: the inference config has no CheckpointLoader in 'handlers'.")
        path = models / Path(str(parser.get_parsed_content(loader[0]))).name
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = parser.get_parsed_content(loader[1])
        try:
            network.load_state_dict(state, strict=True)
            return names + ([OVERRIDES_FILE] if overrides else [])
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            errors.append(f"{' + '.join(names)}: {' '.join(lines[1:3])[:400]}")
    hint = " (weights trained with other values: --set NAME:KEY=VALUE, e.g. roi_size)"
    raise ReleaseError(
        f"{bundle_dir.name}: the weights in {models} fit no inference network{hint}: " + "; ".join(errors)
    )


def _agreement(configs: Path, preset: Sequence[str], recorded: Mapping[str, Any]) -> int:
    """How many of the ``recorded`` values the preset's files set to the same value."""
    values: dict[str, Any] = {}
    for name in preset:
        if (configs / name).is_file():
            values.update(json.loads((configs / name).read_text()))
    return sum(1 for key, value in recorded.items() if key in values and values[key] == value)


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """``base`` with the ids of ``overrides`` (``"key"`` or nested ``"a#b"``) that ``base`` has set to their new
    values; returns the merged config and the override ids ``base`` lacks (left out).

    Examples::

        >>> merge_config({"epochs": 5, "train": {"batch_size": 2}}, {"epochs": 1, "train#batch_size": 1, "x": 0})
        ({'epochs': 1, 'train': {'batch_size': 1}}, ['x'])
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser(json.loads(json.dumps(base)))
    skipped = []
    for key, value in overrides.items():
        if key in parser:
            parser[key] = value
        else:
            skipped.append(key)
    return parser.get(), skipped


def assemble_bundle(
    bundle_dir: str | Path,
    target: str | Path,
    weights_dir: str | Path | None = None,
    package_dir: str | Path = PACKAGE,
) -> Path:
    """Copies the bundle, self-contained, to ``target``: what its release zip holds (``selfmedhpm_tools.release``:
    LICENSE, configs, docs, ``models/*.pt`` from ``weights_dir`` or the bundle, and the package modules its configs
    need under ``target/selfmedhpm/``).
    """
    target = Path(target)
    for name, source in release_files(bundle_dir, package_dir, weights_dir).items():
        destination = target / Path(*name.split("/")[1:])
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    (target / "models").mkdir(exist_ok=True)
    return target


def apply_overrides(
    bundle_dir: str | Path, override_files: Sequence[str | Path] = (), settings: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """Merges ``override_files`` (in order), then ``settings``, into the bundle's :data:`MERGED_CONFIGS` and writes
    them back as JSON with 4-space indent; sets the metadata's ``spatial_shape`` to the merged ``roi_size``.

    Returns:
        ``{config name: override ids it lacks}``.
    """
    from monai.bundle import ConfigParser

    configs = Path(bundle_dir) / "configs"
    overrides: dict = {}
    for path in override_files:
        overrides.update(ConfigParser.load_config_file(str(path)))
    overrides.update(settings or {})
    skipped = {}
    for name in MERGED_CONFIGS:
        path = configs / name
        merged, skipped[name] = merge_config(json.loads(path.read_text()), overrides)
        path.write_text(json.dumps(merged, indent=4) + "\n")
    inference = json.loads((configs / "inference.json").read_text())
    roi = inference.get("roi_size")
    if isinstance(roi, list) and all(isinstance(r, int) for r in roi):
        meta = json.loads((configs / "metadata.json").read_text())
        for section in ("inputs", "outputs"):
            for spec in meta.get("network_data_format", {}).get(section, {}).values():
                if "spatial_shape" in spec:
                    spec["spatial_shape"] = roi
        described = segmentation_description(inference)
        if described is not None:  # MONAI Label's /info/ shows it: the model served, not the bundle's default
            meta["description"], meta["image_classes"] = described
        (configs / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    return skipped


def segmentation_description(config: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(description, image_classes)`` of the metadata for a segmentation inference config's values (the UNETR's
    sizes, crop, spacing, window and label set), or None for another network.

    Examples::

        >>> values = {"network_def": {"_target_": "UNETR"}, "hidden_size": 96, "num_heads": 4, "mlp_dim": 384,
        ...           "feature_size": 16, "roi_size": [64, 48, 48], "pixdim": [5.0, 5.0, 5.0], "a_min": -175.0,
        ...           "a_max": 250.0, "class_names": ["background", "liver", "spleen"]}
        >>> print(segmentation_description(values)[0][:95])
        UNETR (ViT of width 96, 4 heads, MLP 384, 16^3 patches; feature size 16) for 2-organ CT segment
    """
    keys = ("hidden_size", "num_heads", "mlp_dim", "feature_size", "roi_size", "pixdim", "a_min", "a_max")
    network = config.get("network_def")
    if not (isinstance(network, dict) and str(network.get("_target_", "")).endswith("UNETR")):
        return None
    if not all(isinstance(config.get(k), (int, float, list)) for k in keys):
        return None
    width, heads, mlp = config["hidden_size"], config["num_heads"], config["mlp_dim"]
    vit = "ViT-B/16" if (width, heads, mlp) == (768, 12, 3072) else f"ViT of width {width}, {heads} heads, MLP {mlp}"
    vit += "" if vit == "ViT-B/16" else ", 16^3 patches"
    organs = [str(c) for c in config.get("class_names", [])[1:]] if isinstance(config.get("class_names"), list) else []
    crop = "x".join(str(r) for r in config["roi_size"])
    grid = " x ".join(f"{p:g}" for p in config["pixdim"])
    window = f"HU windowed {config['a_min']:g}..{config['a_max']:g} and scaled to 0..1"
    description = (
        f"UNETR ({vit}; feature size {config['feature_size']}) for {len(organs)}-organ CT segmentation"
        f"{' (' + ', '.join(organs) + ')' if organs else ''}, trained on {crop} crops at {grid} mm, {window}. Its "
        "encoder starts from the one the selfmedhpm_ct_pretraining bundle pretrains (masked autoencoding with hard "
        "patches mining, arXiv 2504.02524). Sliding-window inference writes one label NIfTI per input in the input's "
        "own grid."
    )
    return description, f"single channel CT, {window}, {grid} mm, RAS"


def check_weights(
    bundle_dir: Path, weights_dir: Path | None, allow_missing: bool, overrides: Mapping[str, Any] | None = None
) -> list[str] | None:
    """Refuses a release without the weights inference needs; checks every ``.pt`` holds only tensors and that the
    inference weights fit. Returns the inference config list they fit (None when missing and allowed)."""
    import torch

    models = weights_dir or bundle_dir / "models"
    missing = [w for w in required_weights(bundle_dir) if not (models / Path(w).name).is_file()]
    if missing:
        message = (
            f"{bundle_dir.name}: {', '.join(missing)} missing in {models}: the released bundle could not run "
            "inference. Train it first: `make demo` then `make release` (which takes the demo's weights with "
            "--weights_from NAME=FOLDER), or pass --allow-missing-weights to release the configs only."
        )
        if not allow_missing:
            raise ReleaseError(message)
        logger.warning("%s", message)
        return None
    for path in sorted(models.glob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ReleaseError(f"{path} is not a plain tensor state dict (torch.load(weights_only=True)): {e}") from e
    return weights_fit(bundle_dir, models, overrides)


def write_zip(files: Mapping[str, str | os.PathLike | bytes], path: str | os.PathLike) -> Path:
    """Writes a reproducible zip: entries sorted by name, timestamps 1980-01-01 00:00, mode 0644, Unix attributes,
    deflated (weights ``.pt`` stored). Written to a temporary file, then renamed over ``path``.

    Args:
        files: ``{name inside the zip (POSIX): source file or content}``.
        path: the zip to write.
    """

    def write(f) -> None:
        with zipfile.ZipFile(f, "w") as archive:
            for name in sorted(files):
                source = files[name]
                _add_entry(archive, name, source if isinstance(source, bytes) else Path(source))

    return atomic_write(path, write, binary=True)


def _add_entry(archive: zipfile.ZipFile, name: str, source: Path | bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.create_system = 3  # Unix, so external_attr holds the mode
    info.external_attr = FILE_MODE << 16
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".pt") else zipfile.ZIP_DEFLATED
    if isinstance(source, bytes):
        archive.writestr(info, source)
        return
    info.file_size = source.stat().st_size
    with source.open("rb") as src, archive.open(info, "w", force_zip64=info.file_size > 2**31) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)


def sha1(path: str | os.PathLike) -> str:
    """Hex sha1 of a file (the model zoo's index checksum)."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_content(name: str) -> bool:
    """Zip entries that must match the bundle's current files: all but the weights and the generated weights
    config (``models/*``, ``configs/released_weights.json``)."""
    return "/models/" not in name and not name.endswith(f"/configs/{OVERRIDES_FILE}")


def content_sha1(files: Mapping[str, str | os.PathLike | bytes]) -> str:
    """sha1 over the content entries (:func:`is_content`) of a release, names and bytes in zip order: what a fresh
    clone can recompute without the weights, to tell whether an index entry still describes the bundle.

    Examples::

        >>> with_weights = {"b/configs/a.json": b"{}", "b/models/model.pt": b"w"}
        >>> content_sha1(with_weights) == content_sha1({"b/configs/a.json": b"{}"})
        True
    """
    digest = hashlib.sha1(usedforsecurity=False)
    for name in sorted(n for n in files if is_content(n)):
        source = files[name]
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        digest.update(name.encode() + b"\0" + hashlib.sha1(data, usedforsecurity=False).digest())
    return digest.hexdigest()


def zip_name(bundle_dir: str | os.PathLike) -> str:
    """``<name>_v<version>.zip`` of a bundle."""
    return f"{Path(bundle_dir).name}_v{bundle_metadata(bundle_dir)['version']}.zip"


def build(
    bundle_dir: str | os.PathLike,
    dist_dir: str | os.PathLike,
    allow_missing_weights: bool = False,
    weights_dir: str | os.PathLike | None = None,
    package_dir: str | os.PathLike = PACKAGE,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Path, dict]:
    """Checks and packs one bundle into ``dist_dir/<name>_v<version>.zip``, self-consistent as the model zoo's zips
    are: the preset the weights fit (``train_cpu.json`` for the demo's weights) and ``overrides`` are merged into the
    released ``configs/inference.json`` and ``configs/train.json`` (see :func:`apply_overrides`), so that
    ``python -m monai.bundle run --config_file configs/inference.json`` runs the weights inside as it is, and so
    does MONAI Label. What was merged is recorded in ``configs/released_weights.json``.

    Args:
        bundle_dir: the bundle folder.
        dist_dir: output folder.
        allow_missing_weights: release without the inference weights (with a warning) instead of refusing.
        weights_dir: take ``*.pt`` from here instead of ``<bundle>/models``.
        package_dir: the ``selfmedhpm`` source folder.
        overrides: config values the weights were trained with beyond the presets (``roi_size``, ``pixdim``...).

    Returns:
        the zip path and facts for its index entry (weights, what was merged, the content checksum).

    Raises:
        ReleaseError: missing or unfit weights.
    """
    bundle_dir = Path(bundle_dir).resolve()
    weights = Path(weights_dir).resolve() if weights_dir else None
    fits = check_weights(bundle_dir, weights, allow_missing_weights, overrides)
    presets = [n for n in (fits or ["inference.json"])[1:] if n != OVERRIDES_FILE]
    with tempfile.TemporaryDirectory() as tmp:
        staged = assemble_bundle(bundle_dir, Path(tmp) / bundle_dir.name, weights, package_dir)
        merged = {}
        for name in presets:
            merged.update(json.loads((bundle_dir / "configs" / name).read_text()))
        merged.update(dict(overrides or {}))
        if merged:
            apply_overrides(staged, settings=merged)
            record = {"merged_into": list(MERGED_CONFIGS), "presets": presets, "values": merged}
            (staged / "configs" / OVERRIDES_FILE).write_text(json.dumps(record, indent=4) + "\n")
        if fits is not None:
            weights_fit(staged, presets=[[]])  # the released inference.json alone runs the weights inside
        files = {f"{bundle_dir.name}/{p.relative_to(staged).as_posix()}": p for p in _tree(staged)}
        path = write_zip(files, Path(dist_dir) / zip_name(bundle_dir))
        facts = {
            "content_sha1": content_sha1(release_files(bundle_dir, package_dir)),
            "weights": {n.split("/", 1)[1]: sha1(p) for n, p in files.items() if n.split("/")[1] == "models"},
            "inference_configs": ["configs/inference.json"] if fits else None,
            "merged": presets + (["values: " + json.dumps(dict(overrides))] if overrides else []),
        }
    logger.info("%s: %d files, sha1 %s", path, len(files), sha1(path))
    return path, facts


def _versions() -> dict[str, str]:
    import monai
    import torch

    return {"monai": monai.__version__, "torch": torch.__version__.split("+")[0], "python": sys.version.split()[0]}


def _base_key(bundle_dir: Path, meta: dict) -> str | None:
    base = meta.get("builds_on", BUILDS_ON.get(bundle_dir.name))
    if base and "_v" not in base and (bundle_dir.parent / base / "configs" / "metadata.json").is_file():
        base = f"{base}_v{bundle_metadata(bundle_dir.parent / base)['version']}"
    return base


def index_entry(
    bundle_dir: str | os.PathLike,
    zip_path: str | os.PathLike | None,
    root: str | os.PathLike = ROOT,
    base_url: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> tuple[str, dict]:
    """``("<name>_v<version>", entry)`` of an index, as the model zoo's ``model_info.json`` (``checksum``,
    ``source``) plus description, versions, what the bundle builds on and ``facts``.

    Args:
        bundle_dir: the bundle folder.
        zip_path: its built zip; None for the entry of the bundle folder itself (the repository's
            ``bundle_index.json``: ``source`` is the folder, ``checksum`` the content checksum, no weights).
        root: ``source`` is relative to this folder (the index's) when ``base_url`` is not given.
        base_url: where the zips are published (``source`` = ``base_url/<zip name>``).
        facts: what :func:`build` returned with the zip.
    """
    bundle_dir = Path(bundle_dir)
    meta = bundle_metadata(bundle_dir)
    where = Path(zip_path) if zip_path is not None else bundle_dir
    if base_url and zip_path is not None:
        source = f"{base_url.rstrip('/')}/{where.name}"
    else:
        source = Path(os.path.relpath(where.resolve(), Path(root).resolve())).as_posix()
    if zip_path is None:
        content = content_sha1(release_files(bundle_dir))
        facts = {"content_sha1": content, "weights": None, **dict(facts or {})}
        checksum = content
    else:
        checksum = sha1(zip_path)
    entry = {
        "checksum": checksum,
        "source": source,
        "name": meta.get("name", bundle_dir.name),
        "version": meta["version"],
        "description": meta.get("description", ""),
        "monai_version": meta.get("monai_version"),
        "pytorch_version": meta.get("pytorch_version"),
        "released_with": _versions(),
        "builds_on": _base_key(bundle_dir, meta),
        **dict(facts or {}),
    }
    if zip_path is None:
        del entry["released_with"]  # nothing was built
    return f"{bundle_dir.name}_v{meta['version']}", entry


def update_index(entries: Mapping[str, dict], index_path: str | os.PathLike, force: bool = False) -> dict[str, dict]:
    """Adds ``entries`` to the index file (other entries are kept), JSON with 4-space indent, keys sorted.

    An entry of a local build (``source`` a path) is replaced by a new build of the same version, with a log line:
    it is your own output. A published entry (``source`` a URL) is not: the model zoo's rule is that a changed
    bundle gets a new version.

    Raises:
        ReleaseError: a published entry of the same version with another checksum exists and ``force`` is False.
    """
    index_path = Path(index_path)
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for key, entry in entries.items():
        old = index.get(key, {})
        if old.get("checksum") and old["checksum"] != entry["checksum"]:
            if "://" in str(old.get("source", "")) and not force:
                raise ReleaseError(
                    f"{index_path} lists the published {key} ({old['source']}) with checksum {old['checksum']}; this "
                    f"build is {entry['checksum']}. A changed bundle needs a new version (configs/metadata.json "
                    "'version' and 'changelog'); --force replaces the entry."
                )
            logger.info("%s: %s replaces the earlier build (sha1 %s)", index_path, key, old["checksum"])
        index[key] = entry
    index = dict(sorted(index.items()))
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=4) + "\n")
    return index


def source_index(bundles: Sequence[Path], index_path: str | os.PathLike) -> dict[str, dict]:
    """Writes the repository's index (``bundle_index.json``): one entry per bundle folder at its current version,
    ``source`` the folder, ``checksum`` its content checksum (configs, docs, carried code; no weights are
    committed). Entries of versions no bundle has any more are dropped.

    Examples::

        >>> import tempfile
        >>> index = source_index([ROOT / "bundles" / "selfmedhpm_ct_pretraining"], Path(tempfile.mkdtemp()) / "i.json")
        >>> [entry["source"].endswith("bundles/selfmedhpm_ct_pretraining") for entry in index.values()]
        [True]
    """
    index_path = Path(index_path)
    entries = dict(index_entry(bundle, None, index_path.parent) for bundle in bundles)
    index = dict(sorted(entries.items()))
    index_path.write_text(json.dumps(index, indent=4) + "\n")
    return index


def _check_member(info: zipfile.ZipInfo, target: Path) -> Path:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"link in archive: {name!r}")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise UnsafeArchiveError(f"entry outside the target folder: {name!r}")
    destination = (target / Path(*posix.parts)).resolve() if posix.parts else target
    if destination != target and target not in destination.parents:
        raise UnsafeArchiveError(f"entry outside the target folder: {name!r}")
    return destination


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extracts a zip inside ``target_dir`` only: every entry is checked before anything is written, so an archive
    with one absolute, ``..`` or link entry is refused as a whole.

    Args:
        zip_path: the archive.
        target_dir: the folder to extract into (created).

    Returns:
        the extracted files.

    Raises:
        UnsafeArchiveError: naming the first offending entry.
    """
    target = Path(target_dir).resolve()
    with zipfile.ZipFile(zip_path) as archive:
        members = [(info, _check_member(info, target)) for info in archive.infolist()]
        written = []
        for info, destination in members:
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(destination, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            written.append(destination)
    return written


def _bundles(names: Sequence[str] | None, bundles_dir: Path) -> list[Path]:
    found = sorted(p for p in bundles_dir.iterdir() if (p / "configs" / "metadata.json").is_file())
    if not names:
        return found
    by_name = {p.name: p for p in found}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ReleaseError(f"unknown bundle(s) {unknown}; bundles: {sorted(by_name)}")
    return [by_name[n] for n in names]


def _settings(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``NAME:KEY=VALUE`` items (VALUE in JSON, else a string) as ``{NAME: {KEY: value}}``."""
    settings: dict[str, dict[str, Any]] = {}
    for item in values:
        target, sep, value = item.partition("=")
        name, colon, key = target.partition(":")
        if not (sep and colon and name and key):
            raise ReleaseError(f"--set takes NAME:KEY=VALUE, got {item!r}")
        try:
            settings.setdefault(name, {})[key] = json.loads(value)
        except json.JSONDecodeError:
            settings.setdefault(name, {})[key] = value
    return settings


def _weights_dirs(values: Sequence[str]) -> dict[str, Path]:
    dirs = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            raise ReleaseError(f"--weights_from takes NAME=FOLDER, got {value!r}")
        dirs[name] = Path(folder)
    return dirs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.release", description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", nargs="*", help="bundle folder names (default: every bundle)")
    parser.add_argument("--bundles_dir", type=Path, default=ROOT / "bundles")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the zips go")
    parser.add_argument("--index", type=Path, default=None, help="the index of the built zips (default DIST/"
                        "bundle_index.json)")  # fmt: skip
    parser.add_argument("--update-index", "--update_index", action="store_true", help="(the index is always written)")
    parser.add_argument("--source-index", "--source_index", action="store_true", help="only write the repository's "
                        "bundle_index.json (the bundle folders, no build)")  # fmt: skip
    parser.add_argument("--base_url", default=None, help="where the zips are published (index 'source')")
    parser.add_argument("--weights_from", nargs="*", default=[], metavar="NAME=FOLDER", help="*.pt from FOLDER")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE", help="the weights' config")
    parser.add_argument("--allow-missing-weights", "--allow_missing_weights", action="store_true")
    parser.add_argument("--force", action="store_true", help="replace a published index entry of the same version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        bundles = _bundles(args.bundles, args.bundles_dir)
        if args.source_index:
            index_path = args.index or args.bundles_dir.parent / "bundle_index.json"
            for key, entry in source_index(bundles, index_path).items():
                print(f"{key}: {entry['source']}  content sha1 {entry['checksum']}")
            print(f"wrote {index_path}")
            return 0
        weights, settings = _weights_dirs(args.weights_from), _settings(args.set)
        unknown = sorted((set(weights) | set(settings)) - {b.name for b in bundles})
        if unknown:
            raise ReleaseError(f"--weights_from/--set name bundles not released here: {unknown}")
        index_path = args.index or args.dist / "bundle_index.json"
        entries = {}
        for bundle in bundles:
            overrides = {**trained_with(weights.get(bundle.name)), **settings.get(bundle.name, {})} or None
            path, facts = build(
                bundle, args.dist, args.allow_missing_weights, weights.get(bundle.name), overrides=overrides
            )
            key, entry = index_entry(bundle, path, index_path.parent, args.base_url, facts)
            entries[key] = entry
            merged = ", ".join(facts["merged"]) or "nothing"
            print(f"wrote {path}  sha1 {entry['checksum']}  ({merged} merged into configs/inference.json, train.json)")
        update_index(entries, index_path, force=args.force)
        print(f"wrote {index_path}: {', '.join(entries)}")
    except ReleaseError as e:
        print(f"release refused: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    sys.exit(main())
