"""Only the PPO package imports TRL's PPO: export and doctor reach it through rlhf.ppo, never by import."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


def test_importing_the_export_module_does_not_import_trl_ppo():
    modules = _modules_after_import("import rlhf.export")
    assert "rlhf.export" in modules
    assert "trl.experimental.ppo" not in modules
    assert not {m for m in modules if m == "rlhf.ppo" or m.startswith("rlhf.ppo.")}


def test_the_ppo_package_is_light_and_reports_trl_ppo_available():
    modules = _modules_after_import("import rlhf.ppo")
    assert "trl" not in modules and "torch" not in modules
    modules = _modules_after_import("import rlhf.ppo\nassert rlhf.ppo.available() is True")  # trl==1.12.0 pinned
    assert "trl.experimental.ppo" in modules


def test_only_the_ppo_package_imports_trl_experimental_ppo():
    importers = set()
    for folder in ("rlhf", "reward", "feedback_app"):  # the library (bench/ppo_bench.py times TRL's loop itself)
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n == "trl.experimental.ppo" or n.startswith("trl.experimental.ppo.") for n in names):
                    importers.add(str(path.relative_to(REPO)))
    assert importers and all(p.startswith("rlhf/ppo/") for p in importers), sorted(importers)
