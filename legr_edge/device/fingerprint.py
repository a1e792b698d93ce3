"""Where a measurement was taken: host, CPU, OS, libraries, GPU, Jetson power mode, clocks.

A latency number without its machine state is not reproducible: the same Orin gives
different numbers in 15 W and MAXN mode, with and without jetson_clocks. Every probe
is guarded; a probe that does not apply or fails is simply absent from the result, and
a file we may not read (the EMC clock under debugfs is root-only) is just absent too --
it never takes the rest of its block with it.
Library versions come from package metadata, so nothing (torch above all) is imported.

Power modes are recorded by name: their numbers differ between boards and JetPack
releases (on an Orin Nano with JetPack 6.2 mode 0 is 15 W and MAXN_SUPER is mode 2),
so ``nvpmodel`` gives the current mode's name and id and /etc/nvpmodel.conf the table of
all of them. ``jetson_clocks`` pins the GPU's devfreq minimum to its maximum; that is how
it is recognised.

All paths are read below :data:`SYSROOT` so tests can point it at a fake board.
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
             "tensorrt-cu12-bindings", "cuda-python", "cuda-bindings", "pycuda",
             "onnxconverter-common", "torch", "matplotlib")
_TIMEOUT_S = 5
SYSROOT = Path("/")


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
    """Text of a file below SYSROOT, or None if missing, not a file or not readable."""
    try:
        data = (SYSROOT / path.lstrip("/")).read_bytes()
    except OSError:  # ENOENT, EACCES/EPERM (debugfs), EISDIR, EINVAL (some sysfs nodes)
        return None
    return data.replace(b"\x00", b"").decode("utf-8", "replace").strip() or None


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
    out.update(_cuda_python_info())
    return out


def _cuda_python_info() -> dict[str, Any]:
    """Only when cuda-python was already imported (by the TensorRT backend's check)."""
    if not any(m in sys.modules for m in ("cuda.bindings.runtime", "cuda.cudart")):
        return {}
    from legr_edge.device.backends.cuda_api import CudaError, CudaPython
    api = CudaPython()
    out: dict[str, Any] = dict(api.versions())
    try:
        props = api.device_props()
    except CudaError:
        return out
    out.setdefault("name", props.name)
    out.update(compute_capability=props.compute_capability, sm_count=props.sm_count,
               memory_mib=props.total_mem_mib)
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


def parse_nvpmodel_conf(text: str) -> dict[str, str]:
    """/etc/nvpmodel.conf -> {mode name: mode id}, e.g. {'15W': '0', 'MAXN_SUPER': '2'}."""
    return {m.group(2): m.group(1) for m in re.finditer(
        r"<\s*POWER_MODEL\s+ID\s*=\s*(\d+)\s+NAME\s*=\s*([^\s>]+)", text)}


def device_tree_model() -> str | None:
    """The board as the device tree names it ('NVIDIA Jetson AGX Orin Developer Kit')."""
    return _read("/proc/device-tree/model")


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
    """Board model, L4T release, power mode (by name), jetson_clocks and GPU/EMC clocks."""
    out: dict[str, Any] = {}
    model = device_tree_model()
    release = _read("/etc/nv_tegra_release")
    if not release and not (model and ("Jetson" in model or "NVIDIA" in model)):
        return {}
    if model:
        out["model"] = model
    if release:
        out["l4t"] = parse_tegra_release(release)
    for key, probe in (("jetpack", _jetpack_version), ("nvpmodel", _power_mode),
                       ("gpu_devfreq", _devfreq_gpu), ("emc_rate_hz", _emc_rate)):
        out[key] = _guard(probe, f"jetson.{key}")
    out["jetson_clocks_active"] = jetson_clocks_active(out.get("gpu_devfreq") or {})
    return {k: v for k, v in out.items() if v not in (None, {}, "")}


def _jetpack_version() -> str | None:
    text = _run("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack")
    return text.strip() if text else None


def _power_mode() -> dict[str, Any]:
    """Current mode's name and id (``nvpmodel -q``) and the board's table of modes."""
    out: dict[str, Any] = {}
    text = _run("nvpmodel", "-q")
    if text:
        out.update(parse_nvpmodel(text))
    modes = parse_nvpmodel_conf(_read("/etc/nvpmodel.conf") or "")
    if modes:
        out["modes"] = modes
        if "mode_id" in out and "mode_name" not in out:
            out["mode_name"] = next((n for n, i in modes.items() if i == out["mode_id"]), None)
    return {k: v for k, v in out.items() if v}


def _emc_rate() -> str | None:
    return _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")  # root only: None otherwise


def _devfreq_gpu() -> dict[str, str]:
    """cur/min/max frequency and governor of the GPU's devfreq node(s)."""
    out = {}
    for d in sorted((SYSROOT / "sys/class/devfreq").glob("*")):
        if "gpu" in d.name or "ga10b" in d.name or "gv11b" in d.name:
            for k in ("cur_freq", "max_freq", "min_freq", "governor"):
                v = _read(f"/sys/class/devfreq/{d.name}/{k}")
                if v:
                    out[f"{d.name}.{k}"] = v
    return out


def jetson_clocks_active(devfreq: dict[str, str]) -> bool | None:
    """True when every GPU devfreq node has min == max (what jetson_clocks sets)."""
    nodes = {k.rsplit(".", 1)[0] for k in devfreq}
    pinned = []
    for n in nodes:
        lo, hi = devfreq.get(f"{n}.min_freq"), devfreq.get(f"{n}.max_freq")
        if lo is None or hi is None:
            continue
        pinned.append(lo == hi)
    return all(pinned) if pinned else None
