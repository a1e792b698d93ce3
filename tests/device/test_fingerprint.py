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


NVPMODEL_CONF = """
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=25W >
< POWER_MODEL ID=2 NAME=MAXN_SUPER >
< PM_CONFIG DEFAULT=2 >
"""


def _fake_orin(root, monkeypatch, pinned: bool = True) -> None:
    """A JetPack 6.2 Orin Nano below ``root``; nvpmodel -q says mode 2."""
    files = {
        "proc/device-tree/model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00",
        "etc/nv_tegra_release": TEGRA,
        "etc/nvpmodel.conf": NVPMODEL_CONF,
        "sys/class/devfreq/17000000.gpu/cur_freq": "1020000000",
        "sys/class/devfreq/17000000.gpu/max_freq": "1020000000",
        "sys/class/devfreq/17000000.gpu/min_freq": "1020000000" if pinned else "306000000",
        "sys/class/devfreq/17000000.gpu/governor": "nvhost_podgov",
        "sys/kernel/debug/bpmp/debug/clk/emc/rate": "3199000000",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(fp, "SYSROOT", root)
    monkeypatch.setattr(fp, "_run", lambda *cmd: "NV Power Mode: MAXN_SUPER\n2\n"
                        if cmd[0] == "nvpmodel" else None)


def test_jetson_block_with_power_mode_by_name_and_jetson_clocks(tmp_path, monkeypatch) -> None:
    _fake_orin(tmp_path, monkeypatch)
    j = fp.jetson_info()
    assert j["model"].startswith("NVIDIA Jetson Orin Nano") and j["l4t"] == "36.3.0"
    assert j["nvpmodel"]["mode_name"] == "MAXN_SUPER" and j["nvpmodel"]["mode_id"] == "2"
    assert j["nvpmodel"]["modes"] == {"15W": "0", "25W": "1", "MAXN_SUPER": "2"}
    assert j["jetson_clocks_active"] is True and j["emc_rate_hz"] == "3199000000"
    assert fp.device_tree_model().endswith("Super")


def test_jetson_clocks_off_is_recorded(tmp_path, monkeypatch) -> None:
    _fake_orin(tmp_path, monkeypatch, pinned=False)
    assert fp.jetson_info()["jetson_clocks_active"] is False


def _deny_debugfs(monkeypatch) -> None:
    """Reading (or stat-ing) anything under debugfs raises PermissionError, as for a normal user."""
    from pathlib import Path
    real_read, real_is_file = Path.read_bytes, Path.is_file

    def deny(real):
        def wrapped(self):
            if "kernel/debug" in str(self):
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)
        return wrapped

    monkeypatch.setattr(Path, "read_bytes", deny(real_read))
    monkeypatch.setattr(Path, "is_file", deny(real_is_file))


def test_unreadable_file_reads_as_absent(monkeypatch) -> None:
    _deny_debugfs(monkeypatch)
    assert fp._read("/sys/kernel/debug/bpmp/debug/clk/emc/rate") is None


def test_permission_error_on_debugfs_keeps_the_jetson_block(tmp_path, monkeypatch) -> None:
    """A normal user may not read the EMC clock: that key is absent, the rest stays."""
    _fake_orin(tmp_path, monkeypatch)
    _deny_debugfs(monkeypatch)
    d = fp.collect_fingerprint()
    assert d["jetson"]["model"].startswith("NVIDIA Jetson Orin Nano")
    assert d["jetson"]["nvpmodel"]["mode_name"] == "MAXN_SUPER"
    assert "emc_rate_hz" not in d["jetson"]


def test_parse_nvpmodel_conf() -> None:
    assert fp.parse_nvpmodel_conf(NVPMODEL_CONF) == {"15W": "0", "25W": "1", "MAXN_SUPER": "2"}
    assert fp.parse_nvpmodel_conf("") == {}
    assert fp.jetson_clocks_active({}) is None
