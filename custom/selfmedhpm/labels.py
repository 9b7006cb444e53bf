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

"""Label sets of the segmentation bundle: BTCV's 14 classes, TransUNet's 8-organ subset, and ``channel_def`` helpers.

A label set is a list of class names whose index is the label value, background first. The segmentation bundle
takes it from its top-level ``class_names`` key (``num_classes`` is its length), so another label set (e.g. a
whole-body one) is a short config override; :func:`write_metadata` puts the same names into ``metadata.json``
(``network_data_format.outputs.pred``), where MONAI Label reads them.

Usage::

    python -m selfmedhpm.labels --config configs/whole_body_example.json --metadata configs/metadata.json \\
        --out configs/metadata.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "BTCV_CLASSES",
    "TRANSUNET_8_ORGANS",
    "LabelSetError",
    "check_label_set",
    "channel_def",
    "organ_names",
    "subset_indices",
    "metadata_with_labels",
    "write_metadata",
]

BTCV_CLASSES: tuple[str, ...] = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
)  # fmt: skip
"""BTCV's labels: index = label value (0 background, 1 spleen, ..., 13 left adrenal gland)."""

TRANSUNET_8_ORGANS: dict[int, str] = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 6: "liver", 7: "stomach", 8: "aorta",
    11: "pancreas",
}  # fmt: skip
"""The 8 BTCV organs averaged by TransUNet's protocol (Chen et al., 2021), by BTCV label value."""


class LabelSetError(ValueError):
    """A label set that the bundle cannot use; the message says what is wrong."""


def check_label_set(class_names: Sequence[str], num_classes: int | None = None) -> list[str]:
    """Checks a label set: at least two classes, background first, unique non-empty names, and ``num_classes``
    (when given) equal to the number of names. Returns the names as a list.

    Args:
        class_names: class names by label value, background first.
        num_classes: the bundle's ``num_classes``, checked against ``len(class_names)``.

    Examples::

        >>> check_label_set(["background", "liver"], 2)
        ['background', 'liver']
        >>> try:
        ...     check_label_set(["background", "liver"], 3)
        ... except LabelSetError as e:
        ...     print(str(e).split(";")[0])
        num_classes is 3 but class_names has 2 names (background, liver)
    """
    names = [str(n) for n in class_names]
    if num_classes is not None and int(num_classes) != len(names):
        raise LabelSetError(
            f"num_classes is {num_classes} but class_names has {len(names)} names ({', '.join(names)}); "
            "set both keys together (one name per label value, background first)."
        )
    if len(names) < 2:
        raise LabelSetError(f"class_names needs background and at least one class, got {names}.")
    if names[0].lower() != "background":
        raise LabelSetError(f"class_names[0] must be 'background' (label value 0), got {names[0]!r}.")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated or any(not n.strip() for n in names):
        raise LabelSetError(f"class names must be unique and non-empty; duplicated: {duplicated}, names: {names}.")
    return names


def channel_def(class_names: Sequence[str]) -> dict[str, str]:
    """``channel_def`` of the bundle's ``pred`` output: ``{"0": "background", "1": ...}``.

    Examples::

        >>> channel_def(BTCV_CLASSES)["1"], len(channel_def(BTCV_CLASSES))
        ('spleen', 14)
    """
    return {str(i): name for i, name in enumerate(check_label_set(class_names))}


def organ_names(class_names: Sequence[str]) -> list[str]:
    """The foreground class names (label values 1..N-1), in label order: the columns of the evaluation reports.

    Examples::

        >>> organ_names(BTCV_CLASSES)[:2], len(organ_names(BTCV_CLASSES))
        (['spleen', 'right kidney'], 13)
    """
    return check_label_set(class_names)[1:]


def subset_indices(class_names: Sequence[str], subset: Sequence[str] | Mapping[int, str]) -> list[int] | None:
    """Positions in :func:`organ_names` (0-based, background excluded) of the organs of ``subset``, or None when one
    of them is not in the label set (the subset's mean is then not defined for this label set).

    Examples::

        >>> subset_indices(BTCV_CLASSES, TRANSUNET_8_ORGANS)
        [0, 1, 2, 3, 5, 6, 7, 10]
        >>> subset_indices(["background", "liver"], TRANSUNET_8_ORGANS) is None
        True
    """
    organs = organ_names(class_names)
    wanted = list(subset.values()) if isinstance(subset, Mapping) else list(subset)
    if any(name not in organs for name in wanted):
        return None
    return [organs.index(name) for name in wanted]


def metadata_with_labels(metadata: Mapping, class_names: Sequence[str], output_key: str = "pred") -> dict:
    """A copy of a bundle's metadata whose ``network_data_format.outputs[output_key]`` has ``num_channels`` and
    ``channel_def`` of ``class_names``.

    Examples::

        >>> meta = {"network_data_format": {"outputs": {"pred": {"num_channels": 14}}}}
        >>> metadata_with_labels(meta, ["background", "liver"])["network_data_format"]["outputs"]["pred"]
        {'num_channels': 2, 'channel_def': {'0': 'background', '1': 'liver'}}
    """
    meta = json.loads(json.dumps(metadata))
    pred = meta.setdefault("network_data_format", {}).setdefault("outputs", {}).setdefault(output_key, {})
    pred["num_channels"] = len(check_label_set(class_names))
    pred["channel_def"] = channel_def(class_names)
    return meta


def write_metadata(metadata_file: str | Path, class_names: Sequence[str], out_file: str | Path) -> Path:
    """Writes ``metadata_file`` with the label set ``class_names`` (see :func:`metadata_with_labels`) to
    ``out_file``, pretty-printed with a 4-space indent."""
    meta = metadata_with_labels(json.loads(Path(metadata_file).read_text()), class_names)
    out = Path(out_file)
    out.write_text(json.dumps(meta, indent=4) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a metadata.json whose ``pred.channel_def`` has the ``class_names`` of a config."""
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm.labels", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a config (override) with a top-level class_names list")
    parser.add_argument("--metadata", required=True, help="the bundle's metadata.json")
    parser.add_argument("--out", required=True, help="where to write the updated metadata")
    args = parser.parse_args(argv)
    names = json.loads(Path(args.config).read_text()).get("class_names")
    if not isinstance(names, list):
        print(f"error: {args.config} has no top-level class_names list", file=sys.stderr)
        return 2
    try:
        print(f"wrote {write_metadata(args.metadata, names, args.out)} ({len(names)} classes)")
    except LabelSetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
