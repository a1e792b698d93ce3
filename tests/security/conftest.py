"""Fixtures of the bad-input tests: the device half's tiny run and fast profile."""
from tests.device.conftest import _quiet_logs, _run_template, fast_profile, run_dir  # noqa: F401
