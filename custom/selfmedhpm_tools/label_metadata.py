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

"""The segmentation bundle's label set in its metadata: ``channel_def`` of a label set, and the command that writes a
``metadata.json`` whose ``network_data_format.outputs.pred`` names the classes of a config (MONAI Label reads them).

Usage::

    python -m selfmedhpm_tools.label_metadata --config configs/whole_body_example.json \\
        --metadata configs/metadata.json --out configs/metadata.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from selfmedhpm.labels import LabelSetError, check_label_set

__all__ = ["channel_def", "metadata_with_labels", "write_metadata", "main"]


def channel_def(class_names: Sequence[str]) -> dict[str, str]:
    """``channel_def`` of the bundle's ``pred`` output: ``{"0": "background", "1": ...}``.

    Examples::

        >>> from selfmedhpm.labels import BTCV_CLASSES
        >>> channel_def(BTCV_CLASSES)["1"], len(channel_def(BTCV_CLASSES))
        ('spleen', 14)
    """
    return {str(i): name for i, name in enumerate(check_label_set(class_names))}


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
    parser = argparse.ArgumentParser(
        prog="python -m selfmedhpm_tools.label_metadata", description=__doc__.split("\n")[0]
    )
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
