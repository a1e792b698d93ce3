"""The per-layer latency table: JSON contract, validation and prediction (no torch).

``RUN/latency_table_<profile>.json`` (format ``legr_edge.latency_table/1``)::

    {"format", "created_at", "legr_edge_version", "build_seconds",
     "run": {"model", "dataset", "dense_onnx", "dense_onnx_sha256"},
     "profile": {...}, "profile_sha256", "backend", "precision", "batch_size",
     "device", "fingerprint", "backend_info": {"versions": ...},
     "grid_rules": {"round_to", "min_fraction", "min_channels", "max_widths"},
     "timing": {"rounds", "layer_seconds", ...},
     "layers": [{"name", "signature", "cin", "cout", "in_fixed", "out_fixed", ...}],
     "signatures": {sig: {"in_widths": [..], "out_widths": [..], "ms": [[..]],  # [in][out]
                          "noise_ms": [[..]], "depthwise": bool}},
     "calibration": {"kind": "constant"|"affine"|"ratio", "scale", "overhead_ms",
                     "configs": [{"role": "fit"|"held_out", "measured_ms", "layer_sum_ms", ...}]},
     "error": {"held_out_median_pct", "held_out_max_pct", "fit_median_pct", "n_held_out"},
     "noise_ms": median over grid points of the spread between timing rounds}

Prediction: ``scale * sum(layer latency at its (cin, cout)) + overhead_ms``; a layer's
latency is interpolated bilinearly in its signature's grid (clamped at the edges).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

FORMAT = "legr_edge.latency_table/1"


def allowed_widths(size: int, round_to: int, min_fraction: float, min_channels: int) -> List[int]:
    """Widths the search can give a group of ``size`` channels (the Pruner's floor and rounding)."""
    size = int(size)
    floor = max(min_channels, int(np.ceil(min_fraction * size)))
    floor = min(size, int(np.ceil(floor / round_to)) * round_to)
    return sorted(set(range(floor, size, round_to)) | {size})


def sample_widths(widths: Sequence[int], max_n: int) -> List[int]:
    """At most ``max_n`` of ``widths``, evenly spread, always with both ends."""
    widths = list(widths)
    if len(widths) <= max_n:
        return widths
    idx = np.unique(np.round(np.linspace(0, len(widths) - 1, max(2, max_n))).astype(int))
    return [widths[i] for i in idx]


def interp2(xs: Sequence[float], ys: Sequence[float], z: np.ndarray, x: float, y: float) -> float:
    """Bilinear interpolation of z[xs, ys] at (x, y), clamped to the grid."""
    z = np.asarray(z, dtype=np.float64)
    row = [np.interp(y, ys, z[i]) for i in range(len(xs))]
    return float(np.interp(x, xs, row))


class LatencyTable:
    """A loaded table. ``predict`` takes per-layer (cin, cout) by layer name."""

    def __init__(self, data: Dict[str, Any], source: str = "<table>") -> None:
        self.data = data
        self.source = source
        _validate(data, source)
        self.layers: List[Dict[str, Any]] = data["layers"]
        self.signatures: Dict[str, Dict[str, Any]] = data["signatures"]
        cal = data.get("calibration") or {}
        self.scale = float(cal.get("scale", 1.0))
        self.overhead_ms = float(cal.get("overhead_ms", 0.0))

    @classmethod
    def load(cls, path) -> "LatencyTable":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LegrError(f"{path}: latency table not found (python -m legr_edge.latency_table RUN "
                            "builds it on the device)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise LegrError(f"{path}: unreadable latency table ({e})") from None
        return cls(data, str(path))

    # ----- properties of the table -------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    @property
    def precision(self) -> str:
        return str(self.data["precision"])

    @property
    def profile_name(self) -> str:
        return str(self.data.get("profile", {}).get("name", ""))

    @property
    def model(self) -> str:
        return str(self.data.get("run", {}).get("model") or "")

    @property
    def noise_ms(self) -> float:
        return float(self.data.get("noise_ms") or 0.0)

    def layer_names(self) -> List[str]:
        return [l["name"] for l in self.layers]

    # ----- prediction --------------------------------------------------------------------
    def layer_ms(self, signature: str, cin: float, cout: float) -> float:
        s = self.signatures[signature]
        if s.get("depthwise"):
            return float(np.interp(cout, s["out_widths"], s["ms"]))
        return interp2(s["in_widths"], s["out_widths"], s["ms"], cin, cout)

    def layer_lut(self, name: str) -> np.ndarray:
        """Latency of layer ``name`` at every integer (cin, cout) up to its full widths."""
        layer = self._layer(name)
        s = self.signatures[layer["signature"]]
        cin, cout = int(layer["cin"]), int(layer["cout"])
        lut = np.zeros((cin + 1, cout + 1))
        if s.get("depthwise"):
            lut[:] = np.interp(np.arange(cout + 1), s["out_widths"], s["ms"])[None, :]
            return lut
        z = np.asarray(s["ms"], dtype=np.float64)
        rows = np.stack([np.interp(np.arange(cout + 1), s["out_widths"], z[i]) for i in range(len(z))])
        for j in range(cout + 1):
            lut[:, j] = np.interp(np.arange(cin + 1), s["in_widths"], rows[:, j])
        return lut

    def _layer(self, name: str) -> Dict[str, Any]:
        for l in self.layers:
            if l["name"] == name:
                return l
        raise LegrError(f"{self.source}: no layer {name!r} in the table")

    def layer_sum(self, widths: Mapping[str, Tuple[float, float]]) -> float:
        """Sum of table latencies; layers not in ``widths`` are taken at full width."""
        total = 0.0
        for l in self.layers:
            cin, cout = widths.get(l["name"], (l["cin"], l["cout"]))
            total += self.layer_ms(l["signature"], cin, cout)
        return total

    def calibrated(self, layer_sum: float) -> float:
        return self.scale * layer_sum + self.overhead_ms

    def predict(self, widths: Mapping[str, Tuple[float, float]]) -> float:
        """Predicted whole-network latency (ms) at batch ``batch_size``."""
        return self.calibrated(self.layer_sum(widths))

    def dense_ms(self) -> float:
        return self.predict({})

    def check_widths_known(self, widths: Mapping[str, Tuple[int, int]], what: str) -> None:
        """Refuse a network whose layers the table does not describe."""
        names = set(self.layer_names())
        missing = sorted(set(widths) - names)
        if missing:
            raise LegrError(f"{what}: layer(s) {', '.join(missing[:5])} not in latency table "
                            f"{self.source} (built for {self.model or 'another network'})")
        too_wide = [n for n, (ci, co) in widths.items()
                    if ci > self._layer(n)["cin"] or co > self._layer(n)["cout"]]
        if too_wide:
            raise LegrError(f"{what}: layer(s) {', '.join(too_wide[:5])} wider than in latency table "
                            f"{self.source}: the table was built for another dense network")

    def check_profile(self, profile, batch_size: Optional[int] = None) -> None:
        """Refuse a table measured with another backend, precision or batch size."""
        want_batch = batch_size if batch_size is not None else profile.batch_sizes[0]
        problems = []
        if self.data.get("backend") != profile.backend:
            problems.append(f"backend {self.data.get('backend')!r} != profile's {profile.backend!r}")
        if self.precision != profile.precision:
            problems.append(f"precision {self.precision!r} != profile's {profile.precision!r}")
        if self.batch_size != want_batch:
            problems.append(f"batch size {self.batch_size} != {want_batch}")
        if problems:
            raise LegrError(f"{self.source} does not match profile {profile.name!r}: "
                            + "; ".join(problems) + " -- rebuild it with python -m legr_edge.latency_table "
                            f"RUN --profile {profile.name}")


_REQUIRED = ("format", "batch_size", "precision", "backend", "layers", "signatures", "calibration")


def _validate(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise LegrError(f"{source}: not a latency table (expected a JSON object)")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise LegrError(f"{source}: not a latency table, missing key(s) {', '.join(missing)}")
    if data["format"] != FORMAT:
        raise LegrError(f"{source}: format {data['format']!r}, expected {FORMAT!r}")
    for l in data["layers"]:
        if not isinstance(l, dict) or l.get("signature") not in data["signatures"]:
            raise LegrError(f"{source}: layer {l.get('name') if isinstance(l, dict) else l!r} "
                            "has no grid in 'signatures'")
    for sig, s in data["signatures"].items():
        ms = np.asarray(s.get("ms"), dtype=np.float64)
        shape = (len(s.get("out_widths", [])),) if s.get("depthwise") else (
            len(s.get("in_widths", [])), len(s.get("out_widths", [])))
        if ms.shape != shape or not np.all(np.isfinite(ms)):
            raise LegrError(f"{source}: signatures[{sig!r}].ms must be finite with shape {shape}, "
                            f"got {ms.shape}")


def fit_calibration(layer_sums: Sequence[float], measured: Sequence[float]) -> Dict[str, float]:
    """predicted = scale * layer_sum + overhead: a constant overhead, an affine fit when at
    least 4 points support it (scale kept within [0.5, 2]), or a pure scale (``ratio``),
    whichever fits the points best among those whose overhead is not negative.

    A negative overhead happens (isolated layers each pay a call's overhead, so their sum
    can exceed the whole network's time), but it predicts a negative latency for a network
    small enough, and the search and ``pick`` compare predictions of small networks. So a
    fit with a negative overhead is not used; the ratio (overhead 0) then covers that case:
    every prediction stays positive."""
    s, m = np.asarray(layer_sums, float), np.asarray(measured, float)
    fits = [{"kind": "constant", "scale": 1.0, "overhead_ms": float(np.median(m - s))}]
    if len(s) >= 4 and np.ptp(s) > 0:
        scale, overhead = np.polyfit(s, m, 1)
        if 0.5 <= scale <= 2.0:
            fits.append({"kind": "affine", "scale": float(scale), "overhead_ms": float(overhead)})
    pos = s > 0
    if pos.any():
        fits.append({"kind": "ratio", "scale": float(np.median(m[pos] / s[pos])), "overhead_ms": 0.0})
    usable = [f for f in fits if f["overhead_ms"] >= 0] or [dict(fits[0], overhead_ms=0.0)]
    return min(usable, key=lambda f: _median_err(f, s, m))


def _median_err(cal: Mapping[str, float], s: np.ndarray, m: np.ndarray) -> float:
    return float(np.median(np.abs(cal["scale"] * s + cal["overhead_ms"] - m) / m))


def relative_errors(cal: Mapping[str, float], layer_sums: Sequence[float],
                    measured: Sequence[float]) -> np.ndarray:
    """(predicted - measured) / measured, in percent."""
    s, m = np.asarray(layer_sums, float), np.asarray(measured, float)
    return 100.0 * (cal["scale"] * s + cal["overhead_ms"] - m) / m


def predict_models(run: Path, profile_name: str, models: Sequence[Any]) -> Dict[str, Tuple[int, float]]:
    """{model name: (batch size, predicted ms)} from RUN/latency_table_<profile>.json, for the
    profile's latency CSV; empty without a table. ``models`` are rundir.ModelRow-like
    (``name``, ``manifest``). A model the table cannot describe is logged and left out."""
    import onnx

    from legr_edge.latency.graph import layer_widths

    path = Path(run) / f"latency_table_{profile_name}.json"
    if not path.is_file():
        return {}
    try:
        table = LatencyTable.load(path)
    except LegrError as e:
        log.warning("%s; predicted latency left empty", e)
        return {}
    out: Dict[str, Tuple[int, float]] = {}
    for m in models:
        onnx_path = Path(run) / "onnx" / ((m.manifest or {}).get("file") or f"{m.name}.onnx")
        try:
            widths = layer_widths(onnx.load(str(onnx_path), load_external_data=False))
            table.check_widths_known(widths, str(onnx_path))
            out[m.name] = (table.batch_size, table.predict(widths))
        except Exception as e:  # one model's problem must not stop the profile
            log.warning("%s: no predicted latency (%s)", m.name, e)
    return out
