"""What every bad-input test asserts: exit status 1, one error line naming the problem, no
traceback, and every file under the test's folder exactly as before (nothing added either)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Dict, Sequence

import pytest


def tree_state(root: Path) -> Dict[str, str]:
    """{relative path: content hash | 'dir' | 'link -> target'} of everything under root."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def fails_cleanly(main: Callable[[Sequence[str]], int], argv: Sequence[str], root: Path,
                  expect: str, caplog: pytest.LogCaptureFixture,
                  capsys: pytest.CaptureFixture) -> str:
    """Run ``main(argv)`` and assert the bad-input contract; returns the error line."""
    before = tree_state(root)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(list(argv))
    out, err = capsys.readouterr()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 1, f"exit {code}, errors: {[r.getMessage() for r in errors]}"
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "\n" not in line and errors[0].exc_info is None, line
    assert "Traceback" not in err + out + caplog.text
    assert expect.lower() in line.lower(), f"{expect!r} not in {line!r}"
    assert tree_state(root) == before, "a failed command changed files"
    return line
