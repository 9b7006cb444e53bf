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

"""A MONAI Label app folder for the segmentation bundle: annotators get organ labels for a CT and train further.

``python -m selfmedhpm_tools.label_app --out apps/selfmedhpm --preset cpu`` writes

- ``apps/selfmedhpm/``: a copy of MONAI Label's ``monaibundle`` sample app, taken from the MONAI Label
  installation (``.venv-monailabel/monailabel/sample-apps/monaibundle``, ``--sample_app`` for another one);
- ``apps/selfmedhpm/model/selfmedhpm_ct_segmentation/``: the bundle, self-contained (its configs, docs, weights and
  the modules of the ``selfmedhpm`` package its configs need, as ``<bundle>/selfmedhpm/``: MONAI Label puts the
  bundle folder first on ``sys.path``, so nothing has to be installed in MONAI Label's environment).

MONAI Label reads ``configs/inference.json`` and ``configs/train.json`` as they are, with no override files, so a
preset (``--preset cpu``: ``train_cpu.json``, 64^3 crops and a small ViT), any ``--override FILE.json`` and
``--set KEY=VALUE`` (VALUE in JSON; the values recorded in ``trained_with.json`` beside ``--weights``, which every
training run writes, come first) are merged, in this order, into both and written back; keys a config does not
have are left out of it (``epochs`` is not an inference key) and listed. The metadata's ``spatial_shape`` follows the
merged ``roi_size``, and its ``description`` (what MONAI Label's ``/info/`` shows) describes the merged network.

The weights (``--weights``: ``model.pt`` or its folder, default the bundle's ``models/``) are loaded **strictly**
into the merged inference network before the app is written: MONAI Label itself loads them with ``strict=False`` and
only warns, so weights of another preset would silently give a network with random layers. Without weights MONAI
Label offers training only (``--allow-missing-weights``).

Then::

    .venv-monailabel/bin/python -m monailabel.main start_server --app apps/selfmedhpm --studies DIR --host 127.0.0.1 \\
        --port 8000 --conf models selfmedhpm_ct_segmentation --conf zoo_source local --conf sam2 false
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfmedhpm.errors import install_excepthook
from selfmedhpm_tools.release import (
    MERGED_CONFIGS,
    PACKAGE,
    ROOT,
    apply_overrides,
    assemble_bundle,
    merge_config,
    trained_with,
)

__all__ = [
    "BUNDLE",
    "MERGED_CONFIGS",
    "PRESETS",
    "LabelAppError",
    "find_sample_app",
    "merge_config",
    "assemble_bundle",
    "apply_overrides",
    "check_weights",
    "prepare_app",
    "parse_settings",
    "main",
]

logger = logging.getLogger(__name__)

BUNDLE = ROOT / "bundles" / "selfmedhpm_ct_segmentation"
MONAILABEL_ENV = ROOT / ".venv-monailabel"
PRESETS: dict[str, tuple[str, ...]] = {"none": (), "cpu": ("train_cpu.json",)}
"""Preset name -> override files of the bundle's ``configs/`` merged into :data:`MERGED_CONFIGS`."""


class LabelAppError(RuntimeError):
    """The app cannot be prepared as asked (no sample app, weights that do not fit, an existing output)."""


def find_sample_app(monailabel_env: str | Path = MONAILABEL_ENV, name: str = "monaibundle") -> Path:
    """The sample app ``name`` of a MONAI Label installation: ``<env>/monailabel/sample-apps/<name>`` (where pip
    puts them; ``monailabel apps --download`` copies from there), or ``<env>/local/monailabel/...``.

    Raises:
        LabelAppError: naming the folders looked in.
    """
    env = Path(monailabel_env)
    candidates = [env / "monailabel" / "sample-apps" / name, env / "local" / "monailabel" / "sample-apps" / name]
    for folder in candidates:
        if (folder / "main.py").is_file():
            return folder
    raise LabelAppError(
        f"no MONAI Label sample app {name!r} in {', '.join(map(str, candidates))}: build the environment "
        "(make monailabel-env) or pass --sample_app"
    )


def check_weights(bundle_dir: str | Path) -> Path:
    """Loads ``models/model.pt`` strictly (``weights_only=True``) into the network of the bundle's own
    ``configs/inference.json``; returns the weight file.

    Raises:
        LabelAppError: missing weights, or weights that do not fit (the first lines of the mismatch).
    """
    import torch
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "models" / "model.pt"
    if not path.is_file():
        raise LabelAppError(f"{path} missing: MONAI Label could not run inference with this bundle")
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle_dir), "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network_def", instantiate=True)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise LabelAppError(
            f"{path} does not fit the inference network of {bundle_dir / 'configs' / 'inference.json'} "
            f"(wrong --preset or --override?): {' '.join(lines[:3])[:600]}"
        ) from None
    return path


def prepare_app(
    out: str | Path,
    bundle_dir: str | Path = BUNDLE,
    sample_app: str | Path | None = None,
    preset: str = "cpu",
    override_files: Sequence[str | Path] = (),
    settings: Mapping[str, Any] | None = None,
    weights_dir: str | Path | None = None,
    allow_missing_weights: bool = False,
    overwrite: bool = False,
    package_dir: str | Path = PACKAGE,
) -> Path:
    """Writes a MONAI Label app folder ``out`` holding the self-contained bundle as ``out/model/<bundle name>``.

    Args:
        out: the app folder to write.
        bundle_dir: the bundle folder. Defaults to the segmentation bundle.
        sample_app: the sample app copied; default MONAI Label's ``monaibundle`` in ``.venv-monailabel``.
        preset: a key of :data:`PRESETS`, merged first. Defaults to "cpu".
        override_files: more override files merged after the preset, in order.
        settings: ``{config id: value}`` merged last (``{"roi_size": [48, 48, 48]}``).
        weights_dir: the folder of ``model.pt`` (its ``*.pt`` are copied) or one weight file (copied as
            ``model.pt``); default the bundle's ``models/``.
        allow_missing_weights: write the app without ``model.pt`` (MONAI Label then only trains) instead of refusing.
        overwrite: replace an existing app folder ``out`` (only one holding ``main.py``), once the new one is
            complete.
        package_dir: the ``selfmedhpm`` source folder.

    Returns:
        the bundle folder inside the app.

    Raises:
        LabelAppError: unknown preset, missing sample app, existing ``out``, missing or unfit weights.
    """
    if preset not in PRESETS:
        raise LabelAppError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    bundle_dir, out = Path(bundle_dir).resolve(), Path(out)
    sample = Path(sample_app) if sample_app else find_sample_app()
    if not (sample / "main.py").is_file():
        raise LabelAppError(f"{sample} is not a MONAI Label app (no main.py)")
    if out.exists() and not (overwrite and (out / "main.py").is_file()):
        raise LabelAppError(
            f"{out} already exists; --overwrite replaces an app folder (one with main.py), weights trained in it "
            "included: pass them with --weights OUT/model/<bundle>/models to keep them"
        )
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(sample, staging, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    weights = Path(weights_dir) if weights_dir else None
    target = staging / "model" / bundle_dir.name
    if weights is not None and weights.is_file():  # one weight file, whatever its name
        assemble_bundle(bundle_dir, target, staging / "no weights", package_dir)
        shutil.copyfile(weights, target / "models" / "model.pt")
    else:
        assemble_bundle(bundle_dir, target, weights, package_dir)
    files = [bundle_dir / "configs" / name for name in PRESETS[preset]] + [Path(f) for f in override_files]
    for name, keys in apply_overrides(target, files, settings).items():
        if keys:
            logger.info("%s: left out %s (not keys of this config)", name, ", ".join(keys))
    try:
        check_weights(target)
    except LabelAppError as e:
        if not (allow_missing_weights and not (target / "models" / "model.pt").exists()):
            shutil.rmtree(staging)
            raise
        logger.warning("%s; MONAI Label will offer training only", e)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out / "model" / bundle_dir.name


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["roi_size=[48,48,48]", "a#b=x"]`` -> ``{"roi_size": [48, 48, 48], "a#b": "x"}`` (values in JSON, else
    strings).

    Examples::

        >>> parse_settings(["roi_size=[48, 48, 48]", "precision=fp32", "check_data=false"])
        {'roi_size': [48, 48, 48], 'precision': 'fp32', 'check_data': False}
    """
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabelAppError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.label_app", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the app folder to write")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the bundle folder (default: segmentation)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="merged into the configs")
    parser.add_argument("--override", type=Path, nargs="*", default=[], help="more override files, merged in order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config value (JSON)")
    parser.add_argument("--weights", type=Path, default=None, help="model.pt or its folder (default: the bundle's)")
    parser.add_argument("--sample_app", type=Path, default=None, help="default: monaibundle of .venv-monailabel")
    parser.add_argument("--allow-missing-weights", "--allow_missing_weights", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing app folder --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        bundle = prepare_app(
            args.out, args.bundle, args.sample_app, args.preset, args.override,
            {**trained_with(args.weights), **parse_settings(args.set)},
            args.weights, args.allow_missing_weights, args.overwrite,
        )  # fmt: skip
    except LabelAppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (bundle {bundle})")
    return 0


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    sys.exit(main())
