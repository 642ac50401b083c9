"""The house: no import circles, no file over 500 lines, the CLI's options as they were, and
`meshtalk --help` without the heavy libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import typer

from meshtalk.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"meshtalk.cli": "meshtalk_cli", "meshtalk.models": "models",
            "meshtalk.pipelines": "pipelines"}  # fmt: skip
MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]  # fmt: skip
            found[".".join([prefix, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it, lazily too)."""
    found = modules()

    def owner(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in found.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}".rstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in found else owner(base))
        graph[module] = {t for t in targets if t and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 50 and graph["meshtalk.cli.main"]  # the walk found the house
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_file_is_over_500_lines():
    folders = ("meshtalk_cli", "models", "pipelines", "benchmarks")
    long = {
        str(path.relative_to(ROOT)): count
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def option_table() -> dict[str, list[dict]]:
    """Every command's options: name, flags, default, required."""

    def walk(group, prefix=()):
        table = {}
        for name, command in sorted(group.commands.items()):
            if hasattr(command, "commands"):
                table.update(walk(command, (*prefix, name)))
                continue
            rows = []
            for param in command.params:
                default = param.default
                try:
                    json.dumps(default)
                except TypeError:
                    default = repr(default)
                rows.append({"name": param.name, "opts": sorted(param.opts + param.secondary_opts),
                             "default": default, "required": param.required})  # fmt: skip
            table[" ".join((*prefix, name))] = rows
        return table

    return walk(typer.main.get_command(app))


def test_every_commands_options_are_as_before_the_cli_was_split():
    before = json.loads((ROOT / "tests" / "fixtures" / "cli_options.json").read_text())
    now = option_table()
    assert sorted(now) == sorted(before)
    for command in before:
        assert now[command] == before[command], command


def test_help_needs_neither_torch_nor_open3d():
    code = (
        "import sys; from typer.testing import CliRunner; from meshtalk.cli.main import app; "
        "result = CliRunner().invoke(app, ['animate', '--help']); assert result.exit_code == 0; "
        "print(sorted(m for m in ('torch', 'open3d', 'trimesh') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_prep_workers_import_no_torch():
    """prep's mesh workers are spawned processes that import the module of their function: torch
    there would cost each worker about 500 MB (benchmarks/prep.py: 1,941 MiB for two workers
    with it, 907 without)."""
    code = (
        "import sys; import meshtalk.pipelines.data.prep.segments; "
        "print(sorted(m for m in ('torch', 'torchaudio', 'open3d') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
