"""Benchmark the duplicate tiers of `groco index dupes --review`, calibrated per encoder.

The collection of ``benchmarks/dupes.py quality`` (Fashion-MNIST's 10,000 test images as a
folder plus ``--copies`` planted copies of each kind: exact, JPEG q70, resized 2x / 0.75x,
cropped to 0.9 of the side), indexed by each encoder. Each index is calibrated
(`groco index dupes --calibrate`: copies of 200 of the index's own images, made by
groco, not the planted ones) and reviewed at the calibrated thresholds, beside the fixed
0.97 (groco's threshold without a calibration) for the near tier.

For each planted copy, the tier the review list gives the pair (copy, original): in one
copy group, ``exact`` for the same bytes, else the other file's tier when one of them
keeps the copy group, else the looser of their two tiers; ``similar`` in one cluster
only; *none* when they are not in one cluster. Per tier, *precision*: the files the review
puts in that tier whose true cluster (planted pairs, pixel-identical originals) is the
keeper's. Fashion-MNIST also holds natural near-identical photos outside the truth, so
precision is a lower bound.

    python benchmarks/dupes_tiers.py --size 112
    python benchmarks/dupes_tiers.py --size 28
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from dupes import KINDS, export_encoder, log, plant, truth_clusters  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
UNCALIBRATED = 0.97
LOOSENESS = {"keep": 0, "exact": 1, "near": 2, "similar": 3}


def pair_tiers(entries, planted: dict[str, tuple[str, str]]) -> dict[str, str]:
    """``{copy relpath: tier of (copy, original)}``: ``exact`` or ``near`` when they are in
    one copy group (the looser of their tiers to its keeper), ``similar`` when in one
    cluster only, ``none`` when apart."""
    where = {e.file.relpath: e for e in entries}

    def unit(e) -> str:  # the keeper of the file's copy group
        return e.copy_of if e.tier in ("exact", "near") else e.file.relpath

    tiers = {}
    for copy, (_, original) in planted.items():
        a, b = where.get(copy), where.get(original)
        if a is None or b is None or a.group != b.group:
            tiers[copy] = "none"
        elif unit(a) != unit(b):
            tiers[copy] = "similar"
        elif a.file.hash == b.file.hash:  # byte copies in one copy group
            tiers[copy] = "exact"
        elif unit(a) == a.file.relpath:  # a keeps the copy group: b's tier is the pair's
            tiers[copy] = b.tier
        elif unit(b) == b.file.relpath:
            tiers[copy] = a.tier
        else:
            tiers[copy] = max(a.tier, b.tier, key=LOOSENESS.get)
    return tiers


def tier_precision(entries, truth: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``{tier: (files in the true cluster of the file they are listed against, files in
    the tier)}``."""
    counts: dict[str, list[int]] = {}
    for e in entries:
        if e.tier == "keep":
            continue
        right = e.file.relpath in truth and truth.get(e.copy_of) == truth[e.file.relpath]
        counts.setdefault(e.tier, [0, 0])
        counts[e.tier][0] += int(right)
        counts[e.tier][1] += 1
    return {t: (c[0], c[1]) for t, c in counts.items()}


def row(label: str, near: float, similar: float, entries, planted, truth,
        copies: int) -> str:
    tiers = pair_tiers(entries, planted)

    def share(kinds: tuple[str, ...], wanted: tuple[str, ...]) -> str:
        chosen = [c for c, (k, _) in planted.items() if k in kinds]
        return f"{sum(tiers[c] in wanted for c in chosen)}/{len(chosen)}"

    precision = tier_precision(entries, truth)

    def prec(t: str) -> str:
        right, total = precision.get(t, (0, 0))
        return f"{right / total:.3f} ({total})" if total else "- (0)"

    return (f"| {label} | {near:.4f} | {similar:.4f} | {share(('exact',), ('exact',))} | "
            f"{share(('jpeg', 'resize'), ('near', 'exact'))} | "
            f"{share(('crop',), ('near', 'similar'))} | {prec('exact')} | {prec('near')} | "
            f"{prec('similar')} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="Fashion-MNIST test images")
    parser.add_argument("--copies", type=int, default=100, help="planted copies of each kind")
    parser.add_argument("--size", type=int, default=112, help="side of the originals (px)")
    parser.add_argument("--encoders", nargs="+", default=["raw", "lite0"])
    parser.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/dupes")
    args = parser.parse_args(argv)

    from groco.index.build import build_index_dir
    from groco.index.curate.calibrate import calibrate
    from groco.index.curate.review import review_list
    from groco.index.dupes import scan_duplicates

    args.work.mkdir(parents=True, exist_ok=True)
    originals = write_folder(args.work / "fmnist", "t10k", args.count)
    collection = args.work / f"planted-{args.count}-{args.copies}-{args.size}px"
    planted = plant(originals, collection, args.copies, args.size)
    truth = truth_clusters(collection, planted)
    lines = [f"Collection: Fashion-MNIST t10k ({args.count} images at {args.size} px) + "
             f"{len(planted)} planted copies ({args.copies} each: {', '.join(KINDS)}).", "",
             "| encoder, thresholds | near | similar | exact copies in *exact* | JPEG + "
             "resized in *near* | crops in *near* or *similar* | precision *exact* (files) "
             "| precision *near* | precision *similar* |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name in args.encoders:
        encoder = export_encoder(name, args.work, args.weights)
        index = args.work / f"index-{name}-{args.count}-{args.copies}-{args.size}px"
        build_index_dir(collection, encoder, index, progress=False)
        start = time.perf_counter()
        found = calibrate(index)
        calibrate_s = time.perf_counter() - start
        log(f"{name}: {found.summary()} ({calibrate_s:.1f} s)")
        notes.append(f"`{name}`: {found.summary()}; calibration took {calibrate_s:.1f} s")
        floor = max(0.5, min(found.similar, UNCALIBRATED))
        scan = scan_duplicates(index, floor)
        for label, near, similar in ((f"{name}, calibrated", found.near, found.similar),
                                     (f"{name}, fixed {UNCALIBRATED}", UNCALIBRATED,
                                      found.similar)):
            similar = min(max(floor, similar), near)
            entries = review_list(scan.groups(near), "pixels",
                                  similar_groups=scan.groups(similar))
            lines.append(row(label, near, similar, entries, planted, truth,
                             args.copies))
            log(lines[-1])
    print(header())
    print("\n".join(lines + [""] + [f"- {n}" for n in notes]))


if __name__ == "__main__":
    main()
