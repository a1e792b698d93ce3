"""The device half on a machine without torch: search/export say what to install.

Where torch is installed, a blocker folder first on PYTHONPATH makes ``import torch``
fail exactly as on a torch-free Jetson (ModuleNotFoundError, name 'torch').
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _no_torch_env(tmp_path: Path) -> dict:
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)])}


@pytest.mark.parametrize("command", ["search", "export"])
def test_workstation_commands_without_torch_print_one_line(tmp_path: Path, run_dir: Path,
                                                           command: str) -> None:
    args = {"search": ["--preset", "smoke", "--out", str(tmp_path / "out")],
            "export": [str(run_dir)]}[command]
    r = subprocess.run([sys.executable, "-m", f"legr_edge.{command}"] + args, cwd=tmp_path,
                       env=_no_torch_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, r.stderr
    assert "torch is not installed" in errors[0] and "pip install torch==2.13.0" in errors[0]
    assert "legr_edge[torch]" in errors[0]
