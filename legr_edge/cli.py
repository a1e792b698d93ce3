"""What every command-line entry point shares: logging setup and error handling."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from legr_edge.errors import LegrError

log = logging.getLogger("legr_edge")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("onnx_ir", "onnxscript", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torch.onnx warns at every export that torchvision's ops are not registered.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


# Packages only the workstation half (search, export) needs; see README "Install".
WORKSTATION_PACKAGES = ("torch", "torch_pruning", "onnxscript", "torchvision")
TORCH_INSTALL = "pip install torch==2.13.0 && pip install \"legr_edge[torch]\""


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; a LegrError becomes one error line and exit code 1.

    So does a missing workstation package (torch on a device that has only the
    torch-free half installed): one line naming the install command, not a traceback.
    """
    try:
        return body()
    except LegrError as e:
        log.error("%s", e)
        return 1
    except ModuleNotFoundError as e:
        package = (e.name or "").split(".")[0]
        if package not in WORKSTATION_PACKAGES:
            raise
        log.error("%s is not installed here; search and export (the workstation half) need it: "
                  "%s (profile and pick need no torch)", package, TORCH_INSTALL)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; finished results are on disk (re-run with --resume where offered)")
        return 130
