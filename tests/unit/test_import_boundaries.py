"""The house rules on imports, checked in fresh interpreters and by reading the sources."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "trl", "deepspeed", "gradio", "transformers", "peft", "datasets")
LIGHT_MODULES = ["rlhf", "rlhf.schema", "rlhf.config", "rlhf.errors", "rlhf.runtime", "rlhf.prompts",
                 "rlhf.cli", "rlhf.commands", "reward", "feedback_app"]


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


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    """Top-level packages each file of ``package`` imports (module-level or inside functions)."""
    found = {}
    for path in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


COMPOSITION_ROOTS = {"rlhf/cli.py", "rlhf/pipeline.py"}


def test_core_never_imports_the_stages():
    for path, names in _imported_top_levels("rlhf").items():
        if path in COMPOSITION_ROOTS:
            continue
        assert not names & {"reward", "feedback_app"}, f"{path} imports {names & {'reward', 'feedback_app'}}"


def test_reward_and_feedback_app_never_import_each_other():
    for path, names in _imported_top_levels("reward").items():
        assert "feedback_app" not in names, path
    for path, names in _imported_top_levels("feedback_app").items():
        assert "reward" not in names, path
