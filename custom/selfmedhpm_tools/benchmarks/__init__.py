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

"""Performance benchmarks of the SelfMedHPM bundles (``make bench`` / ``make bench-quick``), not part of ``make test``.

Entry point: ``python -m selfmedhpm_tools.benchmarks.run [--quick]``. One module per figure:

* :mod:`selfmedhpm_tools.benchmarks.step`: HPM vs MONAI MAE pretraining iteration (time, FLOPs, MFU), teacher
  precision and its effect on the hard-patch mask, iteration time vs crop size.
* :mod:`selfmedhpm_tools.benchmarks.host`: the host-side cost of one HPM step (aten operators dispatched, step time at
  a tiny width), eager and compiled.
* :mod:`selfmedhpm_tools.benchmarks.batches`: on a GPU, the paper-scale step at batches 8, 32 and 64 (MFU, crops/s,
  peak memory), eager and compiled, HPM beside MAE through the same trainer and MONAI's MAE; the pretraining bundle
  end to end against the step; the segmentation iteration eager and compiled; rows saved as they are measured.
* :mod:`selfmedhpm_tools.benchmarks.loader`: crops per second of the pretraining bundle's data loader vs the training
  step.
* :mod:`selfmedhpm_tools.benchmarks.inference`: the segmentation inference bundle end to end vs a bare sliding window,
  peak memory, time vs volume size.
* :mod:`selfmedhpm_tools.benchmarks.precision`: fp32 vs bf16 autocast on CPU: speed and loss curves of both bundles.

Every figure, its unit and its target are declared once in :mod:`selfmedhpm_tools.benchmarks.targets`;
:mod:`selfmedhpm_tools.benchmarks.report` fills ``benchmarks.md.in`` (with :mod:`selfmedhpm_tools.benchmarks.notes`)
into ``docs/benchmarks.md`` and writes ``docs/benchmarks.json``.
"""
