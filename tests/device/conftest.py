"""Fixtures for the device half: a tiny run directory and a fast test profile."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.device.fixture_run import build_run, write_fast_profile


@pytest.fixture(scope="session")
def _run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session; tests get a private copy (building the nets costs time)."""
    return build_run(tmp_path_factory.mktemp("template"))


@pytest.fixture
def run_dir(_run_template: Path, tmp_path: Path) -> Path:
    import shutil
    dest = tmp_path / "run"
    shutil.copytree(_run_template, dest)
    return dest


@pytest.fixture
def fast_profile(tmp_path: Path) -> Path:
    return write_fast_profile(tmp_path)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
