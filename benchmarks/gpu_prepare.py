"""Stage what ``benchmarks/gpu.py`` needs on a lent GPU machine, in loads that travel.

    python benchmarks/gpu_prepare.py            # writes .gpu/ and prints the device calls
    python benchmarks/gpu_prepare.py --ort-gpu  # also onnxruntime-gpu, in parts

A lent machine (``/work/.library/device/README.md``) has its own Python 3.12 with torch,
timm, ONNX Runtime (CPU build), onnx and safetensors, reaches no package index, and takes at
most 64 MiB of the working tree a call. So this script writes, under ``.gpu/`` (ignored by
git), each load below that size:

- ``base``: the wheels groco needs that the image lacks (typer, kornia, kornia-rs, faiss-cpu;
  Python 3.12, manylinux x86-64) and the EfficientNet-Lite0 weights;
- ``data``: Fashion-MNIST's four IDX files (the Debian package's);
- ``ort-1`` ...: with ``--ort-gpu``, the onnxruntime-gpu wheel (CUDA 13, as the image's
  CUDA libraries) cut into parts, one call each, joined on the machine.

faiss-gpu is not staged: its wheel needs CUDA 12's runtime and cuBLAS (hundreds of MB) that
the image does not have, so the index part measures the CPU and says the GPU is missing.

Then one call per load, back to back (the machine goes back after 30 s idle), the last one
running ``benchmarks/gpu_device.sh``: ``.gpu/PLAN.md`` lists them with their ``carry``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / ".gpu"
LOAD_LIMIT = 60 * 2**20
"""Bytes a load may hold: the call's 64 MiB less the tracked tree and some room."""
WHEELS = ("typer==0.29.2", "kornia==0.9.0", "kornia-rs==0.2.0", "faiss-cpu==1.13.2")
ORT_GPU = "onnxruntime-gpu==1.31.1"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
FMNIST = Path("/usr/share/datasets/fashion-mnist")
LITE0 = REPO / ".bench" / "lite0.safetensors"


def download(requirement: str, into: Path) -> None:
    """The Python 3.12 x86-64 wheel of ``requirement`` into ``into`` (no dependencies)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "-d", str(into), requirement], check=True)


def split(path: Path, into: Path, part_bytes: int) -> list[Path]:
    """``path`` cut into ``part-NN`` files of at most ``part_bytes`` under ``into-K``
    folders, one a load; ``cat`` of the parts in name order gives ``path`` back."""
    loads = []
    with path.open("rb") as source:
        k = 1
        while chunk := source.read(part_bytes):
            load = into.with_name(f"{into.name}-{k}")
            load.mkdir(parents=True, exist_ok=True)
            (load / f"part-{k:02d}").write_bytes(chunk)
            (load / "name").write_text(path.name + "\n")
            loads.append(load)
            k += 1
    return loads


def load_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files
               if f and (REPO / f.decode()).is_file())


def plan(loads: list[Path]) -> str:
    """The device calls, in order, as Markdown."""
    lines = ["# Device calls for benchmarks/gpu.py (back to back: 30 s idle gives the "
             "machine back)", ""]
    for n, load in enumerate(loads, 1):
        name = load.relative_to(REPO)
        last = n == len(loads)
        command = ("bash benchmarks/gpu_device.sh" if last else
                   f"mkdir -p /root/groco-gpu && cp -r {name} /root/groco-gpu/ && "
                   "ls /root/groco-gpu")
        lines += [f"{n}. carry `[\"{name}\"]`, timeout_s {590 if last else 120}:",
                  f"   `{command}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ort-gpu", action="store_true",
                        help=f"stage {ORT_GPU} too (about 5 more calls)")
    args = parser.parse_args()
    if not LITE0.is_file():
        raise SystemExit(f"{LITE0} not found: python benchmarks/pretrained_weights.py "
                         f"--out {LITE0}")
    if not FMNIST.is_dir():
        raise SystemExit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")
    shutil.rmtree(STAGE, ignore_errors=True)
    base, data = STAGE / "base", STAGE / "data"
    base.mkdir(parents=True)
    for requirement in WHEELS:
        download(requirement, base)
    shutil.copy2(LITE0, base / LITE0.name)
    shutil.copytree(FMNIST, data)
    loads = [base]
    if args.ort_gpu:
        wheels = STAGE / "ort-wheel"
        download(ORT_GPU, wheels)
        loads += split(next(wheels.glob("*.whl")), STAGE / "ort", 50 * 2**20)
        shutil.rmtree(wheels)
    loads.append(data)
    room = LOAD_LIMIT - tracked_bytes()
    for load in loads:
        size = load_bytes(load)
        if size > room:
            raise SystemExit(f"{load}: {size / 2**20:.1f} MiB, more than the "
                             f"{room / 2**20:.1f} MiB a call can carry beside the tree")
        print(f"{load.relative_to(REPO)}: {size / 2**20:.1f} MiB")
    (STAGE / "PLAN.md").write_text(plan(loads))
    print((STAGE / "PLAN.md").read_text())


if __name__ == "__main__":
    main()
