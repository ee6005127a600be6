"""The GPU benchmark's plumbing on a machine without one: `python -m benchmarks --gpu` skips
with a reason, the run part's epoch budget, and the staging that carries its inputs to a
lent machine in loads under the call's limit (the script itself runs in the quick mode of
tests/test_benchmarks_quick.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_parts import epochs_for  # noqa: E402
from gpu_prepare import plan, split  # noqa: E402


def test_the_run_part_fills_its_training_time_within_bounds() -> None:
    assert epochs_for(1000.0, 20000, seconds=170) == 8  # 170 s x 1000 img/s / 20k
    assert epochs_for(10.0, 20000, seconds=170) == 1  # too slow for one: still one
    assert epochs_for(1e6, 20000, seconds=170, most=40) == 40
    assert epochs_for(float("nan"), 20000) == 1


def test_a_wheel_cut_into_loads_joins_back_byte_for_byte(tmp_path: Path) -> None:
    wheel = tmp_path / "onnxruntime_gpu-1.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    payload = bytes(range(256)) * 1000 + b"end"
    wheel.write_bytes(payload)
    loads = split(wheel, tmp_path / ".gpu" / "ort", 100_000)
    assert [p.name for p in loads] == ["ort-1", "ort-2", "ort-3"]
    parts = sorted((p for load in loads for p in load.glob("part-*")), key=lambda p: p.name)
    assert all(p.stat().st_size <= 100_000 for p in parts)
    assert b"".join(p.read_bytes() for p in parts) == payload
    assert (loads[0] / "name").read_text().strip() == wheel.name


def test_the_plan_stages_each_load_and_runs_the_script_last() -> None:
    import gpu_prepare

    loads = [gpu_prepare.STAGE / "base", gpu_prepare.STAGE / "ort-1",
             gpu_prepare.STAGE / "data"]
    text = plan(loads)
    assert text.index('carry `[".gpu/base"]`') < text.index('carry `[".gpu/ort-1"]`') \
        < text.index('carry `[".gpu/data"]`')
    assert text.count("cp -r") == 2 and text.rstrip().endswith("`bash benchmarks/gpu_device.sh`")


NO_CUDA = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import torch, sys; "
                    "sys.exit(torch.cuda.is_available())"]).returncode != 0,
    reason="a CUDA device is here: the full run would start")


@NO_CUDA
def test_the_gpu_run_without_a_gpu_says_so_and_fails_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--gpu", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## gpu\n\nSkipped: no CUDA device here" in out.read_text()


def test_the_parts_are_the_orchestrators_in_its_order() -> None:
    import gpu
    import gpu_parts

    assert tuple(gpu_parts.PARTS) == gpu.PARTS


def tiny_wheel(folder: Path, name: str) -> Path:
    """A pure-Python wheel of one module ``name`` (``import name`` gives ``OK = True``)."""
    import zipfile

    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {f"{name}.py": "OK = True\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


@NO_CUDA
def test_the_device_script_joins_installs_and_runs_the_check(tmp_path: Path) -> None:
    """benchmarks/gpu_device.sh as the last device call runs it, on staged loads made here:
    a wheel in base, another cut into two ort loads; without CUDA the check says so."""
    staged = tmp_path / "staged"
    (staged / "base").mkdir(parents=True)
    tiny_wheel(staged / "base", "groco_probe_base")
    (staged / "base" / "lite0.safetensors").write_bytes(b"not used here")
    split(tiny_wheel(tmp_path, "groco_probe_ort"), staged / "ort", 200)
    site, out = tmp_path / "site", tmp_path / "out"
    env = {"STAGED": str(staged), "SITE": str(site), "PYTHON": sys.executable,
           "OUT": str(out), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_device.sh")], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (site / "groco_probe_base.py").is_file() and (site / "groco_probe_ort.py").is_file()
    assert "Skipped: no CUDA device here" in (out / "gpu-tables.md").read_text()
    assert (out / "gpu-log.txt").is_file()
