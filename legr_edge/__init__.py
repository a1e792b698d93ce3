"""legr_edge: latency-aware filter pruning of CNNs for edge deployment.

Workstation half (needs torch): ``python -m legr_edge.search`` learns one global
filter ranking (LeGR) and writes a family of pruned networks; ``legr_edge.export``
turns them into ONNX. Device half (numpy + onnx + a runtime, no torch):
``python -m legr_edge.profile`` measures them, ``python -m legr_edge.pick`` chooses.

Importing this package never imports torch.
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _drop_cwd_from_path() -> None:
    """Under ``python -m legr_edge.<command>`` Python puts the current directory first on
    sys.path; a run directory one stands in could then shadow any module (numpy.py,
    tensorrt.py). Take it off; a user factory named on the command line is still looked
    up there (legr_edge.models.registry keeps the path in _REMOVED_CWD)."""
    global _REMOVED_CWD
    try:
        cwd = _os.getcwd()
    except OSError:  # the current directory was deleted
        cwd = ""
    if _sys.argv[:1] == ["-m"] and _sys.path and _sys.path[0] in ("", cwd):
        _REMOVED_CWD = _os.path.abspath(_sys.path.pop(0) or _os.curdir)
        if _REMOVED_CWD in _sys.path:  # also named explicitly (PYTHONPATH): the user wants it
            _REMOVED_CWD = None


_REMOVED_CWD = None
_drop_cwd_from_path()
