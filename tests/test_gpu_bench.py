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


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import torch, sys; "
                                    "sys.exit(torch.cuda.is_available())"]).returncode != 0,
                    reason="a CUDA device is here: the full run would start")
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
