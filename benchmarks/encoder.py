"""Encoder throughput on CPU: ONNX Runtime fp32 / fp16 / int8 against PyTorch eager.

    python benchmarks/encoder.py                              # resnet18 + vit_small at 224 px
    python benchmarks/encoder.py --models resnet18 --rounds 7

For each model it writes a random-init run directory (``build_model`` + the trainer's
checkpoint format) over a folder of generated images, exports it through the real
:func:`groco.encoder.export.export_encoder` at each precision (int8 calibrated on those
images), then times one batch of ``--batch-size`` preprocessed images per engine: PyTorch
eager (``torch.inference_mode``, ``torch.set_num_threads(T)``) and each ONNX file in an
:class:`groco.encoder.runtime.Encoder` with ``T`` intra-op threads, graph optimisation ALL.
PyTorch runs twice: as trained (NCHW, "eager") and with channels_last weights and input
(often faster on CPU); every engine gets a ratio against each of the two, both named.
Timing is :mod:`timing`'s: one warm-up call per engine (its first, cold call is reported
as a column of its own, never in a ratio), then ``--rounds`` interleaved rounds, every
engine once per round in rotating order, on the same batch and threads. Reported: median
images/s with the min-max beside it; ratios are ratios of the median times.
Agreement is the export report's per-image cosine to the fp32 model, on images held out
from int8 calibration.

int8 rows: "ORT int8" is what ``groco export --precision int8`` writes (7-bit weights,
``reduce_range``, exact on CPUs without VNNI); "ORT int8 8-bit weights (before)" is the
same quantisation with full 8-bit weights, as groco wrote it before (built here with
:func:`groco.encoder.quantize.to_int8` on the same calibration images, its agreement
measured on the same held-out images), so the two rows give what the fix costs in speed.
Targets: ORT fp32 >= 1.2x PyTorch eager; int8 >= 2x ORT fp32 for the CNN.

    python benchmarks/encoder.py --quick    # resnet18 at 32 px, batch 4 (CI: it runs)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from timing import LoadWatch, Side, interleaved, speedup  # noqa: E402

from groco.encoder.checked import ExportReport, cosines  # noqa: E402
from groco.encoder.export import export_encoder, load_embedding_model, traced  # noqa: E402
from groco.encoder.graph import append_l2_normalisation, encoder_metadata, stamp  # noqa: E402
from groco.encoder.quantize import to_int8  # noqa: E402
from groco.encoder.runtime import Encoder, default_threads  # noqa: E402
from groco.images import find_images, load_image  # noqa: E402
from groco.training import checkpoint  # noqa: E402
from groco.training.config import TrainConfig  # noqa: E402
from groco.training.models import build_model  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_images(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` generated 256x320 images (gradients, noise, blocks) in 4 subfolders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:320] / 320.0
    for i in range(count):
        sub = folder / f"c{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        a, b = rng.random(3) * 255, rng.random(3) * 255
        t = (np.cos(xx * rng.uniform(2, 20)) * np.sin(yy * rng.uniform(2, 20)) + 1) / 2
        pixels = a * t[..., None] + b * (1 - t[..., None])
        pixels += rng.normal(0, 20, pixels.shape)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(sub / f"{i:04d}.png")
    return folder


def write_run(run_dir: Path, data: Path, backbone: str, size: int) -> Path:
    config = TrainConfig(
        data=str(data), out=str(run_dir), backbone=backbone, image_size=size, small_stem=False,
        eval_resize=size, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
        method="groco", epochs=1, projector_hidden=512, projector_dim=128,
        projector_layers=2).resolved()
    torch.manual_seed(0)
    run_dir.mkdir(parents=True)
    checkpoint.save_weights(run_dir, build_model(config).state_dict())
    checkpoint.save_config(run_dir, config.to_dict())
    return run_dir


def int8_full_range(run: Path, report: ExportReport, out: Path) -> tuple[Path, np.ndarray]:
    """The int8 encoder as groco wrote it before: 8-bit weights (no ``reduce_range``),
    calibrated on ``report``'s calibration images; and its cosines to the fp32 model on
    ``report``'s held-out images."""
    model, config, dim = load_embedding_model(run)
    preprocessing = config.preprocessing
    load = lambda files: np.stack([preprocessing.array(load_image(f)) for f in files])  # noqa: E731
    body = traced(model, config.image_size, files=(run / checkpoint.WEIGHTS,
                                                   run / checkpoint.CONFIG))
    final = append_l2_normalisation(to_int8(body, load(report.calibration_files),
                                            reduce_range=False))
    stamp(final, encoder_metadata(preprocessing, dim, "int8", config.backbone, "before"))
    onnx.save_model(final, out)
    held_out = load(report.parity_files)
    agreement = cosines(Encoder(out).embed_arrays(held_out), model.embed(held_out))
    return out, agreement


def time_interleaved(engines: dict[str, Callable[[], object]], rounds: int) -> dict[str, Side]:
    """Each engine's timings: its own warm-up call (the cold one), then ``rounds`` rounds."""
    def progress(r: int, sides: dict[str, Side]) -> None:
        log(f"round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {s.times[-1]:.2f}s" for n, s in sides.items()))

    return interleaved(engines, runs=rounds, warmup=1, on_round=progress)


def bench_model(backbone: str, size: int, root: Path, data: Path, args) -> list[str]:
    run = write_run(root / backbone, data, backbone, size)
    reports: dict[str, ExportReport] = {}
    for precision in ("fp32", "fp16", "int8"):
        log(f"{backbone}: exporting {precision}")
        reports[precision] = export_encoder(run, root / f"{backbone}-{precision}.onnx",
                                            precision=precision)
        log(reports[precision].summary())

    before, before_cosines = int8_full_range(run, reports["int8"],
                                             root / f"{backbone}-int8-before.onnx")
    log(f"{backbone}: int8 with 8-bit weights: cosine min {before_cosines.min():.5f}, "
        f"mean {before_cosines.mean():.5f} on the same held-out images")

    files = find_images(data)[:args.batch_size]
    encoders = {p: Encoder(r.path, batch_size=args.batch_size, threads=args.threads)
                for p, r in reports.items()}
    encoders["int8 8-bit weights (before)"] = Encoder(before, batch_size=args.batch_size,
                                                      threads=args.threads)
    batch = np.stack([encoders["fp32"].preprocess(load_image(f)) for f in files])
    model, _, _ = load_embedding_model(run)
    tensor = torch.from_numpy(batch)

    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    tensor_cl = tensor.contiguous(memory_format=torch.channels_last)

    def torch_eager() -> None:
        with torch.inference_mode():
            model(tensor)

    def torch_channels_last() -> None:
        with torch.inference_mode():
            model_cl(tensor_cl)

    engines: dict[str, Callable[[], object]] = {"PyTorch eager fp32": torch_eager,
                                                 "PyTorch channels_last fp32": torch_channels_last}
    for precision, encoder in encoders.items():
        engines[f"ORT {precision}"] = lambda e=encoder: e.embed_arrays(batch)
    times = time_interleaved(engines, args.rounds)

    n = len(batch)
    eager, channels_last, ort_fp32 = (times[k] for k in (
        "PyTorch eager fp32", "PyTorch channels_last fp32", "ORT fp32"))
    rows = []
    for name in engines:
        precision = name.removeprefix("ORT ")
        report = reports.get(precision) if name.startswith("ORT") else None
        agreement = ("-" if report is None or report.cosine_min is None else
                     f"{report.cosine_min:.4f} / {report.cosine_mean:.4f}")
        if precision == "int8 8-bit weights (before)":
            agreement = f"{before_cosines.min():.4f} / {before_cosines.mean():.4f}"
        side = times[name]
        rows.append(
            f"| {backbone} | {name} | {side.rate_summary(n)} | "
            f"{speedup(eager, side):.2f}x | {speedup(channels_last, side):.2f}x | "
            f"{speedup(ort_fp32, side):.2f}x | {side.cold:.2f} | {agreement} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vit_small_patch16_224"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads and ORT intra-op threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=64,
                        help="generated images (calibration and the timed batch)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs: resnet18 at 32 px, batch 4, 16 images, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.models, args.image_size, args.batch_size = ["resnet18"], 32, 4
        args.images, args.rounds = 16, 2
    torch.set_num_threads(args.threads)
    load = LoadWatch()

    rows = []
    with tempfile.TemporaryDirectory(prefix="groco-bench-encoder-") as tmp:
        root = Path(tmp)
        data = write_images(root / "images", max(args.images, args.batch_size))
        for backbone in args.models:
            rows += bench_model(backbone, args.image_size, root, data, args)

    print(header())
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, timm {timm.__version__}; "
          f"CPU only; {args.threads} threads for both engines (torch.set_num_threads = ORT "
          f"intra_op_num_threads); batch {args.batch_size} at {args.image_size} px; "
          f"one warm-up call per engine, then {args.rounds} interleaved rounds (rotating "
          "order); images/s median (min-max); each ratio is a ratio of median times in this "
          "run; 'first batch' is each engine's cold first call, in no ratio; random-init "
          "weights.")
    print(load.line() + "\n")
    print("| model | engine | images/s median (min-max) | vs PyTorch eager "
          "| vs PyTorch channels_last | vs ORT fp32 | first batch s (cold) "
          "| cosine to fp32 (min / mean) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
