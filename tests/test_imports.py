"""The project's modules import in one direction: no module reaches back to one that imports it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from chatbot.jobs import tasks
from tests.conftest import PROJECT_DIR

ENTRY_POINTS = ("config.py", "worker.py", "scheduler.py", "wsgi.py")


def project_modules() -> dict[str, Path]:
    modules = {path.stem: PROJECT_DIR / path for path in map(Path, ENTRY_POINTS)}
    for path in (PROJECT_DIR / "chatbot").rglob("*.py"):
        package = path.parent.relative_to(PROJECT_DIR).parts
        modules[".".join(package if path.stem == "__init__" else (*package, path.stem))] = path
    return modules


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            return visiting[visiting.index(module):] + [module]
        if module in done:
            return None
        visiting.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_no_import_cycle_among_the_projects_modules():
    modules = project_modules()
    graph = {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}
    # The package's __init__ is the app factory: importing any chatbot.x runs it first, but that is
    # not an import of the factory's dependencies by x.
    graph = {name: targets - {"chatbot"} for name, targets in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_jobs_without_installed_services_say_how_to_wire_them(monkeypatch):
    monkeypatch.setattr(tasks, "_services", None)
    with pytest.raises(RuntimeError, match=r"tasks\.install"):
        tasks.current_services()


@pytest.mark.parametrize("module", ["chatbot.reports", "chatbot.processor", "chatbot.channels", "chatbot.stages.base",
                                    "chatbot.stages.commands", "chatbot.stages.takeover", "chatbot.stages.access",
                                    "chatbot.stages.budget", "chatbot.stages.deadline"])
def test_reports_and_the_decisions_know_nothing_of_flask_or_rq(module):
    path = project_modules()[module]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "flask" not in imported and "flask_admin" not in imported
    assert "rq" not in imported


def test_the_admin_and_the_cli_share_checks_not_each_other():
    modules = project_modules()
    for name, path in modules.items():
        targets = imports_of(path, set(modules))
        if name.startswith("chatbot.admin"):
            assert not any(target.startswith("chatbot.cli") for target in targets), name
        if name.startswith("chatbot.cli"):
            assert not any(target.startswith("chatbot.admin") for target in targets), name
