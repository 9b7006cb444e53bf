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

"""``python -m selfmedhpm.datalist``: the data-list builder's command under the name users already have. The builder is
tooling (:mod:`selfmedhpm_tools.datalist`); this module only forwards to it, and no bundle config references it."""

import sys

if __name__ == "__main__":
    from selfmedhpm_tools.datalist import main

    sys.exit(main())
