"""Run every benchmark and write their tables to one file, with the machine, command and date.

    python -m benchmarks                   # every table of BENCHMARKS.md (hours on 2 cores)
    python -m benchmarks --quick           # each script on tiny inputs (CI runs this)
    python -m benchmarks --only sorting encoder --out .bench/tables.md
    python -m benchmarks --gpu             # the GPU path on a CUDA machine (benchmarks/gpu.py)
    python -m benchmarks --list

Each script runs in its own process (``python benchmarks/NAME.py ARGS``), one after
another, so no two timings share the CPU (``--quick --jobs 2`` runs two at a time: its
timings mean nothing, but on 2 cores two scripts' thread pools slow each other: 95 s
against 88 s one at a time). In the quick mode that process is forked from one that has
imported torch, timm, ONNX Runtime and FAISS already (``preloaded.py``), which saves each
script about 4 s of imports; a full run starts a fresh interpreter for each. A script has
passed when it exits 0 and prints a Markdown table; its output goes under its own heading
in ``--out``.

``--quick`` gives every script the tiny inputs of :data:`SCRIPTS`; its figures check that
the scripts run, and say nothing about speed or quality. On every machine alike, it points
the scripts at a Fashion-MNIST stand-in made of scikit-learn's digits
(``fashion_mnist.write_stand_in``) and gives them a randomly initialised EfficientNet-Lite0
file for the ImageNet weights. Full runs skip a script whose data or weights are missing,
and say so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import machine, run_limited  # noqa: E402
from preloaded import PreloadedRunner  # noqa: E402

LITE0 = REPO / ".bench" / "lite0.safetensors"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
WEIGHTS = "{weights}"
WORK = "{work}"


@dataclass(frozen=True)
class Script:
    """One benchmark: its file, the arguments of the documented run and of the quick run
    (``None``: not in the quick mode, with ``why``), and what it needs. In the arguments
    ``{weights}`` is the ImageNet weight file and ``{work}`` a scratch folder of its own."""

    name: str
    file: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = ("--quick",)
    needs_fmnist: bool = False
    needs_weights: bool = False
    needs_cuda: bool = False
    why: str = ""

    def argv(self, quick: bool, weights: Path, work: Path) -> list[str]:
        args = self.quick if quick else self.full
        assert args is not None
        filled = [a.replace(WEIGHTS, str(weights)).replace(WORK, str(work / self.name))
                  for a in args]
        return [sys.executable, str(HERE / self.file), *filled]


TINY_TRAIN = ("--epochs", "1", "--image-size", "32", "--batch-size", "32", "--workers", "0")

SCRIPTS: tuple[Script, ...] = (
    Script("sorting", "sorting.py"),
    Script("train_throughput", "train_throughput.py"),
    Script("encoder", "encoder.py"),
    Script("index_throughput", "index_throughput.py"),
    Script("app", "app.py"),
    Script("index", "index.py",
           quick=("--n", "3000", "--clusters", "30", "--queries", "50", "--flat-single", "10",
                  "--warmup", "5", "--no-hnsw")),
    Script("index_scale", "index_scale.py"),
    Script("dupes_scale", "dupes.py", full=("scale", "--n", "100000"),
           quick=("scale", "--n", "2000", "--work", WORK)),
    Script("dupes_quality", "dupes.py",
           full=("quality", "--size", "112", "--weights", WEIGHTS),
           quick=("quality", "--count", "200", "--copies", "5", "--encoders", "raw",
                  "--work", WORK),
           needs_fmnist=True, needs_weights=True),
    Script("dupes_tiers", "dupes_tiers.py", full=("--size", "112", "--weights", WEIGHTS),
           quick=None, needs_fmnist=True, needs_weights=True,
           why="an index build and a calibration per encoder; the calibration, tiers and "
               "review list are tested by tests/test_dupes_review.py"),
    Script("curate", "curate.py", full=("--weights", WEIGHTS),
           quick=("--count", "200", "--sizes", "10", "--seeds", "2", "--encoders", "raw-28",
                  "--work", WORK),
           needs_fmnist=True, needs_weights=True),
    Script("curate_scale", "curate_scale.py", full=("--n", "100000", "--n", "1000000"),
           quick=None, why="a fresh process a task over synthetic index directories; the "
                           "tasks are tested by tests/test_curate.py"),
    Script("shards", "shards.py", full=("--weights", WEIGHTS), quick=None,
           needs_fmnist=True, needs_weights=True,
           why="three index builds; the union is tested by tests/test_union.py"),
    Script("raw_pixels", "raw_pixels.py", quick=("--fmnist-bank", "500"), needs_fmnist=True),
    Script("pretrained_start", "pretrained_start.py",
           full=("--weights", WEIGHTS, "--bank", "10000", "--queries", "2000",
                 "--collections", "fmnist", "digits", "--sizes", "32", "64", "96", "128", "224"),
           quick=("--weights", WEIGHTS, "--bank", "300", "--queries", "100",
                  "--collections", "fmnist", "--sizes", "32", "--stride1"),
           needs_fmnist=True, needs_weights=True),
    Script("fmnist_knn", "fmnist_knn.py",
           quick=("--methods", "groco", "--seeds", "0", "--train-images", "200",
                  "--projector-dim", "64", "--data-dir", WORK, *TINY_TRAIN),
           needs_fmnist=True),
    Script("quality", "quality.py",
           full=("--collection", "fmnist", "--bank", "4000", "--queries", "1000",
                 "--image-size", "64", "--small-stem", "off", "--epochs", "4",
                 "--scratch-epochs", "4", "--collapse-lr", "200", "--weights", WEIGHTS),
           quick=("--collection", "fmnist", "--bank", "200", "--queries", "50",
                  "--rows", "groco", "--weights", WEIGHTS,
                  "--max-steps-per-epoch", "2", "--data-dir", WORK, "--out", WORK + "-out",
                  *TINY_TRAIN),
           needs_fmnist=True, needs_weights=True),
    Script("train_share", "train_share.py", full=("--weights", WEIGHTS), quick=None,
           needs_fmnist=True, needs_weights=True,
           why="three fine-tuning runs (15 min); a run's weights rebuilt from their file "
               "are tested by tests/test_pretrained.py, a start's export by "
               "tests/test_baselines.py"),
    Script("gpu", "gpu.py", full=("--weights", WEIGHTS, "--work", WORK),
           quick=("--quick", "--weights", WEIGHTS, "--work", WORK),
           needs_cuda=True),
    Script("batched_search", "batched_search.py"),
    Script("serving", "serving.py", quick=None, needs_fmnist=True,
           why="two servers and up to 20 gradio_client users each (minutes); the batcher "
               "is tested by tests/test_batcher.py, the routes by tests/test_app*.py"),
    Script("map_page", "map_page.py", quick=None,
           why="a headless Chromium and a served map (about a minute at its smallest); "
               "the Map tab is tested by tests/test_browser.py"),
    Script("app_hostile", "app_hostile.py", quick=None, needs_fmnist=True,
           why="two servers and 121-megapixel uploads at any size (minutes, GBs of RAM); "
               "its limits are tested by tests/test_app.py"),
    Script("faults", "faults.py", quick=None,
           why="hundreds of killed runs (about 10 min); its machinery is tested by "
               "tests/test_faults.py"),
)


def has_table(output: str) -> bool:
    """True when ``output`` holds a Markdown table: a ``|`` row followed by ``|---``."""
    lines = [line.strip() for line in output.splitlines()]
    return any(a.startswith("|") and b.startswith("|-")
               for a, b in zip(lines, lines[1:], strict=False))


def random_lite0(path: Path) -> Path:
    """A randomly initialised EfficientNet-Lite0 in the layout of ImageNet weight files."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def cuda_device() -> bool:
    """Whether torch sees a CUDA device (asked in a child, so this process stays light)."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() == "True"


def missing(script: Script, quick: bool, weights: Path | None) -> str | None:
    """Why ``script`` cannot run in this mode here, or None."""
    if quick:
        return None if script.quick is not None else f"not in the quick mode: {script.why}"
    if script.needs_cuda and not cuda_device():
        return "no CUDA device here (its quick mode runs on the CPU)"
    if script.needs_fmnist and not Path(os.environ.get("GROCO_FMNIST_DIR", FMNIST)).is_dir():
        return f"{FMNIST} not found: apt-get install dataset-fashion-mnist"
    if script.needs_weights and weights is None:
        return f"{LITE0} not found: python benchmarks/pretrained_weights.py --out {LITE0}"
    return None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_one(script: Script, quick: bool, weights: Path | None, work: Path,
            env: dict[str, str], timeout: float | None,
            runner: PreloadedRunner | None = None) -> tuple[str, str | None, str]:
    """Run one script, in a fresh interpreter or forked by ``runner``: ``(its section of
    the tables file, why it failed or None, the command shown)``."""
    reason = missing(script, quick, weights)
    if reason:
        return f"## {script.name}\n\nSkipped: {reason}.\n", None, f"skipped ({reason})"
    argv = script.argv(quick, weights or LITE0, work)
    shown = " ".join(["python", str(Path(argv[1]).relative_to(REPO)), *argv[2:]])
    begin = time.perf_counter()
    if runner is not None:
        code, output, errors = runner.run(argv, env, REPO, work / f"{script.name}-logs", timeout)
    else:
        code, output, errors = run_limited(argv, timeout, env, REPO)
    seconds = time.perf_counter() - begin
    if code == -1:
        problem = [f"timed out after {timeout:.0f} s"]
    else:
        problem = errors.strip().splitlines()[-1:] if code else []
    ok = code == 0 and has_table(output)
    why = None if ok else (problem[0] if problem else "no Markdown table in its output")
    status = "ok" if ok else "FAILED"
    section = (f"## {script.name}\n\n`{shown}` ({status}, {seconds:.0f} s)\n\n"
               f"{output.strip()}\n")
    return section, why, f"{shown}: {status} in {_duration(seconds)}"


def run_all(scripts: list[Script], quick: bool, out: Path, timeout: float | None,
            jobs: int = 1) -> int:
    """Run ``scripts`` into ``out``, ``jobs`` at a time (1: one after another, so no two
    timings share the CPU); returns the number that failed. Sections keep the order of
    ``scripts`` whatever order they finish in."""
    from concurrent.futures import ThreadPoolExecutor

    command = " ".join(["python -m benchmarks", *sys.argv[1:]])
    sections = [f"# Benchmark tables\n\nMachine: {machine()}\nCommand: `{command}`\n"
                f"Date: {datetime.date.today().isoformat()}\n"]
    failed, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="groco-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        weights: Path | None = LITE0 if LITE0.is_file() else None
        if quick:  # the same tiny inputs on every machine, data and weights installed or not
            from fashion_mnist import write_stand_in

            env["GROCO_FMNIST_DIR"] = str(write_stand_in(work / "fmnist-stand-in"))
            weights = random_lite0(work / "lite0-random.safetensors")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            runner = PreloadedRunner() if quick else None
            futures = [pool.submit(run_one, script, quick, weights, work, env, timeout, runner)
                       for script in scripts]
            for n, (script, future) in enumerate(zip(scripts, futures, strict=True), 1):
                section, why, shown = future.result()
                elapsed = time.perf_counter() - started
                eta = ("" if n == len(scripts) else
                       f", ETA {_duration(elapsed / n * (len(scripts) - n))}")
                print(f"[{n}/{len(scripts)}] {script.name}: {shown}{eta}", flush=True)
                sections.append(section)
                if why is not None:
                    failed.append(f"{script.name}: {why}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections))
    total = time.perf_counter() - started
    print(f"wrote {out} ({len(scripts) - len(failed)} of {len(scripts)} scripts passed or "
          f"skipped, {_duration(total)})")
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs: checks that every script runs and prints its table")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run these scripts only (names from --list)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the tables go [default: .bench/tables.md, "
                             ".bench/tables-quick.md with --quick]")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per script [default: none; 300 with --quick]")
    parser.add_argument("--jobs", type=int, default=1,
                        help="scripts run at a time [default: 1, so no two timings share "
                             "the CPU; only with --quick may it be more]")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU path only (benchmarks/gpu.py: training, export and index "
                             "on CUDA), into .bench/tables-gpu.md")
    parser.add_argument("--list", action="store_true", help="list the scripts and exit")
    args = parser.parse_args(argv)
    by_name = {s.name: s for s in SCRIPTS}
    if args.list:
        for s in SCRIPTS:
            quick = "quick" if s.quick is not None else "full only"
            print(f"{s.name:18} benchmarks/{s.file} ({quick})")
        return 0
    if args.jobs > 1 and not args.quick:
        parser.error("--jobs > 1 shares the CPU between timings: only with --quick")
    unknown = sorted(set(args.only or []) - set(by_name))
    if unknown:
        parser.error(f"unknown script(s) {', '.join(unknown)}; see --list")
    if args.gpu and args.only:
        parser.error("--gpu runs the gpu script alone: not with --only")
    names = ["gpu"] if args.gpu else args.only
    scripts = [by_name[n] for n in names] if names else list(SCRIPTS)
    default = "tables-gpu.md" if args.gpu else "tables.md"
    out = args.out or REPO / ".bench" / ("tables-quick.md" if args.quick else default)
    timeout = args.timeout if args.timeout is not None else (300.0 if args.quick else None)
    return 1 if run_all(scripts, args.quick, out, timeout, args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
