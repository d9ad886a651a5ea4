"""The three layers import only downward: retrieval.app -> indexer -> retrieval.core (setup.cfg [importlinter])."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--config", "setup.cfg", "--no-cache"]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layer_contract_is_kept() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The check can fail: the model core importing the index layer is reported."""
    for name in ("retrieval", "indexer"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    loss = tmp_path / "retrieval" / "core" / "loss.py"
    loss.write_text(loss.read_text() + "\nfrom indexer import store  # noqa: E402\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "retrieval.core.loss -> indexer.store" in result.stdout


def test_every_module_sits_in_a_layer() -> None:
    """Nothing but the package's front door (public names, version) lives outside retrieval/core and retrieval/app."""
    loose = {path.name for path in (ROOT / "retrieval").iterdir()
             if path.suffix == ".py" or (path.is_dir() and path.name not in ("core", "app", "__pycache__"))}
    assert loose <= {"__init__.py", "_version.py"}, loose
