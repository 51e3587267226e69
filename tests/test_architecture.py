"""The package's shape, checked on every unit run: imports run one way (the import-linter contracts
in pyproject.toml), no folder holds more than its share of the code, no function does many jobs."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shopsearch"
SCRIPTS = [ROOT / "build", ROOT / "training", ROOT / "loadtests"]
MAX_FOLDER_SHARE = 0.15
MAX_FUNCTION_LINES = 80


def python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_imports_follow_the_layers_and_form_no_cycle():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", "pyproject.toml", "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_no_folder_of_the_package_holds_more_than_its_share_of_the_lines():
    lines = Counter()
    for path in python_files(PACKAGE):
        lines[path.parent.relative_to(ROOT).as_posix()] += len(path.read_text().splitlines())
    total = sum(lines.values())
    too_big = {folder: f"{n / total:.1%}" for folder, n in lines.items() if n > MAX_FOLDER_SHARE * total}
    assert not too_big, f"folders above {MAX_FOLDER_SHARE:.0%} of {total} lines: {too_big}"


def test_no_function_outside_the_tests_is_longer_than_the_limit():
    long = []
    for path in python_files(PACKAGE, *SCRIPTS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"

