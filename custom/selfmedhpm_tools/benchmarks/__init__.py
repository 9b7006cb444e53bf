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

Entry point: ``python -m selfmedhpm_tools.benchmarks.run [--quick]``. One module per section:

* :mod:`~selfmedhpm_tools.benchmarks.step`: HPM vs MONAI MAE pretraining iteration (time, FLOPs, MFU), the teacher
  pass per precision and its effect on the hard-patch mask, iteration time vs crop size; the host-side cost of one
  step, eager and compiled (section ``host``).
* :mod:`~selfmedhpm_tools.benchmarks.batches`: on a GPU, the paper-scale step at batches 2 to 64, the pretraining
  bundle end to end, the segmentation iteration eager and compiled.
* :mod:`~selfmedhpm_tools.benchmarks.loader`: crops per second of the pretraining loader vs the training step.
* :mod:`~selfmedhpm_tools.benchmarks.inference`: the inference bundle end to end vs a bare sliding window, peak
  memory, time vs volume size.
* :mod:`~selfmedhpm_tools.benchmarks.precision`: fp32 vs reduced precision on the CPU, both bundles.

Every figure, its unit and its target are declared once, in :mod:`~selfmedhpm_tools.benchmarks.targets`;
:mod:`~selfmedhpm_tools.benchmarks.report` fills the template ``benchmarks.md.in`` into ``docs/benchmarks.md``.
"""
