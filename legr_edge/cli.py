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


EXIT_STATUS = """exit status:
  0    success
  1    bad input or a failed run: one line on stderr names the file, key or value
  2    usage error (unknown option, malformed value of a typed option), from argparse
  130  interrupted (Ctrl-C); finished results stay on disk"""

# Packages only the workstation half (search, export) needs; see README "Install".
WORKSTATION_PACKAGES = ("torch", "torch_pruning", "onnxscript", "torchvision")
TORCH_INSTALL = "pip install torch==2.13.0 && pip install \"legr_edge[torch]\""


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; a LegrError becomes one error line and exit code 1.

    So does a missing workstation package (torch on a device that has only the
    torch-free half installed): one line naming the install command, not a traceback.
    OS errors (read-only folder, disk full, a file where a folder should be) become one
    line too; anything else is a bug or an input check we missed: one line naming it,
    the traceback only with -v. SystemExit from user code (a model factory) never
    passes for success.
    """
    try:
        return body()
    except LegrError as e:
        log.error("%s", _one_line(str(e)))
        return 1
    except ModuleNotFoundError as e:
        package = (e.name or "").split(".")[0]
        if package not in WORKSTATION_PACKAGES:
            log.error("unexpected %s: %s (-v shows the traceback)", type(e).__name__, _one_line(str(e)))
            log.debug("traceback", exc_info=True)
            return 1
        log.error("%s is not installed here; search and export (the workstation half) need it: "
                  "%s (profile and pick need no torch)", package, TORCH_INSTALL)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; finished results are on disk (re-run with --resume where offered)")
        return 130
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        log.error("%s%s", where, _one_line(e.strerror or str(e)))
        log.debug("traceback", exc_info=True)
        return 1
    except (Exception, SystemExit) as e:  # noqa: BLE001 -- the last line of defence
        log.error("unexpected %s: %s (a bad input legr_edge does not check yet, or a bug; "
                  "-v shows the traceback)", type(e).__name__, _one_line(str(e)))
        log.debug("traceback", exc_info=True)
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split())[:2000]
