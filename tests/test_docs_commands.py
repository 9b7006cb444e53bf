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

"""Every shell command the documentation shows works as written: the commands of the README, of ``docs/*.md`` and of
the bundle READMEs (fenced code blocks and the cells of tables) are read, and each one's executable, ``python -m``
module, config files and ``--flags`` must exist (flags against the configs' keys, or against the module's own
``--help``, which runs), Makefile targets and variables must be the Makefile's, and no command names a version that
the next release would make wrong."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT
from selfmedhpm.bundle import UnknownConfigKeyError, _as_files, check_overrides

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("bundles/*/docs/README.md"))]
EXECUTABLES = {"python", "torchrun", "make", "mlflow", "source", "cd", "curl", "git"}
VENVS = (".venv/bin/python", ".venv-monailabel/bin/python")
BUNDLES = {p.name for p in (ROOT / "bundles").iterdir() if p.is_dir()}


@dataclass
class Command:
    doc: Path
    line: int
    text: str  # as written (continuations joined, comment removed)
    argv: list[str]  # variables of the document expanded, split as a shell does
    cwd_bundle: str | None = None  # a `cd` into a copy of a bundle earlier on the same line

    def __str__(self) -> str:
        doc = self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc
        return f"{doc}:{self.line}: {self.text}"


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` after a space, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


def _commands_of_line(doc: Path, number: int, text: str, variables: dict[str, str]) -> list[Command]:
    found = []
    for part in re.split(r"\s*&&\s*", text):
        assignment = re.fullmatch(r"([A-Za-z_]\w*)=(\S+)", part.strip())
        if assignment:
            variables[assignment.group(1)] = _expand(assignment.group(2), variables)
            continue
        try:
            argv = shlex.split(_expand(part, variables))
        except ValueError:
            argv = part.split()
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # SELFMEDHPM_DEBUG=1 python ...
            argv = argv[1:]
        if argv and (argv[0] in EXECUTABLES or argv[0] in VENVS or "/bin/" in argv[0]):
            found.append(Command(doc, number, part.strip(), argv))
    for before, after in zip(found, found[1:]):  # cd bundles_dl/<name> && python -m monai.bundle run ... configs/x
        if before.argv[0] == "cd" and len(before.argv) > 1:
            after.cwd_bundle = next((n for n in BUNDLES if before.argv[1].rstrip("/").endswith(n)), None)
    return [c for c in found if c.argv[0] != "cd"]


def doc_commands(doc: Path) -> list[Command]:
    """The shell commands of a Markdown file: the lines of its fenced code blocks (continuations joined) and the
    code spans of its table cells that start with an executable; ``NAME=value`` lines of its blocks are variables."""
    variables: dict[str, str] = {}
    commands: list[Command] = []
    fenced, pending, start = False, "", 0
    for number, raw in enumerate(doc.read_text().splitlines(), start=1):
        if raw.strip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if fenced:
            line = _strip_comment(raw) if not pending else raw.rstrip()
            if not pending:
                start = number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            text, pending = (pending + _strip_comment(line.strip())).strip(), ""
            if text:
                commands += _commands_of_line(doc, start, text, variables)
        elif raw.startswith("|"):
            for span in re.findall(r"`([^`]+)`", raw):
                words = span.split()
                if words and (words[0] in EXECUTABLES or words[0] in VENVS) and len(words) > 1:
                    commands += _commands_of_line(doc, number, span, variables)
    return commands


COMMANDS = [command for doc in DOCS for command in doc_commands(doc)]


def _option_pairs(args: list[str]) -> dict[str, str | None]:
    """``--key value`` pairs (and lone ``--flag``s) of an argument list."""
    pairs: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else None
            pairs[key] = value if sep else (nxt if nxt is not None and not nxt.startswith("--") else None)
    return pairs


def _ours(path: str) -> bool:
    """A path these docs promise exists: the bundles' configs, the docs' files (not data you bring, not outputs)."""
    return "$" not in path and path.startswith(("bundles/", "docs/")) and "/models/" not in path


def _module_of(argv: list[str]) -> tuple[str | None, list[str]]:
    if argv[0] in ("python", *VENVS) or argv[0] == "torchrun":
        if "-m" in argv:
            i = argv.index("-m")
            return argv[i + 1], argv[i + 2 :]
    return None, []


def _config_files(values: str | None, command: Command) -> list[Path]:
    files = []
    for name in _as_files(values) if values else []:
        if command.cwd_bundle and name.startswith("configs/"):
            name = f"bundles/{command.cwd_bundle}/{name}"
        files.append(Path(name))
    return files


def check_bundle_command(command: Command, args: list[str]) -> list[str]:
    """Problems of a ``python -m monai.bundle SUBCOMMAND ...``: the subcommand, the files it names, the overrides."""
    from monai.bundle import scripts

    problems = []
    sub, rest = (args[0], args[1:]) if args else ("", [])
    if not hasattr(scripts, sub):
        return [f"monai.bundle has no subcommand {sub!r}"]
    options = _option_pairs(rest)
    named = [(k, f) for k in ("meta_file", "config_file") for f in _config_files(options.get(k), command)]
    named += [(k, Path(options[k])) for k in ("filepath", "tracking") if str(options.get(k)).endswith(".json")]
    for key, path in named:
        if (_ours(str(path)) or command.cwd_bundle) and not (ROOT / path).is_file():
            problems.append(f"--{key}: {path} does not exist")
    if sub == "run" and options.get("config_file"):
        files = [ROOT / p for p in _config_files(options["config_file"], command) if (ROOT / p).is_file()]
        overrides = {k: v for k, v in options.items() if k not in ("config_file", "meta_file")}
        if "tracking" in overrides and str(overrides["tracking"]).endswith(".json"):
            overrides["tracking"] = str(ROOT / overrides["tracking"])
        try:
            check_overrides([str(f) for f in files], overrides)
        except UnknownConfigKeyError as error:
            problems.append(str(error))
    return problems


@pytest.fixture(scope="module")
def help_texts(python_env) -> dict[str, str]:
    """``--help`` of every ``python -m`` tool the docs run (and of its subcommands), run in one interpreter."""
    wanted = set()
    for command in COMMANDS:
        module, args = _module_of(command.argv)
        if module and module.startswith("selfmedhpm"):
            wanted.add((module, args[0] if args and re.fullmatch(r"[a-z_]+", args[0]) else ""))
    script = (
        "import contextlib, io, json, runpy, sys\n"
        "found = {}\n"
        f"for module, sub in {sorted(wanted)!r}:\n"
        "    for argv in ([module, '--help'], [module, sub, '--help']) if sub else ([module, '--help'],):\n"
        "        out = io.StringIO()\n"
        "        sys.argv = argv\n"
        "        try:\n"
        "            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
        "                runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "        found[' '.join(argv[:-1])] = out.getvalue()\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=python_env, cwd=ROOT,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_docs_show_commands():
    docs = {c.doc.name if c.doc.name != "README.md" else str(c.doc.relative_to(ROOT)) for c in COMMANDS}
    assert "README.md" in docs and "mlflow.md" in docs and "bundles/selfmedhpm_ct_segmentation/docs/README.md" in docs
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_names_what_exists(command: Command, help_texts):
    argv = command.argv
    problems = []
    assert not argv[0].endswith("/bin/monailabel"), (
        f"{command}: .venv-monailabel/bin/monailabel runs the first `python` on PATH; write "
        "`.venv-monailabel/bin/python -m monailabel.main ...`"
    )
    assert not re.search(r"_v\d+\.\d+\.\d+", command.text), f"{command}: a version in a command; use a glob (_v*)"
    module, args = _module_of(argv)
    if argv[0] in ("python", ".venv/bin/python", "torchrun"):
        assert module, f"{command}: expected `python -m MODULE`"
        if module == "monai.bundle":
            problems += check_bundle_command(command, args)
        elif module.startswith("selfmedhpm"):
            sub = args[0] if args and re.fullmatch(r"[a-z_]+", args[0]) else ""
            text = help_texts.get(f"{module} {sub}".strip()) or help_texts.get(module, "")
            assert "usage:" in text, f"{command}: `python -m {module} --help` printed no usage:\n{text[-2000:]}"
            for flag in _option_pairs(args):
                if f"--{flag}" not in text:
                    problems.append(f"--{flag} is not an option of python -m {module} {sub}".rstrip())
        else:
            import importlib.util

            assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"
        if argv[0] == "torchrun":
            from torch.distributed.run import get_args_parser

            known = {a for action in get_args_parser()._actions for a in action.option_strings}
            for arg in argv[1 : argv.index("-m")]:
                assert arg.split("=")[0] in known, f"{command}: torchrun has no option {arg}"
    elif argv[0] == ".venv-monailabel/bin/python":
        assert module == "monailabel.main" and args[:1] == ["start_server"], f"{command}: expected monailabel.main"
        sources = list((ROOT / ".venv-monailabel").glob("lib/python*/site-packages/monailabel/main.py"))
        if (ROOT / ".venv-monailabel").is_dir():
            assert sources, f"{command}: no monailabel.main in .venv-monailabel"
    elif argv[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
        variables = set(re.findall(r"^([A-Z_]+) \?=", makefile, flags=re.M))
        for arg in argv[1:]:
            name, sep, value = arg.partition("=")
            if sep:
                assert name in variables, f"{command}: the Makefile has no variable {name}"
                if name == "STUDY_ARGS":
                    text = help_texts.get("selfmedhpm_tools.study", "")
                    problems += [f"STUDY_ARGS: --{f} is not a study option" for f in _option_pairs(shlex.split(value))
                                 if text and f"--{f}" not in text]  # fmt: skip
            else:
                assert name in targets, f"{command}: the Makefile has no target {name}"
    elif argv[0] == "source":
        assert argv[1] in (".venv/bin/activate", ".venv-monailabel/bin/activate"), f"{command}: activates what?"
    elif argv[0] == "mlflow":
        import click
        from mlflow.cli import cli

        found = cli.get_command(click.Context(cli), argv[1])  # `ui` is an alias of `server`
        assert found is not None, f"{command}: mlflow has no command {argv[1]}"
        known = {o for p in found.params for o in p.opts}
        for flag in _option_pairs(argv[2:]):
            assert f"--{flag}" in known, f"{command}: mlflow {argv[1]} has no option --{flag}"
    assert not problems, f"{command}:\n  " + "\n  ".join(problems)


def test_the_readme_says_to_activate_the_environment_before_the_first_python_command():
    readme = [c for c in COMMANDS if c.doc == ROOT / "README.md"]
    first_python = next(i for i, c in enumerate(readme) if c.argv[0] == "python")
    assert any(c.argv[:2] == ["source", ".venv/bin/activate"] for c in readme[:first_python]), readme[first_python]


def test_commands_are_read_from_blocks_tables_and_continued_lines(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "Text `python -m not.a.command` in prose is not read.\n```\nS=bundles/s/configs\n"
        "python -m monai.bundle run --config_file \"['$S/train.json','$S/evaluate.json']\" \\\n"
        "    --dataset_dir DIR   # a comment\n"
        "cd bundles_dl/selfmedhpm_ct_segmentation && python -m monai.bundle run --config_file configs/inference.json\n"
        "```\n| workflow | command |\n| --- | --- |\n| check | `python -m selfmedhpm.check_data --dataset_dir DIR` |\n"
    )
    commands = doc_commands(doc)
    assert [c.argv[:3] for c in commands] == [["python", "-m", "monai.bundle"]] * 2 + [
        ["python", "-m", "selfmedhpm.check_data"]
    ]
    assert commands[0].argv[-3:] == ["['bundles/s/configs/train.json','bundles/s/configs/evaluate.json']",
                                     "--dataset_dir", "DIR"]  # fmt: skip
    assert commands[1].cwd_bundle == "selfmedhpm_ct_segmentation" and commands[2].line == 10


def test_a_wrong_key_file_or_flag_is_caught(tmp_path, help_texts):
    doc = tmp_path / "wrong.md"
    doc.write_text(
        "```\nS=bundles/selfmedhpm_ct_segmentation/configs\n"
        "python -m monai.bundle run --config_file \"['$S/train.json','$S/train_cpu.json']\" --epoch 5\n"
        "python -m monai.bundle run --config_file $S/no_such.json --dataset_dir DIR\n"
        "python -m monai.bundle run --config_file $S/inference.json --load_path x.pt\n"
        "python -m selfmedhpm_tools.phantom --out x --no_such_flag 1\n"
        "```\n"
    )
    commands = doc_commands(doc)
    assert "did you mean 'epochs'" in check_bundle_command(commands[0], commands[0].argv[3:])[0]
    assert check_bundle_command(commands[1], commands[1].argv[3:]) == [
        f"--config_file: {commands[1].argv[5]} does not exist"
    ]
    assert "did you mean 'model_file'" in check_bundle_command(commands[2], commands[2].argv[3:])[0]
    with pytest.raises(AssertionError, match="--no_such_flag is not an option"):
        test_command_names_what_exists(commands[3], help_texts)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_links_point_at_files_and_headings_that_exist(doc: Path):
    """Relative links of the docs (``[text](path#anchor)``) reach a file, and a heading of it when they name one."""

    def anchors(path: Path) -> set[str]:
        headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}

    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"
