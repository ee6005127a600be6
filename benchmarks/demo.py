"""`groco demo` as a user runs it: its three k-NN figures and its wall time, per seed.

Each seed runs ``groco demo --no-serve --seed S`` in a fresh process on an empty work
folder (the built-in roaming digits written, trained, exported, indexed, mapped, measured
beside raw pixels at their best size and the untrained network) and reads the figures from
what it prints. The wall time is the whole command, imports and the map included.

    python benchmarks/demo.py                 # seeds 0 1 2
    python benchmarks/demo.py --seeds 0
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPORT = re.compile(r"([\d.]+)% with the trained encoder, ([\d.]+)% raw pixels \(best size, "
                    r"(\d+) px\), ([\d.]+)% untrained")


def run(seed: int, work: Path) -> dict:
    """One ``groco demo`` run: the figures it printed (percent) and its wall seconds."""
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "groco.cli", "demo", "--no-serve",
                           "--seed", str(seed), "--work", str(work)],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    found = REPORT.search(done.stdout)
    if found is None:
        raise SystemExit(f"no report in groco demo's output:\n{done.stdout}")
    trained, raw, size, untrained = found.groups()
    return {"seed": seed, "trained": float(trained), "raw": float(raw), "raw_px": int(size),
            "untrained": float(untrained), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=REPO / ".bench/demo")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        r = run(seed, args.work / f"seed{seed}")
        print(r, file=sys.stderr, flush=True)
        gap = r["trained"] - max(r["raw"], r["untrained"])
        rows.append(f"| {seed} | {r['trained']:.1f} | {r['raw']:.1f} ({r['raw_px']} px) | "
                    f"{r['untrained']:.1f} | {gap:+.1f} | {r['seconds']:.0f} |")
    print(header())
    print("`groco demo --no-serve` on its built-in collection (k-NN top-1 %, k=20, "
          "leave-one-out over the 1,797 pictures and 12 JPEG copies; seconds: the whole "
          "command).\n")
    print("| seed | trained | raw pixels (best size) | untrained | trained − better baseline "
          "| seconds |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
