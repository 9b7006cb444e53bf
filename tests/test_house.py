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

"""House rules: the README's code map is the law of the runtime package (each module imports only modules of lower
layers; nothing in ``selfmedhpm`` imports the tooling, ``selfmedhpm_tools``, but the forwarders of the map's
``command`` row, which import only the tooling), and every Python file starts with the licence header."""

from __future__ import annotations

import re
import subprocess

import pytest
import selfmedhpm
from helpers import ROOT
from selfmedhpm_tools.release import imported_modules

PACKAGE = ROOT / "custom" / "selfmedhpm"


def code_map_rows(readme: str) -> dict[str, str]:
    """``{module: row}`` from the README's "Code map" table: the layer number, or ``command`` for the forwarders."""
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for row, modules in re.findall(r"^\| (\d+|command) \| ([^|]+) \|", section, flags=re.M):
        for name in re.findall(r"`([a-z_]+)`", modules):
            rows[name] = row
    return rows


def unit(path) -> str:
    """The runtime unit a file belongs to: its module, or its subpackage (``networks/hpm_vit.py`` -> ``networks``)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(source: str, module: str = "") -> set[str]:
    """First components below ``selfmedhpm`` of every import in ``source`` (module level and inside functions);
    ``selfmedhpm_tools`` stands for any import of the tooling."""
    found = set()
    for name in imported_modules(source, module):
        head, _, rest = name.partition(".")
        if head == "selfmedhpm_tools":
            found.add(head)
        elif head == "selfmedhpm" and rest:
            found.add(rest.split(".")[0])
    return found


ROWS = code_map_rows((ROOT / "README.md").read_text())
LAYERS = {name: int(row) for name, row in ROWS.items() if row.isdigit()}
FORWARDERS = {name for name, row in ROWS.items() if row == "command"}
FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def module_name(path) -> str:
    return ".".join(("selfmedhpm",) + path.relative_to(PACKAGE).with_suffix("").parts)


def test_code_map_lists_every_runtime_module_once():
    units = {unit(p) for p in FILES}
    assert units == set(ROWS), f"in the package, not in the map: {units - set(ROWS)}; the reverse: {set(ROWS) - units}"
    assert set(LAYERS) <= selfmedhpm._SUBMODULES  # each is reachable as selfmedhpm.<name> from configs


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_runtime_module_imports_only_lower_layers(path):
    own = unit(path)
    imported = imported_units(path.read_text(), module_name(path)) - {own}
    if own in FORWARDERS:
        assert imported == {"selfmedhpm_tools"}, f"{path.name} forwards to the tooling and imports nothing else"
        assert len(path.read_text().splitlines()) < 25, f"{path.name} is a forwarder: a few lines"
        return
    assert "selfmedhpm_tools" not in imported, f"{path.name} imports the tooling"
    upward = {name: ROWS.get(name) for name in imported if LAYERS.get(name, 99) >= LAYERS[own]}
    assert not upward, f"{own} (layer {LAYERS[own]}) imports {upward}"


def test_imported_units_finds_every_import_form():
    source = (
        "import selfmedhpm.utils\nfrom selfmedhpm import losses, masking\nfrom selfmedhpm.networks.hpm_vit import x\n"
    )
    source += "def f():\n    from selfmedhpm_tools.phantom import generate_dataset\n    return selfmedhpm.views\n"
    source += "from . import patches\n"
    found = imported_units(source, "selfmedhpm.ema")
    assert found == {"utils", "losses", "masking", "networks", "selfmedhpm_tools", "views", "patches"}


def test_every_python_file_starts_with_the_licence_header():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert len(listed) > 60
    first = "# Copyright (c) 2026 SelfMedHPM bundles contributors\n# Licensed under the Apache License, Version 2.0"
    missing = [name for name in listed if not (ROOT / name).read_text().startswith(first)]
    assert not missing, f"without the licence header: {missing}"
