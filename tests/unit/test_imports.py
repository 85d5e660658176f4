"""No import cycles: every module of receiver/ and handlers/ can be imported first, in a
fresh interpreter, and all of them in any order; and importing ``receiver`` (the rule
authors' API) loads no app, database or provider code."""

from __future__ import annotations

import ast
import json
import pkgutil
import random
import subprocess
import sys
from pathlib import Path

import handlers
import receiver

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("receiver", "handlers")
# Run by alembic, which gives it its context; not importable on its own.
SCRIPTS = {"receiver.store.migrations.env"}


def project_modules() -> list[str]:
    names = list(PACKAGES)
    for package in (receiver, handlers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(set(names) - SCRIPTS)


def module_path(name: str) -> Path:
    base = ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def top_level_imports(name: str, known: set[str]) -> set[str]:
    """The project modules ``name`` imports when it is imported: statements at module level,
    not under ``if TYPE_CHECKING:`` nor inside functions."""
    tree = ast.parse(module_path(name).read_text())
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    visit(tree.body)
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_import_graph_has_no_cycles() -> None:
    names = project_modules()
    known = set(names)
    graph = {name: top_level_imports(name, known) for name in names}
    assert cycles(graph) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


SCRIPT = """
import importlib, json, sys
names = json.loads(sys.argv[1])
failed = {}
for name in names:  # each one first: what a fresh interpreter would do
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("receiver", "handlers")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
for loaded in [m for m in sys.modules if m.split(".")[0] in ("receiver", "handlers")]:
    del sys.modules[loaded]
for name in names:  # and all of them, one after the other
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed["all: " + name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def test_every_module_imports_first_and_in_a_random_order() -> None:
    names = project_modules()
    seed = random.randrange(1 << 32)
    random.Random(seed).shuffle(names)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}, f"order seed {seed}"


HEAVY = (
    "receiver.app",
    "receiver.context",
    "receiver.intake",
    "receiver.outbox",
    "receiver.providers",
    "receiver.store",
    "handlers",
    "starlette",
    "uvicorn",
    "httpx",
    "sqlalchemy",
    "psycopg",
    "pydantic_settings",
)


def test_importing_the_rule_api_loads_no_app() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, receiver; print(json.dumps(sorted(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(done.stdout)
    assert {"receiver.pipeline.rules", "receiver.model", "receiver.events"} <= set(loaded)
    assert [name for name in loaded if name.startswith(HEAVY)] == []
