"""Fingerprint parsers on captured tool output, and the guarded collection on this host."""
from __future__ import annotations

from legr_edge.device import fingerprint as fp

NVPMODEL_Q = "NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n"
TEGRA = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6\n"
SMI_QUERY = "NVIDIA GeForce RTX 4090, 550.54.14, 24564 MiB, 210 MHz, 3120 MHz\n"
SMI_HEADER = "| NVIDIA-SMI 550.54.14   Driver Version: 550.54.14   CUDA Version: 12.4     |\n"


def test_parse_jetson_tools() -> None:
    assert fp.parse_tegra_release(TEGRA) == "36.3.0"
    assert fp.parse_tegra_release("garbage") is None
    assert fp.parse_nvpmodel(NVPMODEL_Q) == {"mode_name": "MAXN", "mode_id": "0"}
    assert fp.parse_nvpmodel("") == {}


def test_parse_nvidia_smi() -> None:
    q = fp.parse_nvidia_smi_query(SMI_QUERY)
    assert q["name"] == "NVIDIA GeForce RTX 4090" and q["driver"] == "550.54.14"
    assert q["sm_clock_max"] == "3120 MHz"
    assert fp.parse_nvidia_smi_query("Orin, N/A, N/A\n") == {"name": "Orin"}
    assert fp.parse_cuda_version(SMI_HEADER) == "12.4"


def test_collect_is_guarded_and_imports_nothing_heavy(monkeypatch) -> None:
    import sys
    before = set(sys.modules)
    monkeypatch.setattr(fp, "jetson_info", lambda: 1 / 0)  # a crashing probe is just absent
    d = fp.collect_fingerprint()
    assert "jetson" not in d
    assert d["python"] and d["cpu_cores"] >= 1 and "onnx" in d["libraries"]
    assert not {"torch", "tensorrt", "pycuda"} & (set(sys.modules) - before)
    assert fp.short_device_name({"jetson": {"model": "Jetson Orin Nano"}, "cpu_model": "ARM"}) == \
        "Jetson Orin Nano"
    assert fp.short_device_name({"gpu": {"name": "H100"}, "cpu_model": "x"}) == "H100"
