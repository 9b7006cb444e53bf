"""Reproducible, self-contained releases of the bundles and their model-zoo style index.

``python -m selfmedhpm.release`` packs each bundle of ``bundles/`` into ``dist/<name>_v<version>.zip``:

- top folder ``<name>/`` holding ``LICENSE``, ``configs/``, ``docs/``, the weights ``models/*.pt`` and the modules
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
values they were trained with beyond the CPU preset with ``--set NAME:KEY=VALUE``: the weights are checked with them
and the release carries them as ``configs/released_weights.json``, listed in the index entry's
``inference_configs`` (the config list to run the released weights with).

Examples::

    python -m selfmedhpm.release --update-index
    python -m selfmedhpm.release --bundles selfmedhpm_ct_segmentation --allow-missing-weights
    python -m selfmedhpm.release --update-index --weights_from selfmedhpm_ct_segmentation=results/demo/finetune_hpm \
        --set "selfmedhpm_ct_segmentation:roi_size=[48,48,48]"
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "ROOT",
    "ReleaseError",
    "UnsafeArchiveError",
    "bundle_metadata",
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
    "safe_extract",
    "main",
]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parent
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644
BUILDS_ON = {"selfmedhpm_ct_segmentation": "selfmedhpm_ct_pretraining"}
"""Bundle -> the bundle whose output it starts from, unless its metadata names one (``"builds_on"``)."""
PRESETS = ([], ["train_cpu.json"])
"""Config overrides tried, in order, when checking that the weights fit the inference network."""
OVERRIDES_FILE = "released_weights.json"
"""Written into a release's ``configs/`` when ``--set`` gave values the weights were trained with."""

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


def _imported_submodules(source: str, current: str) -> set[str]:
    """Submodules of ``selfmedhpm`` that a module's source imports or reaches as ``selfmedhpm.<name>``."""
    found: set[str] = set()
    package_parts = current.split(".")[:-1] if current else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("selfmedhpm.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside a subpackage
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module[len("selfmedhpm.") :] if (node.module or "").startswith("selfmedhpm.") else None
                if node.module == "selfmedhpm":
                    module = ""
            if module is None:
                continue
            if module:
                found.add(module)
            found |= {f"{module}.{a.name}".strip(".") for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "selfmedhpm":
            found.add(node.attr)
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
        todo |= _imported_submodules(path.read_text(), module) - done
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
    for module in package_modules(bundle_dir, package_dir):
        files[f"{name}/selfmedhpm/{module}"] = package_dir / module
    return dict(sorted(files.items()))


def _inference_loader(parser: Any) -> tuple[str, str] | None:
    """(id of the checkpoint path, id of the network it loads into) of the inference config's CheckpointLoader."""
    for handler in parser.get("handlers", []) or []:
        if isinstance(handler, dict) and str(handler.get("_target_", "")).endswith("CheckpointLoader"):
            path, target = handler.get("load_path"), (handler.get("load_dict") or {}).get("model")
            if isinstance(path, str) and isinstance(target, str) and path.startswith("@") and target.startswith("@"):
                return path[1:], target[1:]
    return None


def weights_fit(
    bundle_dir: str | os.PathLike,
    weights_dir: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """The inference config list whose network the bundle's inference weights load into strictly.

    Tries ``configs/inference.json`` alone, then with each of :data:`PRESETS` (``train_cpu.json``: the demo trains
    the CPU preset), each followed by ``overrides``, and loads the weights the inference handlers'
    ``CheckpointLoader`` loads.

    Args:
        bundle_dir: the bundle folder.
        weights_dir: where the ``.pt`` files are (default: the bundle's ``models/``).
        overrides: config values the weights were trained with beyond a preset (e.g. ``{"roi_size": [48, 48, 48]}``).

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
    for preset in PRESETS:
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name in sorted(files):
                source = files[name]
                _add_entry(archive, name, source if isinstance(source, bytes) else Path(source))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
    """Checks and packs one bundle into ``dist_dir/<name>_v<version>.zip``.

    Args:
        bundle_dir: the bundle folder.
        dist_dir: output folder.
        allow_missing_weights: release without the inference weights (with a warning) instead of refusing.
        weights_dir: take ``*.pt`` from here instead of ``<bundle>/models``.
        package_dir: the ``selfmedhpm`` source folder.
        overrides: config values the weights were trained with beyond the presets (``roi_size``, ``pixdim``...):
            the weights are checked with them and they are written into the release as
            ``configs/released_weights.json``, to add to the config list.

    Returns:
        the zip path and facts for its index entry (weights, the inference configs they fit, carried modules).

    Raises:
        ReleaseError: missing or unfit weights.
    """
    bundle_dir = Path(bundle_dir).resolve()
    weights = Path(weights_dir).resolve() if weights_dir else None
    fits = check_weights(bundle_dir, weights, allow_missing_weights, overrides)
    files: dict[str, Path | bytes] = dict(release_files(bundle_dir, package_dir, weights))
    if overrides:
        files[f"{bundle_dir.name}/configs/{OVERRIDES_FILE}"] = (json.dumps(dict(overrides), indent=4) + "\n").encode()
    path = write_zip(files, Path(dist_dir) / zip_name(bundle_dir))
    facts = {
        "content_sha1": content_sha1(files),
        "weights": {n.split("/", 1)[1]: sha1(source) for n, source in files.items() if n.split("/")[1] == "models"},
        "inference_configs": [f"configs/{n}" for n in fits] if fits else None,
    }
    logger.info("%s: %d files, sha1 %s", path, len(files), sha1(path))
    return path, facts


def _versions() -> dict[str, str]:
    import monai
    import torch

    return {"monai": monai.__version__, "torch": torch.__version__.split("+")[0], "python": sys.version.split()[0]}


def index_entry(
    bundle_dir: str | os.PathLike,
    zip_path: str | os.PathLike,
    root: str | os.PathLike = ROOT,
    base_url: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> tuple[str, dict]:
    """``("<name>_v<version>", entry)`` of the index for a built zip.

    Args:
        bundle_dir: the bundle folder.
        zip_path: its built zip.
        root: ``source`` is the zip's path relative to this folder when ``base_url`` is not given.
        base_url: where the zips are published (``source`` = ``base_url/<zip name>``).
        facts: what :func:`build` returned with the zip.
    """
    bundle_dir, zip_path = Path(bundle_dir), Path(zip_path)
    meta = bundle_metadata(bundle_dir)
    if base_url:
        source = f"{base_url.rstrip('/')}/{zip_path.name}"
    else:
        source = Path(os.path.relpath(zip_path.resolve(), Path(root).resolve())).as_posix()
    base = meta.get("builds_on", BUILDS_ON.get(bundle_dir.name))
    if base and "_v" not in base and (bundle_dir.parent / base / "configs" / "metadata.json").is_file():
        base = f"{base}_v{bundle_metadata(bundle_dir.parent / base)['version']}"
    entry = {
        "checksum": sha1(zip_path),
        "source": source,
        "name": meta.get("name", bundle_dir.name),
        "version": meta["version"],
        "description": meta.get("description", ""),
        "monai_version": meta.get("monai_version"),
        "pytorch_version": meta.get("pytorch_version"),
        "released_with": _versions(),
        "builds_on": base,
        **dict(facts or {}),
    }
    return f"{bundle_dir.name}_v{meta['version']}", entry


def update_index(entries: Mapping[str, dict], index_path: str | os.PathLike, force: bool = False) -> dict[str, dict]:
    """Adds ``entries`` to the index file (other entries are kept), JSON with 4-space indent, keys sorted.

    Raises:
        ReleaseError: an entry of the same version with another checksum exists and ``force`` is False (the model
            zoo's rule: a changed bundle gets a new version).
    """
    index_path = Path(index_path)
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for key, entry in entries.items():
        old = index.get(key, {}).get("checksum")
        if old and old != entry["checksum"] and not force:
            raise ReleaseError(
                f"{index_path.name} already lists {key} with checksum {old}; this build is {entry['checksum']}. "
                "A changed bundle needs a new version (configs/metadata.json 'version' and 'changelog'); "
                "--force replaces the entry."
            )
        index[key] = entry
    index = dict(sorted(index.items()))
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
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm.release", description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", nargs="*", help="bundle folder names (default: every bundle)")
    parser.add_argument("--bundles_dir", type=Path, default=ROOT / "bundles")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the zips go")
    parser.add_argument("--update-index", "--update_index", action="store_true", help="write the index")
    parser.add_argument("--index", type=Path, default=ROOT / "bundle_index.json")
    parser.add_argument("--base_url", default=None, help="where the zips are published (index 'source')")
    parser.add_argument("--weights_from", nargs="*", default=[], metavar="NAME=FOLDER", help="*.pt from FOLDER")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE", help="the weights' config")
    parser.add_argument("--allow-missing-weights", "--allow_missing_weights", action="store_true")
    parser.add_argument("--force", action="store_true", help="replace an index entry of the same version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        weights, settings = _weights_dirs(args.weights_from), _settings(args.set)
        bundles = _bundles(args.bundles, args.bundles_dir)
        unknown = sorted((set(weights) | set(settings)) - {b.name for b in bundles})
        if unknown:
            raise ReleaseError(f"--weights_from/--set name bundles not released here: {unknown}")
        entries = {}
        for bundle in bundles:
            overrides = settings.get(bundle.name)
            path, facts = build(
                bundle, args.dist, args.allow_missing_weights, weights.get(bundle.name), overrides=overrides
            )
            key, entry = index_entry(bundle, path, args.index.parent, args.base_url, facts)
            entries[key] = entry
            print(f"{path}  sha1 {entry['checksum']}")
        if args.update_index:
            update_index(entries, args.index, force=args.force)
            print(f"updated {args.index}")
    except ReleaseError as e:
        print(f"release refused: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
