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

"""Tooling around the SelfMedHPM runtime package: the demo, the label-scarce study, benchmarks, release zips,
repository verification, the MONAI Label app builder and the synthetic CT generator.

These modules work from a checkout of the repository (they find ``bundles/`` beside ``custom/``); they import
:mod:`selfmedhpm` and are never imported by it, and the bundles' release zips do not carry them.

- :mod:`selfmedhpm_tools.phantom`: synthetic abdominal CT with 13 labelled organs
  (``python -m selfmedhpm_tools.phantom``).
- :mod:`selfmedhpm_tools.datalist`, :mod:`selfmedhpm_tools.datalists`, :mod:`selfmedhpm_tools.label_metadata`:
  data lists from the layouts users have (``python -m selfmedhpm_tools.datalist``, also reachable as
  ``python -m selfmedhpm.datalist``); a label set written into the segmentation bundle's metadata.
- :mod:`selfmedhpm_tools.demo`, :mod:`selfmedhpm_tools.reports`, :mod:`selfmedhpm_tools.metrics`: the main job
  (``make demo``), its figures and tables, the teacher's ranking measures.
- :mod:`selfmedhpm_tools.study`, :mod:`selfmedhpm_tools.stats`: what HPM buys with few labels (``make study``) and
  its paired statistics.
- :mod:`selfmedhpm_tools.benchmarks`: speed and memory targets (``make bench``).
- :mod:`selfmedhpm_tools.release`, :mod:`selfmedhpm_tools.verify`, :mod:`selfmedhpm_tools.label_app`: release zips
  and the bundle index, repository checks (``make verify``), MONAI Label app folders.
"""
