"""The torch-free device half stays importable on Python 3.8 (JetPack 5).

On 3.8 itself (CI's second environment) importing every module is the proof: a
module-level ``tuple[...]`` alias is a TypeError there. On newer Pythons the files are
at least parsed with the 3.8 grammar, which catches match statements, parenthesised
context managers and other syntax 3.8 lacks.
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import legr_edge

PKG = Path(legr_edge.__file__).resolve().parent
DEVICE_HALF = sorted(
    [p for p in (PKG / "device").rglob("*.py") if p.name != "torch_eager.py"]
    + [PKG / n for n in ("__init__.py", "profile.py", "pick.py", "io.py", "errors.py", "cli.py")])


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@pytest.mark.parametrize("path", DEVICE_HALF, ids=lambda p: _module(p))
def test_device_module_parses_as_python38_and_imports(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))
    importlib.import_module(_module(path))  # on 3.8 this evaluates the module's top level


def test_device_half_does_not_import_torch() -> None:
    """In a fresh interpreter, importing every device module leaves torch unloaded."""
    import subprocess
    mods = [_module(p) for p in DEVICE_HALF]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "heavy = sorted({'torch', 'tensorrt', 'pycuda'} & set(sys.modules))\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
