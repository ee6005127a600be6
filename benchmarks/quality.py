"""Quality is a comparison: every encoder groco makes beside what a user has without it.

    python benchmarks/pretrained_weights.py --out .bench/lite0.safetensors      # once
    python benchmarks/quality.py --collection digits --image-size 64 --epochs 3
    python benchmarks/quality.py --collection fmnist --bank 5000 --queries 2000 \\
        --image-size 64 --epochs 2

One table per run of this script, every row through the product's own path: an image
folder (class = subfolder) -> ``groco train`` -> ``groco export`` -> ``groco index build``
(exact ``Flat`` index, so the figures measure the encoder, not the index) -> figures.

Rows (``--rows``, in this order):

- ``raw``: raw pixels, ``groco export --raw-pixels N``;
- ``untrained``: the backbone freshly initialised, ``groco export --backbone B
  --image-size N``;
- ``pretrained``: the ImageNet start, ``groco export --backbone B --image-size N
  --weights W`` (W from ``benchmarks/pretrained_weights.py``);
- ``groco``: ``groco train --weights W`` with the product's fine-tuning defaults;
- ``simclr``: the same with ``--method simclr`` and the same budget;
- ``scratch``: ``groco train`` without weights (``--scratch-backbone``, ``--scratch-epochs``).

``--groco-lrs`` adds GroCo-adapted rows at other learning rates, ``--variant`` rows with
other ``groco train`` options, and ``--collapse-lr`` one run made to collapse (a huge
learning rate): with every run's per-epoch ``metrics.csv`` (copied into ``runs.csv``, one
row per run and epoch) they feed the rank-correlation table between label-free scores and
k-NN.

Figures (``benchmarks/_common.retrieval_figures``, from the vectors stored in the index):
weighted k-NN top-1 (k=20, T=0.07, cosine), precision@10, mAP@R. Fashion-MNIST: the test
images (``--queries``, a balanced subset, default all 10k) are queries against the
training images (``--bank``, default all 60k), each folder indexed with the same
encoder; the digits: leave-one-out. ``groco index eval`` over every bank index is printed
too (its leave-one-out figures on the bank). Minutes and images/s per training run come
from the run's wall time and its ``metrics.csv``. Training runs score leave-one-out k-NN
on the bank each epoch (epoch 0 included) and ``groco export`` takes their best epoch by
it, so the Fashion-MNIST test queries are never seen before the table.

Writes under ``--out``: ``<row>/`` (run, ``encoder.onnx``, indexes, logs of every
command), ``results.json``, ``runs.csv`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, retrieval_figures  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

GROCO = ([str(Path(sys.executable).with_name("groco"))]
         if Path(sys.executable).with_name("groco").is_file()
         else [sys.executable, "-m", "groco.cli"])
"""The product's command: its entry point, or ``python -m groco.cli`` where the project is
on the path without being installed (a GPU machine's own Python)."""
BOX = " \t│╭╰╮╯─"  # typer's error panel
ALL_ROWS = ["raw", "untrained", "pretrained", "groco", "simclr", "scratch"]


class StepFailed(RuntimeError):
    """A product command exited non-zero; the message is its last error line."""


@dataclass
class Row:
    """One encoder of the table and how it is made."""

    key: str
    label: str
    train: list[str] | None = None  # groco train options (None: no training)
    export: list[str] = field(default_factory=list)  # groco export options without a run
    method: str = "-"
    lr: str = "default"


def run_step(command: list[str], log: Path, timeout: float | None = None) -> float:
    """Run a product command, its output in ``log``; seconds taken, or ``StepFailed``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as error:
            raise StepFailed(f"{command[len(GROCO)]} ran past {timeout:.0f} s") from error
    if done.returncode != 0:
        lines = [line.strip(BOX) for line in log.read_text().splitlines()]
        lines = [line for line in lines if any(c.isalnum() for c in line)]
        sub = " ".join(command[len(GROCO):len(GROCO) + 2])
        raise StepFailed(f"`{sub}` exited {done.returncode}: "
                         f"{lines[-1] if lines else 'no output'}")
    return time.perf_counter() - started


def index_vectors(index_dir: Path) -> tuple[np.ndarray, list[str | None]]:
    """The vectors an index stores, in id order, and each one's label (first subfolder)."""
    from groco.index import shards
    from groco.index.store import DB_NAME, EMBEDDED, Store

    with Store(index_dir / DB_NAME, readonly=True) as store:
        _, numbers, rows = store.embedded_locations()
        labels = [r.label for r in store.iter_rows(EMBEDDED)]
    return shards.gather(index_dir, numbers, rows), labels


def encode_labels(names: list[str | None], classes: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(classes)}
    missing = sorted({str(n) for n in names if n not in lookup})
    if missing:
        raise SystemExit(f"images outside the class subfolders: {missing[:3]}")
    return np.array([lookup[n] for n in names], dtype=np.int64)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def train_speed(metrics: list[dict[str, str]]) -> float | None:
    """Mean images/s over the training epochs of ``metrics.csv`` (epoch 0 has none)."""
    speeds = []
    for m in metrics:
        try:
            value = float(m.get("images_per_s") or "nan")
        except ValueError:
            continue
        if np.isfinite(value) and value > 0:
            speeds.append(value)
    return float(np.mean(speeds)) if speeds else None


def build_rows(args: argparse.Namespace) -> list[Row]:
    """The table's rows from the command line (see the module docstring)."""
    size = str(args.image_size)
    stem = [] if args.small_stem == "auto" else [
        "--small-stem" if args.small_stem == "on" else "--no-small-stem"]
    common = ["--image-size", size, "--batch-size", str(args.batch_size), "--workers",
              str(args.workers), "--device", args.device, "--seed", str(args.seed), *stem]
    if args.max_steps_per_epoch:
        common += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)]
    # The k-NN monitor (and so the kept epoch) is leave-one-out on the bank: the test
    # queries stay unseen until the table.
    weights = str(args.weights.resolve())
    adapted = ["--backbone", args.backbone, "--weights", weights, "--epochs", str(args.epochs),
               *common, *args.train_arg]
    catalogue = {
        "raw": [Row("raw", f"raw pixels ({size} px)", export=["--raw-pixels", size])],
        "untrained": [Row("untrained", f"untrained {args.backbone}",
                          export=["--backbone", args.backbone, "--image-size", size, *stem])],
        "pretrained": [Row("pretrained", f"pretrained start ({args.backbone}, ImageNet)",
                           export=["--backbone", args.backbone, "--image-size", size,
                                   "--weights", weights, *stem])],
        "groco": [Row("groco", "GroCo adapted", train=["--method", "groco", *adapted],
                      method="groco")],
        "simclr": [Row("simclr", "SimCLR adapted (same budget)",
                       train=["--method", "simclr", *adapted], method="simclr")],
        "scratch": [Row("scratch", f"GroCo from scratch ({args.scratch_backbone})",
                        train=["--method", "groco", "--backbone", args.scratch_backbone,
                               "--epochs", str(args.scratch_epochs or args.epochs), *common,
                               *args.scratch_arg], method="groco")],
    }
    rows = [row for key in args.rows for row in catalogue[key]]
    for lr in args.groco_lrs:
        rows.append(Row(f"groco-lr{lr:g}", f"GroCo adapted, lr {lr:g}",
                        train=["--method", "groco", *adapted, "--lr", f"{lr:g}"],
                        method="groco", lr=f"{lr:g}"))
    for variant in args.variant:
        key, _, options = variant.partition(":")
        rows.append(Row(f"groco-{key}", f"GroCo adapted, {options}",
                        train=["--method", "groco", *adapted, *options.split()],
                        method="groco", lr=key))
    if args.collapse_lr:
        lr = args.collapse_lr
        rows.append(Row("collapse", f"GroCo adapted, lr {lr:g} (made to collapse)",
                        train=["--method", "groco", *adapted, "--lr", f"{lr:g}"],
                        method="groco", lr=f"{lr:g}"))
    return rows


def make_encoder(row: Row, work: Path, bank: Path, timeout: float) -> dict:
    """Train (when the row trains) and export; ``{"encoder", "train_minutes", ...}``."""
    encoder = work / "encoder.onnx"
    facts: dict = {"encoder": str(encoder)}
    if row.train is None:
        seconds = run_step([*GROCO, "export", *row.export, "--out", str(encoder)],
                           work / "export.log", timeout)
        facts["export_seconds"] = round(seconds, 1)
        return facts
    run_dir = work / "run"
    seconds = run_step([*GROCO, "train", str(bank), "--out", str(run_dir), *row.train],
                       work / "train.log", timeout)
    metrics = read_metrics(run_dir)
    speed = train_speed(metrics)
    facts.update(train_minutes=round(seconds / 60, 2), metrics=metrics,
                 train_images_per_s=None if speed is None else round(speed, 1))
    seconds = run_step([*GROCO, "export", str(run_dir), "--out", str(encoder)],
                       work / "export.log", timeout)
    facts["export_seconds"] = round(seconds, 1)
    facts["export_log"] = (work / "export.log").read_text().splitlines()[1:4]
    return facts


def measure(row: Row, work: Path, bank: Path, queries: Path | None, classes: list[str],
            args: argparse.Namespace) -> dict:
    """Everything about one row; failures are recorded, not fatal (one line each)."""
    result: dict = {"key": row.key, "label": row.label, "method": row.method, "lr": row.lr}
    try:
        result.update(make_encoder(row, work, bank, args.step_timeout))
        encoder = result["encoder"]
        index_options = ["--index-type", "Flat", "--no-progress", "--workers",
                         str(max(args.workers, 1))]
        seconds = run_step([*GROCO, "index", "build", str(bank), "--encoder", encoder, "--out",
                            str(work / "index"), *index_options], work / "index.log",
                           args.step_timeout)
        bank_x, bank_names = index_vectors(work / "index")
        result["embed_images_per_s"] = round(len(bank_x) / seconds, 1)
        bank_y = encode_labels(bank_names, classes)
        if queries is None:
            figures = retrieval_figures(bank_x, bank_y)
        else:
            run_step([*GROCO, "index", "build", str(queries), "--encoder", encoder, "--out",
                      str(work / "queries"), *index_options], work / "queries.log",
                     args.step_timeout)
            query_x, query_names = index_vectors(work / "queries")
            figures = retrieval_figures(bank_x, bank_y, query_x,
                                        encode_labels(query_names, classes))
        result.update(figures)
    except (StepFailed, OSError, ValueError) as error:
        result["error"] = str(error)
    return result


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def kept_epoch(result: dict) -> str:
    """``kept/last`` epoch of a training row (``groco export`` takes the kept one), or -."""
    metrics = result.get("metrics") or []
    kept = [m["epoch"] for m in metrics if m.get("kept") == "1"]
    return f"{kept[-1]}/{metrics[-1]['epoch']}" if kept else "-"


def table(results: list[dict]) -> str:
    lines = ["| encoder | k-NN top-1 | precision@10 | mAP@R | kept epoch | train minutes | "
             "train images/s | embed images/s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['label']} | not measured: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['label']} | {pct(r.get('knn_top1'))} | "
                     f"{pct(r.get('precision_at_10'))} | {pct(r.get('map_at_r'))} | "
                     f"{kept_epoch(r)} | {r.get('train_minutes', '-')} | "
                     f"{r.get('train_images_per_s') or '-'} | "
                     f"{r.get('embed_images_per_s', '-')} |")
    return "\n".join(lines)


def write_runs_csv(path: Path, collection: str, results: list[dict]) -> None:
    """Every training run's ``metrics.csv`` rows, tagged with the run (for issue 16's
    rank correlations), plus the run's final figures from the index."""
    rows, fields = [], ["collection", "run", "method", "lr"]
    for r in results:
        for m in r.get("metrics", []):
            rows.append({"collection": collection, "run": r["key"], "method": r["method"],
                         "lr": r["lr"], **m})
            fields += [k for k in m if k not in fields]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


NOT_CANDIDATES = {"collection", "run", "method", "lr", "epoch", "step", "images_per_s",
                  "broken", "knn_top1", "seconds", "kept"}


def kendall_table(paths: list[Path]) -> str:
    """Kendall tau between each candidate column of ``runs.csv`` files and k-NN top-1.

    Candidates: every numeric column but bookkeeping and ``knn_top1`` (the training loss
    included; a score where lower is better shows a negative tau). Three views:
    **within runs** (tau over one run's epochs, epoch 0 included, mean and minimum over
    runs with 3+ scored epochs), **across runs** (tau over the runs' last epochs) and
    **pooled** (tau over every (run, epoch) point).
    """
    from scipy.stats import kendalltau

    points: list[dict[str, str]] = []
    for path in paths:
        with path.open(newline="") as f:
            points += list(csv.DictReader(f))

    def number(value: str | None) -> float:
        try:
            return float(value) if value not in (None, "") else float("nan")
        except ValueError:
            return float("nan")

    names = sorted({k for p in points for k in p} - NOT_CANDIDATES)
    runs: dict[tuple[str, str], list[dict[str, str]]] = {}
    for p in points:
        runs.setdefault((p.get("collection", ""), p["run"]), []).append(p)

    def tau(rows: list[dict[str, str]], name: str) -> float:
        a = np.array([number(r.get(name)) for r in rows])
        b = np.array([number(r.get("knn_top1")) for r in rows])
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3:
            return float("nan")
        return float(kendalltau(a[ok], b[ok]).statistic)

    lines = ["| candidate | tau within runs (mean, min; runs) | tau across runs (last epochs; "
             "runs) | tau pooled (points) |", "|---|---|---|---|"]
    for name in names:
        within = [t for t in (tau(r, name) for r in runs.values()) if np.isfinite(t)]
        last = [max(r, key=lambda p: number(p.get("epoch"))) for r in runs.values()]
        pooled = [p for p in points if np.isfinite(number(p.get(name)))]
        inside = (f"{np.mean(within):+.2f}, {np.min(within):+.2f}; {len(within)}" if within
                  else "-")
        lines.append(f"| {name} | {inside} | {tau(last, name):+.2f}; {len(last)} | "
                     f"{tau(points, name):+.2f} ({len(pooled)}) |")
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> tuple[Path, Path | None, str]:
    """(bank folder, query folder or None, description) of the collection."""
    if args.collection == "digits":
        from groco.demo import write_digits

        bank = write_digits(args.data_dir / "digits")
        count = sum(1 for _ in bank.glob("*/*.png"))
        return bank, None, f"the digits ({count} images of 32 px), leave-one-out"
    bank = write_folder(args.data_dir / "fmnist", "train", args.bank)
    queries = write_folder(args.data_dir / "fmnist", "t10k", args.queries)
    n_bank = sum(1 for _ in bank.glob("*/*.png"))
    n_queries = sum(1 for _ in queries.glob("*/*.png"))
    subset = " (balanced subsets)" if n_bank < 60000 or n_queries < 10000 else ""
    return bank, queries, (f"Fashion-MNIST, {n_queries} test images as queries against "
                           f"{n_bank} training images{subset}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", choices=["fmnist", "digits"], default="digits")
    parser.add_argument("--bank", type=int, default=None,
                        help="Fashion-MNIST training images in the bank (default: all 60k)")
    parser.add_argument("--queries", type=int, default=None,
                        help="Fashion-MNIST test images as queries (default: all 10k)")
    parser.add_argument("--rows", nargs="+", choices=ALL_ROWS, default=ALL_ROWS)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", type=Path, default=Path(".bench/lite0.safetensors"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--small-stem", choices=["auto", "on", "off"], default="auto",
                        help="passed to train and export (auto: the product's choice)")
    parser.add_argument("--epochs", type=int, default=3, help="adapted runs' epochs")
    parser.add_argument("--scratch-backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--scratch-epochs", type=int, default=None,
                        help="from-scratch epochs (default: --epochs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groco-lrs", type=float, nargs="*", default=[],
                        help="extra GroCo-adapted runs at these base LRs")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY:OPTIONS",
                        help="an extra GroCo-adapted run with these groco train options, "
                             "e.g. 'stages3:--trainable-stages 3' (repeatable)")
    parser.add_argument("--collapse-lr", type=float, default=None,
                        help="an extra GroCo-adapted run at this (huge) LR, made to collapse")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="extra option for the adapted runs' groco train (repeatable)")
    parser.add_argument("--scratch-arg", action="append", default=[],
                        help="extra option for the from-scratch run's groco train")
    parser.add_argument("--data-dir", type=Path, default=Path(".bench"))
    parser.add_argument("--out", type=Path, default=None,
                        help="work folder (default: .bench/quality/<collection>); replaced")
    parser.add_argument("--step-timeout", type=float, default=4 * 3600)
    parser.add_argument("--tau", type=Path, nargs="+", default=None, metavar="RUNS_CSV",
                        help="only print the Kendall tau table of these runs.csv files")
    parser.add_argument("--table", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only print the table of an earlier run's results.json")
    args = parser.parse_args()
    if args.tau:
        print(header())
        print(kendall_table(args.tau))
        return
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if not args.weights.is_file() and ({"pretrained", "groco", "simclr"} & set(args.rows)
                                       or args.groco_lrs or args.collapse_lr):
        raise SystemExit(f"{args.weights} not found: run benchmarks/pretrained_weights.py")
    out = args.out or Path(".bench/quality") / args.collection
    if out.exists():
        shutil.rmtree(out)  # one table, one run: nothing carried over from an earlier one
    out.mkdir(parents=True)

    bank, queries, description = prepare(args)
    classes = sorted(p.name for p in bank.iterdir() if p.is_dir())
    load = os.getloadavg()
    print(header())
    print(f"{description}; {args.backbone} at {args.image_size} px (small stem "
          f"{args.small_stem}), adapted runs {args.epochs} epochs, batch {args.batch_size}, "
          f"device {args.device}, seed {args.seed}; load average at start "
          f"{load[0]:.1f}\n", flush=True)
    rows = build_rows(args)
    results = []
    for row in rows:
        result = measure(row, out / row.key, bank, queries, classes, args)
        results.append(result)
        if "error" in result:
            print(f"{row.label}: not measured: {result['error']}", flush=True)
        else:
            print(f"{row.label}: k-NN {pct(result['knn_top1'])}, P@10 "
                  f"{pct(result['precision_at_10'])}, mAP@R {pct(result['map_at_r'])}, "
                  f"train {result.get('train_minutes', '-')} min", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        write_runs_csv(out / "runs.csv", args.collection, results)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f} (1 min), {load[2]:.1f} (15 min)\n")
    text = table(results)
    print(text)
    (out / "table.md").write_text(header() + "\n" + description + "\n\n" + text + "\n")
    indexes = [str(out / r["key"] / "index") for r in results if "error" not in r]
    if indexes:
        done = subprocess.run([*GROCO, "index", "eval", *indexes], capture_output=True,
                              text=True, check=False)
        print("\n`groco index eval` over the bank indexes:\n")
        print(done.stdout.strip() or done.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
