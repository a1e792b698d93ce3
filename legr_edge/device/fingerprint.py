"""Where a measurement was taken: host, CPU, OS, libraries, GPU, Jetson power mode, clocks.

A latency number without its machine state is not reproducible: the same Orin gives
different numbers in 15 W and MAXN mode, with and without jetson_clocks. Every probe
is guarded; a probe that does not apply or fails is simply absent from the result.
Library versions come from package metadata, so nothing (torch above all) is imported.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

LIBRARIES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12",
             "pycuda", "torch", "matplotlib")
_TIMEOUT_S = 5


def collect_fingerprint() -> dict[str, Any]:
    """Everything we can learn cheaply about this machine, as a JSON-able dict."""
    probes: dict[str, Callable[[], Any]] = {
        "host": platform.node,
        "os": platform.platform,
        "machine": platform.machine,
        "python": platform.python_version,
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count,
        "cpu_affinity": lambda: len(os.sched_getaffinity(0)),
        "mem_total_mib": mem_total_mib,
        "libraries": library_versions,
        "gpu": gpu_info,
        "jetson": jetson_info,
        "cpu_governor": lambda: _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_freq_mhz": cpu_freqs_mhz,
    }
    out: dict[str, Any] = {}
    for key, probe in probes.items():
        value = _guard(probe, key)
        if value not in (None, {}, []):
            out[key] = value
    return out


def short_device_name(fp: dict[str, Any]) -> str:
    """A one-phrase device name for tables: Jetson model, else GPU name, else CPU model."""
    return (fp.get("jetson", {}).get("model") or fp.get("gpu", {}).get("name")
            or fp.get("cpu_model") or fp.get("machine") or "unknown")


def _guard(probe: Callable[[], Any], key: str) -> Any:
    try:
        return probe()
    except Exception as e:  # each probe is optional by design
        log.debug("fingerprint probe %s failed: %s", key, e)
        return None


def _read(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return p.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip() or None


def _run(*cmd: str) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    return r.stdout if r.returncode == 0 else None


def cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or None


def mem_total_mib() -> int | None:
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", _read("/proc/meminfo") or "", re.MULTILINE)
    return int(m.group(1)) // 1024 if m else None


def library_versions() -> dict[str, str]:
    """Installed versions from package metadata (no imports)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "tensorrt" not in out and "tensorrt" in sys.modules:  # JetPack apt package: no metadata
        out["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", "?")
    return out


def cpu_freqs_mhz() -> list[int]:
    freqs = []
    for p in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        v = _read(str(p))
        if v and v.isdigit():
            freqs.append(int(v) // 1000)
    return freqs


# ----- GPU ----------------------------------------------------------------------------
def parse_nvidia_smi_query(text: str) -> dict[str, str]:
    """First line of ``nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,
    clocks.max.sm --format=csv,noheader``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    parts = [p.strip() for p in line.split(",")]
    keys = ("name", "driver", "memory_total", "sm_clock", "sm_clock_max")
    return {k: v for k, v in zip(keys, parts) if v and "N/A" not in v}


def parse_cuda_version(nvidia_smi_text: str) -> str | None:
    m = re.search(r"CUDA Version:\s*([\d.]+)", nvidia_smi_text)
    return m.group(1) if m else None


def gpu_info() -> dict[str, Any]:
    out: dict[str, Any] = {}
    q = _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
             "--format=csv,noheader")
    if q:
        out.update(parse_nvidia_smi_query(q))
    cuda = parse_cuda_version(_run("nvidia-smi") or "")
    if cuda:
        out["cuda_driver_api"] = cuda
    out.update(_pycuda_info())
    return out


def _pycuda_info() -> dict[str, Any]:
    """Only when pycuda was already imported (by the TensorRT backend): never create contexts here."""
    drv = sys.modules.get("pycuda.driver")
    if drv is None:
        return {}
    out: dict[str, Any] = {"cuda_driver_version": drv.get_driver_version(),
                           "cuda_pycuda_built_for": ".".join(map(str, drv.get_version()))}
    if drv.Device.count() > 0:
        dev = drv.Device(0)
        out.setdefault("name", dev.name())
        out["compute_capability"] = ".".join(map(str, dev.compute_capability()))
    return out


# ----- Jetson -------------------------------------------------------------------------
def parse_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> '36.3.0' (the L4T version)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> dict[str, str]:
    """``nvpmodel -q`` -> {'mode_name': 'MAXN', 'mode_id': '0'}."""
    out = {}
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if m:
        out["mode_name"] = m.group(1)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[-1].isdigit():
        out["mode_id"] = lines[-1]
    return out


def jetson_info() -> dict[str, Any]:
    """Board model, L4T release, power mode and GPU/EMC clocks where readable."""
    out: dict[str, Any] = {}
    model = _read("/proc/device-tree/model")
    release = _read("/etc/nv_tegra_release")
    if not release and not (model and ("Jetson" in model or "NVIDIA" in model)):
        return {}
    if model:
        out["model"] = model
    if release:
        out["l4t"] = parse_tegra_release(release)
    jetpack = _run("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack")
    if jetpack:
        out["jetpack"] = jetpack.strip()
    nv = _run("nvpmodel", "-q")
    if nv:
        out["nvpmodel"] = parse_nvpmodel(nv)
    out["gpu_freq_hz"] = _devfreq_gpu()
    emc = _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")  # root only
    if emc:
        out["emc_rate_hz"] = emc
    return {k: v for k, v in out.items() if v}


def _devfreq_gpu() -> dict[str, str]:
    out = {}
    for d in Path("/sys/class/devfreq").glob("*"):
        if "gpu" in d.name or "ga10b" in d.name or "gv11b" in d.name:
            for k in ("cur_freq", "max_freq", "min_freq", "governor"):
                v = _read(str(d / k))
                if v:
                    out[f"{d.name}.{k}"] = v
    return out
