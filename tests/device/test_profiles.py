"""Device profiles: every shipped file loads; bad files fail naming the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from legr_edge.device import profiles as profiles_mod
from legr_edge.device.profiles import Profile, available_profiles, load_profile
from legr_edge.errors import LegrError

REPO = Path(__file__).resolve().parents[2]
PROFILE_FILES = sorted((REPO / "profiles").glob("*.toml"))
MINIMAL = 'backend = "onnxruntime"\nprecision = "fp32"\n'


def test_profiles_directory_has_the_targets() -> None:
    names = {p.stem for p in PROFILE_FILES}
    assert {"cpu-ort", "jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx",
            "gpu-trt-fp16"} <= names


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_profile_file_loads(path: Path) -> None:
    p = load_profile(path)
    assert p.name == path.stem
    assert p.description
    assert p.batch_sizes and all(b >= 1 for b in p.batch_sizes)
    assert p.round_to >= 1
    assert p.to_dict()["batch_sizes"] == list(p.batch_sizes)


def test_jetson_and_gpu_profiles_match_their_devices() -> None:
    by_name = {p.stem: load_profile(p) for p in PROFILE_FILES}
    assert by_name["jetson-xavier-nx"].opset == 17  # TensorRT 8.5 parser limit
    for name in ("jetson-orin-nano", "jetson-agx-orin", "gpu-trt-fp16", "jetson-xavier-nx"):
        assert by_name[name].backend == "tensorrt" and by_name[name].precision == "fp16"
    assert by_name["jetson-orin-nano"].round_to == 16
    assert by_name["jetson-agx-orin"].round_to == 32


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_shipped_profile_loads_by_bare_name_from_anywhere(
        path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository: no profiles/ here
    by_name = load_profile(path.stem)
    assert by_name.source == f"<shipped {path.stem}>"
    assert dataclasses.replace(by_name, source="") == dataclasses.replace(load_profile(path), source="")


def test_stray_profiles_dir_in_cwd_does_not_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "cpu-ort.toml").write_text(MINIMAL + "round_to = 3\n")
    (tmp_path / "profiles" / "mine.toml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    p = load_profile("cpu-ort")
    assert p.round_to == 4 and p.source == "<shipped cpu-ort>"  # the shipped one, not the stray
    assert "not profiles/cpu-ort.toml" in caplog.text.replace(str(Path("profiles")) + "/", "profiles/")
    assert load_profile("profiles/cpu-ort.toml").round_to == 3  # as a path it is read
    with pytest.raises(LegrError, match="'mine' is not a shipped profile.*--profile profiles/mine.toml"):
        load_profile("mine")


def test_installed_package_data_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed wheel has legr_edge/profiles/*.toml; that folder is the one read."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "only-here.toml").write_text(MINIMAL)
    monkeypatch.setattr(profiles_mod, "_package_root", lambda: tmp_path)
    assert available_profiles() == ["only-here"]
    assert load_profile("only-here").name == "only-here"


def test_wheel_ships_every_profile(tmp_path: Path) -> None:
    """setup.py maps the top-level profiles/ into the package: every file is in the wheel."""
    import subprocess
    import sys
    import zipfile
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0 and ("No module named" in r.stderr or "bdist_wheel" in r.stderr):
        pytest.skip("this environment cannot build wheels without build isolation (no `wheel` "
                    "package); the main test environment checks the wheel")
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("legr_edge-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("legr_edge/profiles/")}
    assert shipped == {f"legr_edge/profiles/{p.name}" for p in PROFILE_FILES}


def test_minimal_profile_gets_defaults(tmp_path: Path) -> None:
    f = tmp_path / "mini.toml"
    f.write_text(MINIMAL)
    p = load_profile(f)
    assert isinstance(p, Profile)
    assert p.name == "mini" and p.providers == ("CPUExecutionProvider",) and p.batch_sizes == (1,)
    assert p.dla_core == -1 and p.threads == 0


def _load_text(tmp_path: Path, text: str) -> Profile:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    return load_profile(f)


@pytest.mark.parametrize("extra, key", [
    ("min_iter = 50\n", "min_iter"),        # typo: unknown key
    ("threads = \"4\"\n", "threads"),        # wrong type
    ("threads = true\n", "threads"),         # bool is not an int here
    ("batch_sizes = [1, \"8\"]\n", "batch_sizes"),
    ("batch_sizes = []\n", "batch_sizes"),
    ("batch_sizes = [1, 1]\n", "batch_sizes"),
    ("cuda_graphs = 1\n", "cuda_graphs"),
    ("warmup_s = \"1s\"\n", "warmup_s"),
    ("min_iters = 0\n", "min_iters"),
    ("dla_core = -2\n", "dla_core"),
    ("providers = [\"CPUExecutionProvider\", 3]\n", "providers"),
])
def test_bad_key_or_type_names_file_and_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(LegrError) as e:
        _load_text(tmp_path, MINIMAL + extra)
    assert repr(key) in str(e.value) and "bad.toml" in str(e.value)


@pytest.mark.parametrize("text, key", [
    ('backend = "openvino"\nprecision = "fp32"\n', "backend"),
    ('backend = "onnxruntime"\nprecision = "bf16"\n', "precision"),
    ('backend = "tensorrt"\nprecision = "fp16"\n', "device"),  # tensorrt needs cuda
    ('backend = "onnxruntime"\nprecision = "fp16"\n', "precision"),  # CPU EP has no fp16
    ('backend = "onnxruntime"\nprecision = "fp32"\nproviders = ["CUDAExecutionProvider"]\n', "device"),
    ('backend = "tensorrt"\ndevice = "cuda"\nprecision = "fp32"\ndla_core = 0\n', "dla_core"),
    ('precision = "fp32"\n', "backend"),  # required
])
def test_inconsistent_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(LegrError, match=repr(key)):
        _load_text(tmp_path, text)


def test_invalid_toml_and_unknown_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LegrError, match="not valid TOML"):
        _load_text(tmp_path, "backend = \n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LegrError, match="not a shipped profile.*shipped: cpu-ort, gpu-trt-fp16"):
        load_profile("no-such-device")
    with pytest.raises(LegrError, match="profile file 'nope.toml' not found"):
        load_profile("nope.toml")


def test_timing_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(LegrError, match="'timing_mode'.*latency, throughput"):
        _load_text(tmp_path, MINIMAL + 'timing_mode = "fast"\n')
    with pytest.raises(LegrError, match="'timing_mode'.*tensorrt"):
        _load_text(tmp_path, MINIMAL + 'timing_mode = "throughput"\n')
    base = _load_text(tmp_path, MINIMAL)
    assert base.timing_mode == "latency"
    trt = load_profile("gpu-trt-fp16")
    assert dataclasses.replace(trt, timing_mode="throughput").digest() != trt.digest()


def test_digest_ignores_description_but_not_settings(tmp_path: Path) -> None:
    a = _load_text(tmp_path, MINIMAL + 'description = "a"\n')
    b = dataclasses.replace(a, description="b", source="elsewhere")
    c = dataclasses.replace(a, batch_sizes=(1, 8))
    assert a.digest() == b.digest() != c.digest()
