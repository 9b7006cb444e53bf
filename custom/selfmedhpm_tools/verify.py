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

"""The MONAI model zoo's checks of every bundle, offline, as one command: ``python -m selfmedhpm_tools.verify``.

Per bundle: required files; version (a key of the changelog, single-digit components) and the repository's index
(``bundle_index.json`` must describe the bundle's current content: ``make index``); metadata against the
shipped schema; ``check_properties()`` of the train and inference workflows (on a tiny synthetic data set);
``verify_net_in_out``; TorchScript export (``ckpt_export`` + ``torch.jit.load``) unless the metadata declares it
unsupported (``"torchscript_export": "not supported: <why>"``); JSON pretty-printed with a 4-space indent; the
modules the release carries import only the bundle's ``required_packages_version``. For the repository: no
committed file over 1 MB, black / isort / flake8 at line length 120 on ``custom/`` and ``tests/``, and the settings
an encoder carries from pretraining to fine-tuning: the image pre-processing of both bundles' ``train.json`` and
``inference.json`` (orientation, spacing, intensity window, foreground crop) and their ``encoder_settings``, with and
without the CPU preset, are the same.

Prints one line per check (``ok``, ``n/a`` with the reason, ``warn`` or ``FAIL``) and exits 1 when a check fails.

Examples::

    python -m selfmedhpm_tools.verify
    python -m selfmedhpm_tools.verify --bundles selfmedhpm_ct_segmentation --skip lint
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from selfmedhpm_tools.release import (
    ROOT,
    bundle_metadata,
    content_sha1,
    imported_modules,
    package_modules,
    release_files,
)

__all__ = ["Result", "CHECKS", "verify_bundle", "verify_repository", "main"]

logger = logging.getLogger(__name__)

SCHEMA = ROOT / "docs" / "schema" / "meta_schema_20240725.json"
REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "docs/README.md", "configs/inference.json")
MAX_FILE_BYTES = 1_000_000
LINT_PATHS = ("custom", "tests")
ALWAYS_AVAILABLE = {"monai", "torch", "numpy"}
"""Distributions every bundle environment has (the metadata's ``monai_version``, ``pytorch_version``,
``numpy_version``); MONAI's own dependencies come with it."""


@dataclass
class Result:
    """Outcome of one check.

    Args:
        bundle: the bundle's folder name, or "repository".
        check: short name of the check.
        status: "ok", "n/a", "warn" or "FAIL".
        detail: what was found (the reason for n/a, warn and FAIL).
    """

    bundle: str
    check: str
    status: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status:<5} {self.bundle:<28} {self.check:<18} {self.detail}".rstrip()


class CheckFailed(Exception):
    """A check found a problem (its message is the detail)."""


class NotApplicable(Exception):
    """A check does not apply to this bundle (its message says why)."""


class Warned(Exception):
    """A check passed with a caveat worth reading (its message)."""


# ---------------------------------------------------------------------------------------------------- bundle checks


def check_files(bundle: Path, context: dict) -> str:
    """LICENSE, configs/metadata.json, docs/README.md and an inference config exist; models/model.pt is preferred."""
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    if missing:
        raise CheckFailed(f"missing {', '.join(missing)}")
    if not (bundle / "models" / "model.pt").is_file():
        raise Warned("no models/model.pt here (weights are not committed; make release takes the demo's weights)")
    return "required files present"


def check_version(bundle: Path, context: dict) -> str:
    """The version is a key of the changelog and has single-digit numeric components (compared as strings)."""
    meta = bundle_metadata(bundle)
    version = str(meta.get("version", ""))
    parts = version.split(".")
    if len(parts) != 3 or not all(len(p) == 1 and p.isdigit() for p in parts):
        raise CheckFailed(f"version {version!r} must be three single-digit components, e.g. 0.1.0")
    if version not in meta.get("changelog", {}):
        raise CheckFailed(f"version {version} has no changelog entry")
    return f"version {version} in changelog"


def check_index(bundle: Path, context: dict) -> str:
    """The repository's ``bundle_index.json`` lists this bundle at its current version with the checksum of its
    current configs, docs and carried code (``make index`` writes it)."""
    index_path = context["index"]
    key = f"{bundle.name}_v{bundle_metadata(bundle)['version']}"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if key not in index:
        raise CheckFailed(f"{key} is not in {index_path.name}: run make index")
    if index[key].get("checksum") != content_sha1(release_files(bundle)):
        raise CheckFailed(f"{index_path.name} describes another content of {key}: run make index")
    return f"{key} matches {index_path.name}"


def check_metadata(bundle: Path, context: dict) -> str:
    """``verify_metadata`` against the shipped schema (no download)."""
    from monai.bundle import verify_metadata

    try:
        verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    except ValueError as e:
        raise CheckFailed(str(e).splitlines()[0]) from e
    meta = bundle_metadata(bundle)
    if "selfmedhpm" in meta.get("required_packages_version", {}):
        raise Warned(
            "schema ok; required_packages_version lists selfmedhpm, which is not on PyPI: releases carry the "
            "package, so the zoo's `pip install` of the requirements would fail"
        )
    return f"valid against {SCHEMA.name}"


def _data_dir(context: dict) -> Path:
    """A two-case synthetic data set (made once), with the validation image also in imagesTs/."""
    if "data_dir" not in context:
        from selfmedhpm_tools.phantom import generate_dataset

        out = Path(context["tmp"]) / "data"
        generate_dataset(out, cases=2, seed=0, val_fraction=0.5, shape=(64, 64, 32), verbose=False)
        datalist = json.loads((out / "dataset_0.json").read_text())
        (out / "imagesTs").mkdir()
        for entry in datalist["validation"]:
            shutil.copy(out / entry["image"], out / "imagesTs" / Path(entry["image"]).name)
        context["data_dir"] = out
    return context["data_dir"]


def _workflow(bundle: Path, names: Sequence[str], workflow_type: str, context: dict, **overrides: object):
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    return ConfigWorkflow(
        config_file=[str(configs / n) for n in names],
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        dataset_dir=str(_data_dir(context)),
        device="$torch.device('cpu')",
        **overrides,
    )


def check_properties(bundle: Path, context: dict) -> str:
    """``check_properties()`` is empty for the train and the inference workflow."""
    problems = []
    for names, kind in ((["train.json"], "train"), (["inference.json"], "infer")):
        if not (bundle / "configs" / names[0]).is_file():
            continue
        workflow = _workflow(bundle, names, kind, context, cache_rate=0.0, num_workers=0, check_data=False)
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            problems.append(f"{names[0]}: {missing}")
    if problems:
        raise CheckFailed("; ".join(problems))
    return "train and inference properties complete"


def check_net_in_out(bundle: Path, context: dict) -> str:
    """``verify_net_in_out`` of the inference ``network_def`` with the metadata's input and output format."""
    from monai.bundle import verify_net_in_out

    configs = bundle / "configs"
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        device="cpu",
        bundle_root=str(bundle),
    )
    return "network_def input/output verified"


def check_torchscript(bundle: Path, context: dict) -> str:
    """``ckpt_export`` of the inference ``network_def`` (random weights) and ``torch.jit.load`` of it; a bundle whose
    metadata declares ``torchscript_export`` "not supported" is reported as n/a with its reason."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    configs = bundle / "configs"
    note = str(bundle_metadata(bundle).get("torchscript_export", ""))
    if note.lower().startswith("not supported"):
        raise NotApplicable(note)
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    folder = Path(tempfile.mkdtemp(dir=context["tmp"]))
    try:
        torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "model.pt")
        ckpt_export(
            net_id="network_def",
            filepath=str(folder / "model.ts"),
            ckpt_file=str(folder / "model.pt"),
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            bundle_root=str(bundle),
            device="$torch.device('cpu')",
        )
        torch.jit.load(str(folder / "model.ts"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return "exported and loaded"


def json_format_problems(paths: Iterable[Path]) -> list[str]:
    """JSON files that are not ``json.dumps(obj, indent=4)`` plus a newline (the zoo's pretty-format-json hook).

    Examples::

        >>> path = Path(tempfile.mkdtemp()) / "a.json"
        >>> _ = path.write_text('{"a": [1, 2]}')
        >>> json_format_problems([path])[0].endswith("not pretty-printed with a 4-space indent")
        True
    """
    problems = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{path.name}: invalid JSON ({e})")
            continue
        expected = {json.dumps(obj, indent=4, ensure_ascii=a) + "\n" for a in (True, False)}
        if text not in expected:
            problems.append(f"{path.name}: not pretty-printed with a 4-space indent")
    return problems


def check_json_format(bundle: Path, context: dict) -> str:
    """Every JSON file of the bundle is pretty-printed with a 4-space indent."""
    paths = sorted(p for p in bundle.rglob("*.json") if not {"models", "eval"} & set(p.relative_to(bundle).parts))
    problems = json_format_problems(paths)
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{len(paths)} JSON files formatted"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_carried_imports(bundle: Path, context: dict) -> str:
    """The modules a release carries import (at module level) only the standard library, MONAI, torch, numpy and
    the bundle's ``required_packages_version``."""
    from importlib.metadata import packages_distributions

    from selfmedhpm_tools.release import PACKAGE

    meta = bundle_metadata(bundle)
    allowed = {_normalize(n) for n in meta.get("required_packages_version", {})} | ALWAYS_AVAILABLE
    distributions = packages_distributions()
    modules = package_modules(bundle)
    missing = {}
    for module in modules:
        imported = imported_modules((PACKAGE / module).read_text(), module_level=True)
        for name in {name.split(".")[0] for name in imported} - {"selfmedhpm", "__future__"}:
            if name in sys.stdlib_module_names:
                continue
            dists = {_normalize(d) for d in distributions.get(name, [name])}
            if not dists & allowed:
                missing.setdefault(name, []).append(module)
    if missing:
        raise CheckFailed(f"imports outside required_packages_version: {missing}")
    return f"{len(modules)} carried modules import only required packages"


CHECKS: dict[str, Callable[[Path, dict], str]] = {
    "files": check_files,
    "version": check_version,
    "index": check_index,
    "metadata": check_metadata,
    "properties": check_properties,
    "net_in_out": check_net_in_out,
    "torchscript": check_torchscript,
    "json_format": check_json_format,
    "carried_imports": check_carried_imports,
}


def _run(bundle: str, name: str, check: Callable[[], str]) -> Result:
    try:
        return Result(bundle, name, "ok", check())
    except NotApplicable as e:
        return Result(bundle, name, "n/a", str(e))
    except Warned as e:
        return Result(bundle, name, "warn", str(e))
    except Exception as e:  # every other error is a failed check, reported with the others
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Result(bundle, name, "FAIL", f"{type(e).__name__}: {detail}")


def verify_bundle(bundle: str | os.PathLike, context: dict, skip: Sequence[str] = ()) -> list[Result]:
    """Runs :data:`CHECKS` on one bundle (``skip`` names checks to leave out)."""
    bundle = Path(bundle)
    results = []
    for name, check in CHECKS.items():
        if name not in skip:
            results.append(_run(bundle.name, name, lambda check=check: check(bundle, context)))
            print(results[-1], flush=True)
    return results


# ------------------------------------------------------------------------------------------------ repository checks


def _committed_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True)
    return [root / name for name in listed.stdout.split("\0") if name]


def check_file_sizes(root: Path) -> str:
    """No committed file (``git ls-files``) is over 1 MB."""
    try:
        files = _committed_files(root)
    except (OSError, subprocess.CalledProcessError) as e:
        raise NotApplicable(f"not a git checkout ({e})") from e
    sizes = {p: p.stat().st_size for p in files if p.is_file()}
    large = [f"{p.relative_to(root)} ({size / 1e6:.1f} MB)" for p, size in sizes.items() if size > MAX_FILE_BYTES]
    if large:
        raise CheckFailed("over 1 MB: " + ", ".join(large))
    return f"{len(files)} committed files, none over 1 MB"


def check_index_format(root: Path) -> str:
    """``bundle_index.json`` (when present) is pretty-printed and each entry has a checksum and a source."""
    index = root / "bundle_index.json"
    if not index.is_file():
        raise CheckFailed("no bundle_index.json (make index writes it)")
    problems = json_format_problems([index])
    entries = json.loads(index.read_text())
    problems += [f"{k}: no checksum/source" for k, v in entries.items() if not {"checksum", "source"} <= set(v)]
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{len(entries)} entries"


def _tool(args: Sequence[str], root: Path) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise CheckFailed(f"{' '.join(args[:2])}: " + " | ".join(output[:8]))
    return "clean"


def check_lint(root: Path) -> str:
    """black, isort and flake8 at line length 120 on ``custom/`` and ``tests/``."""
    paths = [p for p in LINT_PATHS if (root / p).is_dir()]
    _tool(["black", "--check", "-q", "-l", "120", *paths], root)
    _tool(["isort", "--check-only", "-q", "--profile", "black", "-l", "120", *paths], root)
    _tool(["flake8", "--max-line-length", "120", *paths], root)
    return f"black, isort, flake8 clean on {', '.join(paths)}"


SHARED_PREPROCESSING = {  # bundle -> {config file: id of the list of its image pre-processing transforms}
    "selfmedhpm_ct_pretraining": {"train.json": "preprocessing", "inference.json": "preprocessing#transforms"},
    "selfmedhpm_ct_segmentation": {
        "train.json": "train#deterministic_transforms",
        "inference.json": "preprocessing#transforms",
    },
}
SHARED_STEPS = {  # transform -> the arguments that decide what the encoder sees
    "Orientationd": ("axcodes",),
    "Spacingd": ("pixdim", "mode"),
    "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip"),
    "CropForegroundd": ("source_key", "margin", "allow_smaller"),
}
SAME_STEP = {"selfmedhpm.seg_data.MetaSafeSpacingd": "Spacingd"}  # Spacingd that MONAI Label can run


def _parser(configs: Sequence[Path]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in configs])
    return parser


def preprocessing_steps(config: Path, steps_id: str) -> list[tuple[str, dict]]:
    """The image pre-processing of ``config`` that pretraining and fine-tuning must share: ``(transform, {argument:
    value})`` in order, references resolved, the image's interpolation mode picked out of per-key modes."""
    parser = _parser([config])
    steps = []
    for i, step in enumerate(parser[steps_id]):
        name = SAME_STEP.get(step.get("_target_"), step.get("_target_")) if isinstance(step, dict) else None
        if name not in SHARED_STEPS:
            continue
        args = {a: parser.get_parsed_content(f"{steps_id}#{i}#{a}") for a in SHARED_STEPS[name] if a in step}
        keys = step.get("keys")
        if isinstance(args.get("mode"), (list, tuple)) and isinstance(keys, list):
            args["mode"] = args["mode"][keys.index("image")]
        steps.append((name, json.loads(json.dumps(args))))
    return steps


def check_shared_settings(root: Path) -> str:
    """Pretraining and fine-tuning pre-process images alike and agree on the encoder's settings (see the module)."""
    bundles = root / "bundles"
    problems, reference = [], None
    for bundle, configs in SHARED_PREPROCESSING.items():
        for name, steps_id in configs.items():
            steps = preprocessing_steps(bundles / bundle / "configs" / name, steps_id)
            where = f"{bundle}/configs/{name}"
            if reference is None:
                reference = (where, steps)
            elif steps != reference[1]:
                problems.append(f"{where} pre-processes images as {steps}, {reference[0]} as {reference[1]}")
    for preset in ([], ["train_cpu.json"]):
        found = {}
        for bundle in SHARED_PREPROCESSING:
            parser = _parser([bundles / bundle / "configs" / n for n in ["train.json", *preset]])
            found[bundle] = json.loads(json.dumps(parser.get_parsed_content("encoder_settings")))
        (a, first), (b, second) = found.items()
        for key in sorted(set(first) & set(second)):
            if first[key] != second[key]:
                problems.append(f"encoder_settings#{key} of train.json{' + ' if preset else ''}{''.join(preset)}: "
                                f"{a} {first[key]}, {b} {second[key]}")  # fmt: skip
    if problems:
        raise CheckFailed("; ".join(problems))
    steps = " -> ".join(name for name, _ in reference[1])
    return f"train and inference of both bundles pre-process alike ({steps}); encoder_settings agree"


REPOSITORY_CHECKS: dict[str, Callable[[Path], str]] = {
    "file_sizes": check_file_sizes,
    "index_format": check_index_format,
    "lint": check_lint,
    "shared_settings": check_shared_settings,
}


def verify_repository(root: str | os.PathLike = ROOT, skip: Sequence[str] = ()) -> list[Result]:
    """Runs :data:`REPOSITORY_CHECKS` (``skip`` names checks to leave out)."""
    results = []
    for name, check in REPOSITORY_CHECKS.items():
        if name not in skip:
            results.append(_run("repository", name, lambda check=check: check(Path(root))))
            print(results[-1], flush=True)
    return results


def _quiet() -> None:
    """MONAI's bundle functions log their inputs at INFO through their own handlers: keep warnings only."""
    import monai.bundle  # noqa: F401  (creates MONAI's loggers)

    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("monai", "ignite", "selfmedhpm", "selfmedhpm_tools"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("monai.bundle.workflows").setLevel(logging.ERROR)  # "Logging file is set to False"
    warnings.filterwarnings("ignore", message="No hash value provided")  # the shipped schema is not downloaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", nargs="*", help="bundle folder names (default: every bundle)")
    parser.add_argument("--bundles_dir", type=Path, default=ROOT / "bundles")
    parser.add_argument("--index", type=Path, default=ROOT / "bundle_index.json")
    checks = sorted(CHECKS) + sorted(REPOSITORY_CHECKS)
    parser.add_argument("--skip", nargs="*", default=[], choices=checks, help="checks to leave out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    bundles = sorted(p for p in args.bundles_dir.iterdir() if (p / "configs" / "metadata.json").is_file())
    if args.bundles:
        bundles = [p for p in bundles if p.name in args.bundles]
    results = []
    with tempfile.TemporaryDirectory(prefix="selfmedhpm_verify_") as tmp:
        context = {"tmp": tmp, "index": args.index}
        for bundle in bundles:
            results += verify_bundle(bundle, context, args.skip)
    results += verify_repository(ROOT, args.skip)
    failed = [r for r in results if r.status == "FAIL"]
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "n/a", "warn", "FAIL")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
