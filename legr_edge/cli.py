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


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; a LegrError becomes one error line and exit code 1."""
    try:
        return body()
    except LegrError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; finished results are on disk (re-run with --resume where offered)")
        return 130
