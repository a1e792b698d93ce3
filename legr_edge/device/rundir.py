"""Moved: the run-directory contract lives in :mod:`legr_edge.rundir` (both halves import it).

Kept as a re-export so that older imports keep working; add nothing here.
"""
from legr_edge.rundir import (EvalData, FLOPS_COLUMNS, ModelRow, check_onnx, load_eval,  # noqa: F401
                              load_models, read_flops_table, read_manifest)
from legr_edge.rundir import run_summary as read_run_config  # noqa: F401 (model/dataset, as before)
