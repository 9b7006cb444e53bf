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
layers; nothing in ``selfmedhpm`` imports the tooling, ``selfmedhpm_tools``), and every Python file starts with the
licence header."""

from __future__ import annotations

import ast
import re
import subprocess

import pytest
import selfmedhpm
from conftest import ROOT

PACKAGE = ROOT / "custom" / "selfmedhpm"


def code_map_layers(readme: str) -> dict[str, int]:
    """``{module: layer}`` from the numbered rows of the README's "Code map" table."""
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, modules in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, flags=re.M):
        for name in re.findall(r"`([a-z_]+)`", modules):
            layers[name] = int(number)
    return layers


def unit(path) -> str:
    """The runtime unit a file belongs to: its module, or its subpackage (``networks/hpm_vit.py`` -> ``networks``)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(source: str) -> set[str]:
    """First components below ``selfmedhpm`` of every import in ``source`` (module level and inside functions);
    ``selfmedhpm_tools`` stands for any import of the tooling."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + (
                [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "selfmedhpm" else []
            )
        for name in names:
            head, _, rest = name.partition(".")
            if head == "selfmedhpm_tools":
                found.add(head)
            elif head == "selfmedhpm" and rest:
                found.add(rest.split(".")[0])
    return found


LAYERS = code_map_layers((ROOT / "README.md").read_text())
FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_code_map_lists_every_runtime_module_once():
    units = {unit(p) for p in FILES}
    assert units == set(
        LAYERS
    ), f"in the package, not in the map: {units - set(LAYERS)}; the reverse: {set(LAYERS) - units}"
    assert set(LAYERS) <= selfmedhpm._SUBMODULES | {"datalists"}  # each is reachable as selfmedhpm.<name> from configs


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_runtime_module_imports_only_lower_layers(path):
    own = unit(path)
    imported = imported_units(path.read_text()) - {own}
    assert "selfmedhpm_tools" not in imported, f"{path.name} imports the tooling"
    upward = {name: LAYERS.get(name) for name in imported if LAYERS.get(name, 99) >= LAYERS[own]}
    assert not upward, f"{own} (layer {LAYERS[own]}) imports {upward}"


def test_imported_units_finds_every_import_form():
    source = (
        "import selfmedhpm.utils\nfrom selfmedhpm import losses, masking\nfrom selfmedhpm.networks.hpm_vit import x\n"
    )
    source += "def f():\n    from selfmedhpm_tools.phantom import generate_dataset\n"
    assert imported_units(source) == {"utils", "losses", "masking", "networks", "selfmedhpm_tools"}


def test_every_python_file_starts_with_the_licence_header():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert len(listed) > 60
    first = "# Copyright (c) 2026 SelfMedHPM bundles contributors\n# Licensed under the Apache License, Version 2.0"
    missing = [name for name in listed if not (ROOT / name).read_text().startswith(first)]
    assert not missing, f"without the licence header: {missing}"
