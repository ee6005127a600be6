"""One part of ``benchmarks/gpu.py`` (which see), run as ``python benchmarks/gpu_parts.py PART``.

Each part prints its own Markdown table(s) on standard output; a comparison whose GPU side
cannot run here prints one line saying why and still measures the CPU side.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from timing import interleaved, ratio_summary, speedup  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TRAIN_SECONDS = 110.0
"""Training time the run part aims its epochs at (about 3 minutes of the part with the
probe, the k-NN monitor, the export and the indexes)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def no_gpu_line(what: str) -> str:
    return f"{what}: skipped, no CUDA device here (torch.cuda.is_available() is False)."


# ----------------------------------------------------------------------------- env
def env(args: argparse.Namespace) -> None:
    """What this machine offers the GPU path, one row each."""
    import faiss
    import onnxruntime as ort
    import timm

    props = torch.cuda.get_device_properties(0) if CUDA else None
    rows = [("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
            ("CUDA device", props.name if props else "none"),
            ("GPU memory", f"{props.total_memory / 2**30:.1f} GiB" if props else "-"),
            ("timm", timm.__version__),
            ("ONNX Runtime", f"{ort.__version__}; providers "
                             f"{', '.join(ort.get_available_providers())}"),
            ("FAISS", f"{faiss.__version__}; GPUs seen {faiss.get_num_gpus()}"),
            ("CPU cores", str(os.cpu_count()))]
    print("| what | value |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")


# ----------------------------------------------------------------------------- train
def loss_seconds(trainer, reps: int) -> float:
    """Median seconds of the GroCo loss's forward+backward alone, on one step's projections
    (detached leaves, so no network runs)."""
    images = next(iter(trainer.loader))[0]
    views = trainer._views(images)
    with torch.no_grad(), torch.autocast(trainer.device.type, dtype=torch.bfloat16,
                                         enabled=trainer.autocast_dtype is not None):
        projections = trainer.objective.project(views)
    leaves = [p.detach().float().requires_grad_() for p in projections]
    times = []
    for i in range(reps + 3):
        sync()
        start = time.perf_counter()
        trainer.objective.loss(leaves).backward()
        sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def train(args: argparse.Namespace) -> None:
    from train_throughput import bare_steps, training_epoch

    from groco.training.config import TrainConfig
    from groco.training.trainer import Trainer

    if args.quick:
        models, size, batch, count, workers, rounds = (
            ["resnet18", "vit_tiny_patch16_224"], 32, 16, 32, 0, 1)
    else:
        models, size, batch, count, workers, rounds = (
            ["resnet50", "vit_small_patch16_224"], 224, 128, 1024, 8, 3)
    from index_throughput import write_images

    data = args.work / f"train-images-{count}"
    if not (data / ".complete").exists():
        write_images(data, count, 256 if not args.quick else 32)
        (data / ".complete").write_text("ok\n")
    print(f"{count} generated JPEGs ({256 if not args.quick else 32} px) decoded by {workers} "
          f"workers, batch {batch} x 2 views at {size} px, device {DEVICE}, "
          f"{'bf16 autocast' if CUDA else 'fp32 (no autocast on CPU)'}, channels-last for "
          f"CNNs; one warm-up epoch per side, then {rounds} interleaved rounds; images/s "
          "median (min-max), ratio of medians (per-round range).\n")
    if not CUDA:
        print(no_gpu_line("GPU training") + " The rows below ran on the CPU.\n")
    print("| network | bare fwd+bwd+step img/s | GroCo epoch img/s | GroCo / bare | "
          "loss fwd+bwd ms | loss share of a step | peak GPU memory GiB |")
    print("|---|---|---|---|---|---|---|")
    for name in models:
        log(f"train: {name}")
        config = TrainConfig(data=str(data), out=str(args.work / f"train-{name}"),
                             method="groco", backbone=name, image_size=size, batch_size=batch,
                             workers=workers, small_stem=False, epochs=rounds + 2,
                             eval_every=0, device=DEVICE)
        trainer = Trainer(config, show_progress=False)
        images = trainer.steps_per_epoch * batch
        sides = interleaved({"groco": training_epoch(trainer), "bare": bare_steps(trainer)},
                            runs=rounds, warmup=1)
        loss_s = loss_seconds(trainer, reps=10 if not args.quick else 2)
        step_s = sides["groco"].median / trainer.steps_per_epoch
        peak = "-"
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            training_epoch(trainer)()
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"
        print(f"| {name} | {sides['bare'].rate_summary(images)} | "
              f"{sides['groco'].rate_summary(images)} | "
              f"{ratio_summary(sides['bare'], sides['groco'])} | {loss_s * 1e3:.2f} | "
              f"{loss_s / step_s:.1%} | {peak} |", flush=True)
        del trainer
        if CUDA:
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- run
def epochs_for(images_per_s: float, bank: int, seconds: float = TRAIN_SECONDS,
               most: int = 40) -> int:
    """Epochs of ``bank`` images that fit ``seconds`` of training at ``images_per_s``
    (at least 1, at most ``most``)."""
    if not images_per_s > 0:
        return 1
    return int(min(most, max(1, seconds * images_per_s // bank)))


def probe_speed(data: Path, weights: Path, size: int, batch: int, workers: int,
                work: Path) -> float:
    """Images/s of ``groco train`` from ``weights`` on ``data`` over a short epoch (after a
    warm-up epoch), through the trainer the CLI runs."""
    from groco.training.config import TrainConfig
    from groco.training.trainer import Trainer

    config = TrainConfig(data=str(data), out=str(work / "probe"), method="groco",
                         backbone="tf_efficientnet_lite0", weights=str(weights),
                         image_size=size, batch_size=batch, workers=workers, epochs=2,
                         max_steps_per_epoch=8, eval_every=0, device=DEVICE)
    trainer = Trainer(config, show_progress=False)
    trainer.train_epoch()
    trainer.epoch += 1
    return trainer.train_epoch()[1]


def run(args: argparse.Namespace) -> None:
    from fashion_mnist import write_folder

    if args.quick:
        bank, queries, size, batch, workers = 200, 50, 32, 32, 0
    else:
        bank, queries, size, batch, workers = 20000, 2000, 96, 256, 8
    weights = args.weights or HERE.parent / ".bench" / "lite0.safetensors"
    if not weights.is_file():
        raise SystemExit(f"{weights} not found: python benchmarks/pretrained_weights.py "
                         f"--out {weights}")
    folder = write_folder(args.work / "fmnist", "train", bank)
    rate = probe_speed(folder, weights, size, batch, workers, args.work / "probe")
    epochs = 1 if args.quick else epochs_for(rate, bank)
    log(f"run: {rate:.0f} img/s in the probe: {epochs} epochs of {bank}")
    print(f"Fashion-MNIST, {queries} test images against {bank} training images; "
          f"EfficientNet-Lite0 ImageNet start at {size} px, batch {batch}, device {DEVICE}; "
          f"the probe trained {rate:.0f} images/s, so {epochs} epoch(s) aim at "
          f"{TRAIN_SECONDS:.0f} s of training.\n")
    argv = [sys.executable, str(HERE / "quality.py"), "--collection", "fmnist",
            "--bank", str(bank), "--queries", str(queries), "--rows", "pretrained", "groco",
            "--image-size", str(size), "--epochs", str(epochs), "--batch-size", str(batch),
            "--workers", str(workers), "--device", DEVICE, "--weights", str(weights),
            "--data-dir", str(args.work), "--out", str(args.work / "quality")]
    if args.quick:
        shown = " ".join(["python", *argv[1:]]).replace(str(HERE.parent) + "/", "")
        print(f"Skipped in the quick mode (benchmarks/quality.py's own quick run covers it): "
              f"`{shown}`")
        return
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"quality.py exited {done.returncode}")
    table = done.stdout.strip()
    print(table[table.index("| encoder"):] if "| encoder" in table else table)
    results = json.loads((args.work / "quality" / "results.json").read_text())
    failed = [r["label"] for r in results if "error" in r]
    if failed:
        raise SystemExit(f"rows not measured: {', '.join(failed)}")


# ----------------------------------------------------------------------------- export
def export(args: argparse.Namespace) -> None:
    from encoder import write_images as write_photos
    from encoder import write_run

    from groco.encoder.export import export_encoder, load_embedding_model
    from groco.encoder.runtime import CPU, Encoder, cuda_possible
    from groco.encoder.runtime import CUDA as CUDA_PROVIDER
    from groco.images import find_images, load_image

    name, size, batch, rounds = (("resnet18", 32, 4, 2) if args.quick
                                 else ("resnet50", 224, 64, 5))
    data = write_photos(args.work / "export-images", max(16, batch))
    run_dir = args.work / f"export-run-{name}"
    if not run_dir.exists():
        write_run(run_dir, data, name, size)
    files = find_images(data)[:batch]
    model, config, _ = load_embedding_model(run_dir)
    host = np.stack([config.preprocessing.array(load_image(f)) for f in files])
    providers = [CUDA_PROVIDER, CPU] if cuda_possible() else [CPU]
    engines, notes = {}, []
    for precision in ("fp32", "fp16"):
        path = args.work / f"export-{name}-{precision}.onnx"
        report = export_encoder(run_dir, path, precision=precision)
        encoder = Encoder(path, providers=providers, batch_size=batch)
        if encoder.provider != providers[0]:
            raise SystemExit(f"{path.name}: asked for {providers[0]}, ONNX Runtime runs "
                             f"{encoder.provider}: a silent CPU fallback")
        engines[f"ORT {encoder.provider.removesuffix('ExecutionProvider')} {precision}"] = (
            lambda e=encoder, h=host: e.embed_arrays(h))
        notes.append(f"{precision}: {report.summary()}")
    if not cuda_possible():
        notes.append("ONNX Runtime's CUDA provider: skipped, not in this build or no NVIDIA "
                     "driver (onnxruntime-gpu with a driver is needed); the ORT rows ran on "
                     "the CPU.")
    device = torch.device(DEVICE)
    fp32 = copy.deepcopy(model).to(device)
    if CUDA:
        fp32 = fp32.to(memory_format=torch.channels_last)
    fp16 = copy.deepcopy(fp32).half() if CUDA else None

    def torch_side(net, dtype):
        def call() -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(host).to(device, dtype)
                if CUDA:
                    x = x.contiguous(memory_format=torch.channels_last)
                return net(x).float().cpu().numpy()
        return call

    engines = {f"PyTorch {DEVICE} fp32": torch_side(fp32, torch.float32), **engines}
    if fp16 is not None:
        engines["PyTorch cuda fp16"] = torch_side(fp16, torch.float16)
    else:
        notes.append(no_gpu_line("PyTorch fp16 on the GPU"))
    sides = interleaved(engines, runs=rounds, warmup=2)
    base = sides[f"PyTorch {DEVICE} fp32"]
    print(f"{name} at {size} px, batch {batch}, random-init weights; every engine from a host "
          "float32 batch to host embeddings (copies included); one cold and one warm-up call "
          f"each, then {rounds} interleaved rounds; images/s median (min-max).\n")
    for note in notes:
        print(f"- {note}")
    print("\n| engine | images/s median (min-max) | vs PyTorch fp32 | first call s (cold) |")
    print("|---|---|---|---|")
    for label, side in sides.items():
        print(f"| {label} | {side.rate_summary(batch)} | {speedup(base, side):.2f}x | "
              f"{side.cold:.2f} |")


# ----------------------------------------------------------------------------- index
def index(args: argparse.Namespace) -> None:
    import faiss
    from index import make_world, sample

    from groco.index.faiss.factory import apply_search_params
    from groco.index.faiss.query import query_recalls
    from groco.index.faiss.source import ArraySource
    from groco.index.faiss.spec import BuildSpec, TuningSpec
    from groco.index.faiss.tune import build_tuned_index

    n, dim, nlist, n_queries = ((5000, 64, 32, 200) if args.quick
                                else (1_000_000, 512, 4096, 2000))
    rng = np.random.default_rng(0)
    world = make_world(rng, 2000 if not args.quick else 50, dim, 16, 32)
    vectors = sample(world, n, rng, spread=0.6, noise=0.3)
    queries = sample(world, n_queries, rng, spread=0.6, noise=0.3)
    exact = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    gpus = faiss.get_num_gpus()
    tuning = TuningSpec(target_recall=0.95)
    print(f"{n:,} x {dim} synthetic unit vectors (benchmarks/index.py's clustered "
          f"generator), IVF{nlist},Flat tuned to recall@10 {tuning.target_recall} on held-out "
          f"vectors; {n_queries:,} fresh queries, recall@10 against exact search; each build "
          "once, each search one warm-up and 3 rounds.\n")
    builds = {"CPU": False}
    if gpus:
        builds["GPU"] = True
    else:
        print(f"- FAISS GPU build and search: skipped, FAISS {faiss.__version__} sees no GPU "
              "(faiss-gpu with a CUDA driver is needed).\n")
    print("| build k-means on | build s | nprobe | search on | queries/s median (min-max) | "
          "recall@10 | search vs CPU |")
    print("|---|---|---|---|---|---|---|")
    for label, use_gpu in builds.items():
        log(f"index: build, k-means on {label}")
        start = time.perf_counter()
        built, params = build_tuned_index(ArraySource(vectors),
                                          BuildSpec(factory=f"IVF{nlist},Flat", use_gpu=use_gpu),
                                          tuning)
        seconds = time.perf_counter() - start
        searchers = {"CPU": built}
        if gpus:
            resources = faiss.StandardGpuResources()
            on_gpu = faiss.index_cpu_to_gpu(resources, 0, built)
            apply_search_params(on_gpu, params)
            searchers["GPU"] = on_gpu
        sides = interleaved({k: (lambda s=s: s.search(queries, 10)) for k, s in
                             searchers.items()}, runs=3, warmup=1)
        for where, searcher in searchers.items():
            recall = query_recalls(searcher.search(queries, 10)[1], exact, 10).mean()
            print(f"| {label} | {seconds:.1f} | {params.get('nprobe', '-')} | {where} | "
                  f"{sides[where].rate_summary(n_queries)} | {recall:.3f} | "
                  f"{speedup(sides['CPU'], sides[where]):.2f}x |", flush=True)


PARTS = {"env": env, "train": train, "run": run, "export": export, "index": index}


def main() -> None:
    parts = PARTS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", choices=list(parts))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path(".bench/gpu"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    parts[args.part](args)


if __name__ == "__main__":
    main()
