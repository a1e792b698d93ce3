"""Shared fixtures: one small search run reused by several workstation tests.

Nothing here imports torch at import time: ``pytest tests/device`` must run on a
device (a Jetson) where only the torch-free half is installed.
"""
from __future__ import annotations

import sys

import pytest

from tests.helpers import TINY_SEARCH


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """Keep the suite predictable on 2 cores, where torch is in use at all."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One small finished search run (digits + ResNet-20, exported), shared read-only."""
    from legr_edge.search import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(TINY_SEARCH + ["--out", str(out)]) == 0
    return out
