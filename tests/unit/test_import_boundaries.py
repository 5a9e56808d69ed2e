"""The house rules on imports, checked in fresh interpreters and by reading the sources."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "trl", "deepspeed", "gradio", "transformers", "peft", "datasets")
LIGHT_MODULES = ["rlhf", "rlhf.schema", "rlhf.config", "rlhf.errors", "rlhf.runtime", "rlhf.prompts", "rlhf.jsonl",
                 "rlhf.cli", "rlhf.commands", "rlhf.pipeline", "rlhf.report", "rlhf.rules",
                 "rlhf.gate", "rlhf.bias", "rlhf.guards", "reward", "feedback_app"]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_imports_nothing_heavy(module):
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"import {module} pulled in: {out.stdout.strip()}"


def test_building_the_whole_cli_imports_nothing_heavy():
    code = (
        "import sys\nfrom rlhf.cli import build_parser\nbuild_parser()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def _imported_modules(package: str) -> dict[str, set[str]]:
    """Absolute module names each file of ``package`` imports (module-level or inside functions)."""
    found = {}
    for path in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    """Top-level packages each file of ``package`` imports (module-level or inside functions)."""
    return {path: {n.split(".")[0] for n in names} for path, names in _imported_modules(package).items()}


def test_core_never_imports_the_stages():
    """Only the CLI registers the stages; everything else in the core, the loop (rlhf/pipeline.py)
    included, reaches them through `rlhf` commands and files."""
    for path, names in _imported_top_levels("rlhf").items():
        if path == "rlhf/cli.py":
            continue
        assert not names & {"reward", "feedback_app"}, f"{path} imports {names & {'reward', 'feedback_app'}}"


def test_the_cli_imports_only_the_stages_registration_modules():
    stages = {n for n in _imported_modules("rlhf")["rlhf/cli.py"] if n.split(".")[0] in ("reward", "feedback_app")}
    assert stages == {"reward.cli", "feedback_app.cli"}


def test_reward_and_feedback_app_never_import_each_other():
    for path, names in _imported_top_levels("reward").items():
        assert "feedback_app" not in names, path
    for path, names in _imported_top_levels("feedback_app").items():
        assert "reward" not in names, path


def _module_imports(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of ``package`` it imports, at module level or inside a
    function (a lazy import still makes a cycle: the two modules cannot be understood apart)."""
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from this module's package
                    parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join(parts + ([base] if base else []))
                # `from pkg import module` names the module; `from module import name`, the module
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected group of two or more modules."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # walk inside the group from its first module until a module repeats
        path = [min(group)]
        while path.count(path[-1]) < 2:
            path.append(min(graph[path[-1]] & group))
        cycles.append(path[path.index(path[-1]):])
    return cycles


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"x": {"y"}, "y": set()}) == []


def test_no_import_cycle_among_feedback_app_modules():
    graph = _module_imports("feedback_app")
    assert "feedback_app.pages.web" in graph and "feedback_app.models" in graph  # the reader found the modules
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
