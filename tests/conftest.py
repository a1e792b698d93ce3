"""Shared fixtures: one small search run reused by several tests."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_SEARCH

# Keep the suite predictable on 2 cores.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One small finished search run (digits + ResNet-20, exported), shared read-only."""
    from legr_edge.search import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(TINY_SEARCH + ["--out", str(out)]) == 0
    return out
