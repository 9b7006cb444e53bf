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

"""Build the bundles' data list from your own CT: ``python -m selfmedhpm_tools.datalist --src PATH --out DIR`` (or
``python -m selfmedhpm.datalist``, which forwards here).

Detects the layout of ``PATH`` (or takes ``--layout``): BTCV as distributed (``RawData/Training/img``), a Medical
Segmentation Decathlon task, an nnU-Net v2 raw data set, a plain folder of images (labels by name in ``--labels``),
or folders of DICOM series. Writes ``DIR/dataset_0.json`` with image paths relative to ``PATH``, and, when the data
names its labels (Decathlon / nnU-Net ``dataset.json``), the segmentation bundle's label-set override
``DIR/labels.json`` and its metadata override ``DIR/labels_metadata.json``. Prints every problem (the file named),
then a summary (cases labelled and unlabelled, label set, spacings) and the bundle commands to run next.

Exit status: 0 list written, no errors; 1 errors found (the list is still written when any image is usable, each
error says what was left out) or nothing usable (nothing written); 2 usage (no such folder, outputs exist).

Examples::

    python -m selfmedhpm_tools.datalist --src /data/btcv --out data/btcv_list                 # split: monai (24/6)
    python -m selfmedhpm_tools.datalist --src /data/btcv --out data/btcv_tu --split transunet  # 18/12
    python -m selfmedhpm_tools.datalist --src /data/nnUNet_raw/Dataset003_Liver --out data/liver
    python -m selfmedhpm_tools.datalist --src /data/pacs_export --out data/pacs                # DICOM series
    python -m selfmedhpm_tools.datalist --src /data/ct --labels /data/ct_labels --out data/ct  # plain folders
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from selfmedhpm_tools.datalists import LAYOUTS, SPLITS, DatalistError, Result, build_datalist

__all__ = ["build_datalist", "main", "Result", "DatalistError"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit status (0 clean, 1 errors or nothing usable, 2 usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m selfmedhpm_tools.datalist",
        description="Build dataset_0.json (and labels.json) for the bundles from a CT data set in a known layout.",
    )
    parser.add_argument("--src", required=True, help="the data folder (BTCV, Decathlon, nnU-Net, images, DICOM)")
    parser.add_argument("--out", required=True, help="where to write dataset_0.json (and labels.json)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None, help="the layout (default: detected)")
    parser.add_argument("--labels", default=None, help="folder of labels matched by name (folder and dicom layouts)")
    parser.add_argument("--split", choices=SPLITS, default=None, help="default: monai for BTCV, else random")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="validation share of the random split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument(
        "--convert",
        choices=("auto", "all", "none"),
        default="auto",
        help="DICOM series written as NIfTI under OUT/images: auto (those MONAI cannot read from their own "
        "folder), all, none",
    )
    parser.add_argument(
        "--no-label-values", dest="read_label_values", action="store_false", help="do not read label voxels"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT/dataset_0.json and labels.json")
    args = parser.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        parser.error("--val_fraction must be in [0, 1)")
    try:
        result = build_datalist(
            args.src, args.out, args.layout, args.labels, args.split, args.val_fraction, args.seed, args.convert,
            args.read_label_values, args.overwrite,
        )  # fmt: skip
    except DatalistError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for problem in result.problems:
        print(problem)
    print(result.summary)
    return 1 if result.errors or not result.written else 0


if __name__ == "__main__":
    sys.exit(main())
