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

"""Data lists from the layouts users already have: BTCV as distributed, Medical Segmentation Decathlon tasks,
nnU-Net v2 raw data sets, plain folders of images (with a parallel folder of labels) and folders of DICOM series.

- :mod:`selfmedhpm_tools.datalists.layouts`: recognising each layout and finding its images and labels;
- :mod:`selfmedhpm_tools.datalists.dicom`: DICOM series, grouped by ``SeriesInstanceUID``, their geometry, NIfTI export;
- :mod:`selfmedhpm_tools.datalists.splits`: BTCV's named splits (``monai`` 24/6, ``transunet`` 18/12) and a seeded one;
- :mod:`selfmedhpm_tools.datalists.core`: cases, matching by name, header and label checks;
- :mod:`selfmedhpm_tools.datalists.build`: writing ``dataset_0.json`` and ``labels.json`` and the summary.

The command line is ``python -m selfmedhpm_tools.datalist --src PATH --out DIR`` (:mod:`selfmedhpm_tools.datalist`).
"""

from selfmedhpm_tools.datalists.build import DatalistError, Result, build_datalist
from selfmedhpm_tools.datalists.layouts import LAYOUTS, UNLABELED, detect_layout
from selfmedhpm_tools.datalists.splits import NAMED_SPLITS, SPLITS

__all__ = ["build_datalist", "detect_layout", "DatalistError", "Result", "LAYOUTS", "UNLABELED", "NAMED_SPLITS",
           "SPLITS"]  # fmt: skip
