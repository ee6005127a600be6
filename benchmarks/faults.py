"""Fault injection at scale: kill -9 of `groco index build / update / merge`, bad inputs,
concurrent writers. Prints the figures of BENCHMARKS.md's fault section.

    python benchmarks/faults.py                      # ~10 min on 2 cores
    python benchmarks/faults.py --kills 8 --timed-kills 4 --reps 1   # a quick look
    python benchmarks/faults.py --train-only         # kill -9 of `groco train`, --resume

What runs (every command as the ``groco`` command runs it, forked from a preloaded
process: ``tests/faultkit.py``; an untrained resnet18 at 32 px, a generated collection):

1. **Kills.** For build, update and merge: ``--kills`` kills just before a write drawn
   (seeded, one per stratum) from a clean run's writes, ``--timed-kills`` kills from
   outside after a random delay within the clean run's wall time, and ``--double-kills``
   kills of the build whose resume is killed too. After each: an update must still
   answer at its old or its new state; the rerun must exit 0 with every image recorded
   once, the same vectors (and ids, for build and merge) as the clean run, the index
   consistent and searchable (``faultkit.assert_recovered``). And for ``groco train``: the
   run directory holds one consistent checkpoint after the kill, and ``--resume`` ends
   bit-identical to the clean run (``faultkit.assert_same_run``).
2. **Bad inputs.** Damaged index files (meta.sqlite, index file, manifest, a shard's
   embeddings and ids; truncated, header overwritten, emptied, deleted, 8 bytes flipped
   anywhere) met by search, eval, update and a resumed build; hostile image files in a
   collection (build) and as queries (search); bad command lines. *Behaved*: exit 0 with
   the right result, or exit 1 with one ``error:`` line and no traceback; for damaged
   files, also: ``index repair`` then ``index update`` give back the clean index.
3. **Concurrent writers.** Pairs of writers on one directory started together (or 0.2 s
   apart): each ends well or stops at once naming the other's pid; the result is whole.
4. **Serving.** `groco index update` (a file deleted, one added) while a server answers a
   client that queries without pause: the new image found within 5 s of the update's end,
   the deleted one never returned after, no query failed; and every route a server with
   ``--auth`` registers answers 401 without credentials. (A queue past its size:
   ``benchmarks/app_overload.py``.)

Hostile uploads to the web app (peak RSS, 20 clients x 25 queries) are measured by
``benchmarks/app_hostile.py`` (``--hostile`` runs it after this).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import header  # noqa: E402
from conftest import make_collection  # noqa: E402
from faultkit import (  # noqa: E402
    HOWS,
    KINDS,
    QUERIES,
    ForkServer,
    Outcome,
    answers,
    assert_recovered,
    assert_same_run,
    change,
    damage,
    damage_target,
    spread,
)

SMALL = ["--batch-size", "4", "--shard-size", "8", "--workers", "1", "--no-progress"]


@dataclass
class Tally:
    """Tried / behaved of one row, with the first failures' descriptions."""

    tried: int = 0
    behaved: int = 0
    failures: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def add(self, ok: bool, what: str) -> None:
        self.tried += 1
        self.behaved += ok
        if not ok:
            self.failures.append(what)


def check(fn, *args, **kwargs) -> str | None:
    """None if ``fn`` passes, else its assertion's first line."""
    try:
        fn(*args, **kwargs)
    except AssertionError as error:
        return (str(error).strip().splitlines() or ["assertion failed"])[0][:200]
    except Exception as error:  # noqa: BLE001  (a check that crashes is a failure too)
        return f"{type(error).__name__}: {error}"[:200]
    return None


def behaved(outcome: Outcome) -> bool:
    return (outcome.status == 0 and "Traceback" not in outcome.stderr) or \
        outcome.clean_failure()


# ----------------------------------------------------------------------------- kills


@dataclass
class KillWorld:
    name: str
    images: Path
    reference: Path
    points: int
    seconds: float
    argv: object  # dir -> argv
    fresh: object  # dir -> None: prepare the directory the command writes
    same_ids: bool
    states: tuple | None = None  # (queries, old answers, new answers) for update


def kill_worlds(forks: ForkServer, encoder: Path, work: Path, images: int) -> list[KillWorld]:
    per_class = max(4, images // 4)
    coll = make_collection(work / "images", classes=4, per_class=per_class, broken=2)

    def build_argv(out: Path) -> list:
        return ["index", "build", coll, "--encoder", encoder, "--out", out, *SMALL]

    def census(argv: list) -> tuple[Outcome, float]:
        started = time.perf_counter()
        outcome = forks.run(argv)
        if outcome.status != 0:
            raise SystemExit(f"clean run failed: {outcome.stderr[-2000:]}")
        return outcome, time.perf_counter() - started

    worlds = []
    built, seconds = census(build_argv(work / "build-ref"))
    worlds.append(KillWorld("build", coll, work / "build-ref", built.points, seconds,
                            build_argv, lambda d: None, True))

    parts = work / "parts"
    for i in range(2):
        out = forks.run(["index", "build", coll, "--encoder", encoder, "--out", parts,
                         "--shard", str(i), "--num-shards", "2", *SMALL])
        assert out.status == 0, out.stderr

    def merge_argv(out: Path) -> list:
        return ["index", "merge", parts, "--out", out, "--shard-size", "8", "--no-progress"]

    merged, seconds = census(merge_argv(work / "merge-ref"))
    worlds.append(KillWorld("merge", coll, work / "merge-ref", merged.points, seconds,
                            merge_argv, lambda d: None, True))

    upd = make_collection(work / "upd-images", classes=2, per_class=per_class, broken=1)
    base = work / "upd-base"
    assert forks.run(["index", "build", upd, "--encoder", encoder, "--out", base,
                      *SMALL]).status == 0
    queries = [(upd / q).read_bytes() for q in QUERIES]
    old = answers(base, queries)
    change(upd, work / "upd-extra")
    shutil.copytree(base, work / "upd-ref")

    def update_argv(index: Path) -> list:
        return ["index", "update", index, *SMALL]

    updated, seconds = census(update_argv(work / "upd-ref"))
    new = answers(work / "upd-ref", queries)
    worlds.append(KillWorld("update", upd, work / "upd-ref", updated.points, seconds,
                            update_argv, lambda d: shutil.copytree(base, d), False,
                            (queries, old, new)))
    return worlds


def after_kill(world: KillWorld, forks: ForkServer, target: Path, killed: Outcome,
               tally: Tally, what: str) -> None:
    """Checks after a kill (or a command that finished first): old-or-new, rerun, recovered."""
    if killed.status == 0:
        tally.notes["finished before the kill"] += 1
    elif not killed.killed:
        tally.add(False, f"{what}: ended {killed.status} instead of being killed")
        return
    if world.states is not None:
        queries, old, new = world.states
        try:
            if answers(target, queries) not in (old, new):
                tally.add(False, f"{what}: answers neither old nor new")
                return
        except Exception as error:  # noqa: BLE001
            tally.add(False, f"{what}: unsearchable after the kill ({error})")
            return
    rerun = forks.run(world.argv(target))
    if rerun.status != 0:
        tally.add(False, f"{what}: rerun exit {rerun.status}: {rerun.stderr[-300:]}")
        return
    problem = check(assert_recovered, target, world.images, world.reference, world.same_ids)
    tally.add(problem is None, f"{what}: {problem}")


def run_kills(worlds: list[KillWorld], forks: ForkServer, work: Path, args) -> dict:
    results = {}
    rng = np.random.default_rng(args.seed)
    for w, world in enumerate(worlds):
        points, timed, double = Tally(), Tally(), Tally()
        for n in spread(world.points, args.kills, args.seed + w):
            target = work / f"{world.name}-k{n}"
            world.fresh(target)
            killed = forks.run(world.argv(target), kill_at=n)
            points.notes[killed.killed_at.split()[1] if killed.killed_at else "?"] += 1
            after_kill(world, forks, target, killed, points, f"kill at {killed.killed_at}")
        for i in range(args.timed_kills):
            target = work / f"{world.name}-t{i}"
            world.fresh(target)
            delay = float(rng.uniform(0, world.seconds))
            child = forks.spawn(world.argv(target))
            time.sleep(delay)
            forks.kill(child)
            after_kill(world, forks, target, forks.wait(child), timed,
                       f"kill after {delay:.2f} s")
        if world.name == "build":
            for i, n in enumerate(spread(world.points, args.double_kills, args.seed + 9)):
                target = work / f"{world.name}-d{i}"
                first = forks.run(world.argv(target), kill_at=n)
                second = forks.run(world.argv(target), kill_at=max(3, n // 2))
                if not (first.killed and (second.killed or second.status == 0)):
                    double.add(False, f"double kill {n}: {first.status} {second.status}")
                    continue
                after_kill(world, forks, target, first, double, f"double kill at {n}")
        results[world.name] = (points, timed, double)
        print(f"  {world.name}: {world.points} writes, clean run {world.seconds:.2f} s; "
              f"kills at writes {points.behaved}/{points.tried}, timed {timed.behaved}/"
              f"{timed.tried}, double {double.behaved}/{double.tried}", flush=True)
    return results


# ------------------------------------------------------------------------ training kills

TRAIN = ["--backbone", "test_resnet", "--image-size", "16", "--batch-size", "8",
         "--topk-neg", "4", "--workers", "0", "--projector-dim", "16", "--projector-hidden",
         "16", "--epochs", "3", "--lr", "0.5", "--max-steps-per-epoch", "2"]


def train_kills(forks: ForkServer, work: Path, args) -> tuple[int, float, Tally, Tally]:
    """Kills of `groco train` (3 epochs, each scored and checkpointed) at seeded points and
    at random times; after each, the run directory must hold one consistent checkpoint (or
    none) and `--resume` must end bit-identical to the clean run (``assert_same_run``).
    Returns (points in the clean run, its seconds, kills at points, timed kills)."""
    from groco.training import checkpoint

    images = make_collection(work / "train-images", classes=2, per_class=8, size=16)

    def argv(out: Path, resume: bool = False) -> list:
        return ["train", images, "--out", out, *TRAIN, *(["--resume"] if resume else [])]

    reference = work / "train-ref"
    started = time.perf_counter()
    clean = forks.run(argv(reference))
    seconds = time.perf_counter() - started
    if clean.status != 0:
        raise SystemExit(f"clean training run failed: {clean.stderr[-2000:]}")

    def after(target: Path, killed: Outcome, tally: Tally, what: str) -> None:
        if killed.status == 0:
            tally.notes["finished before the kill"] += 1
        elif not killed.killed:
            tally.add(False, f"{what}: ended {killed.status} instead of being killed")
            return
        problem = check(checkpoint.load_generation, target)
        if problem is not None:
            tally.add(False, f"{what}: inconsistent after the kill ({problem})")
            return
        rerun = forks.run(argv(target, resume=True))
        if rerun.status != 0:
            tally.add(False, f"{what}: resume exit {rerun.status}: {rerun.stderr[-300:]}")
            return
        problem = check(assert_same_run, target, reference, what)
        tally.add(problem is None, f"{what}: {problem}")

    points, timed = Tally(), Tally()
    for n in spread(clean.points, args.kills, args.seed + 20):
        target = work / f"train-k{n}"
        killed = forks.run(argv(target), kill_at=n)
        points.notes[killed.killed_at.split()[1] if killed.killed_at else "?"] += 1
        after(target, killed, points, f"kill at {killed.killed_at}")
    rng = np.random.default_rng(args.seed + 21)
    for i in range(args.timed_kills):
        target = work / f"train-t{i}"
        delay = float(rng.uniform(0, seconds))
        child = forks.spawn(argv(target))
        time.sleep(delay)
        forks.kill(child)
        after(target, forks.wait(child), timed, f"kill after {delay:.2f} s")
    print(f"  train: {clean.points} writes, clean run {seconds:.2f} s; kills at writes "
          f"{points.behaved}/{points.tried}, timed {timed.behaved}/{timed.tried}", flush=True)
    return clean.points, seconds, points, timed


def print_train_rows(train: tuple[int, float, Tally, Tally]) -> None:
    count, seconds, points, timed = train
    print("\n| command | writes in a clean run | kills at writes survived | kills at random "
          "times survived | killed at |")
    print("|---|---|---|---|---|")
    at = ", ".join(f"{op} {n}" for op, n in points.notes.most_common())
    early = timed.notes["finished before the kill"]
    print(f"| train (3 epochs, resumed) | {count} | {points.behaved} / {points.tried} | "
          f"{timed.behaved} / {timed.tried}" + (f" ({early} ended first)" if early else "")
          + f" | {at} |")
    for tally in (points, timed):
        for failure in tally.failures:
            print(f"- train not survived: {failure}")
    print(f"\nTraining: untrained test_resnet at 16 px on 16 generated images, "
          f"`{' '.join(TRAIN)}`; survived = the run directory holds one consistent checkpoint "
          f"and `--resume` ends bit-identical to the clean run ({seconds:.1f} s).")


# ----------------------------------------------------------------------------- bad inputs


def damaged_files(world: KillWorld, forks: ForkServer, encoder: Path, work: Path,
                  reps: int, seed: int) -> tuple[Tally, Tally]:
    """(noticed damage: truncated/header/empty/deleted, flipped bytes anywhere)."""
    rng = np.random.default_rng(seed)
    noticed, flipped = Tally(), Tally()
    query = world.images / QUERIES[0]
    for kind in KINDS:
        for how in (*HOWS, "flipped"):
            for rep in range(reps):
                if (kind, how) == ("meta.sqlite", "deleted"):
                    continue  # nothing left to recover from: a new build is the way out
                tally = flipped if how == "flipped" else noticed
                index = work / f"damaged-{kind}-{how}-{rep}"
                shutil.copytree(world.reference, index)
                damage(damage_target(index, kind), how, rng)
                commands = [["search", index, query, "-k", "3"], ["index", "eval", index],
                            ["index", "update", index, *SMALL],
                            ["index", "build", world.images, "--encoder", encoder, "--out",
                             index, *SMALL]]
                bad = [c[1] if c[0] == "index" else c[0] for c in commands
                       if not behaved(forks.run(c))]
                repair = forks.run(["index", "repair", index])
                update = forks.run(["index", "update", index, *SMALL])
                problem = check(assert_recovered, index, world.images, world.reference,
                                False)
                ok = not bad and repair.status == 0 and update.status == 0 and problem is None
                tally.add(ok, f"{kind} {how}: misbehaved {bad}, repair {repair.status}, "
                              f"update {update.status}, {problem}")
    return noticed, flipped


def hostile_images(folder: Path) -> dict[str, bool]:
    """Files to index, each with whether it must be embedded (True) or recorded broken /
    left out (False)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    good = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    good.save(folder / "good.png")
    png = (folder / "good.png").read_bytes()
    good.save(folder / "good.jpg", quality=90)
    jpg = (folder / "good.jpg").read_bytes()
    files = {"good.png": True, "good.jpg": True}

    def put(name: str, data: bytes, embedded: bool) -> None:
        (folder / name).write_bytes(data)
        files[name] = embedded

    put("empty.png", b"", False)
    put("random.jpg", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), False)
    put("truncated.png", png[: len(png) // 2], False)
    put("truncated.jpg", jpg[: len(jpg) // 3], False)
    put("text.png", b"hello, I am not an image\n", False)
    put("html.jpg", b"<html><script>alert(1)</script></html>", False)
    # a PNG header announcing 60000 x 60000 pixels: refused before any decoding
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    put("bomb.png", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk +
        struct.pack(">I", zlib.crc32(chunk)), False)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one-pixel.png")
    files["one-pixel.png"] = True
    Image.new("RGB", (4000, 2), (200, 10, 10)).save(folder / "thin.png")
    files["thin.png"] = True
    Image.fromarray((rng.random((30, 30)) * 65535).astype(np.uint16)).save(folder / "16bit.png")
    files["16bit.png"] = True
    Image.new("CMYK", (30, 30), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
    files["cmyk.jpg"] = True
    Image.new("P", (30, 30), 3).save(folder / "palette.png", transparency=3)
    files["palette.png"] = True
    frames = [Image.new("RGB", (30, 30), (i, 0, 0)) for i in range(0, 250, 10)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    files["anim.gif"] = True
    Image.new("LA", (30, 30), (100, 50)).save(folder / "gray-alpha.png")
    files["gray-alpha.png"] = True
    (folder / "folder.png").mkdir(exist_ok=True)
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    files["loop-a.png"] = files["loop-b.png"] = False
    os.symlink("/etc/passwd", folder / "passwd.png")
    files["passwd.png"] = False
    os.symlink("missing.png", folder / "dangling.png")
    files["dangling.png"] = False
    return files


def bad_images(forks: ForkServer, encoder: Path, work: Path) -> tuple[Tally, Tally]:
    """(hostile files in a collection: build; the same files as queries: search)."""
    from groco.index.store import DB_NAME, EMBEDDED, Store

    folder = work / "hostile"
    files = hostile_images(folder / "c")
    index = work / "hostile-index"
    built = forks.run(["index", "build", folder, "--encoder", encoder, "--out", index,
                       *SMALL])
    indexing, queries = Tally(), Tally()
    if built.status != 0:
        indexing.add(False, f"build exit {built.status}: {built.stderr[-300:]}")
        return indexing, queries
    with Store(index / DB_NAME, readonly=True) as store:
        status = {r.path.split("/", 1)[1]: r.status for r in store.iter_rows()}
    for name, embedded in files.items():
        got = status.get(name)
        ok = (got == EMBEDDED) if embedded else (got != EMBEDDED)
        indexing.add(ok, f"{name}: {got}, expected {'embedded' if embedded else 'not'}")
        outcome = forks.run(["search", index, folder / "c" / name, "-k", "2"])
        ok = behaved(outcome) and (outcome.status == 0) == embedded
        queries.add(ok, f"query {name}: exit {outcome.status} {outcome.stderr[-200:]}")
    return indexing, queries


def bad_command_lines(forks: ForkServer, world: KillWorld, encoder: Path,
                      work: Path) -> Tally:
    not_onnx = work / "not-an-encoder.onnx"
    not_onnx.write_text("nope")
    a_file = work / "a-file"
    a_file.write_text("x")
    index = world.reference
    lines = [
        ["index", "build", work / "no-such-folder", "--encoder", encoder, "--out",
         work / "x1"],
        ["index", "build", world.images, "--encoder", not_onnx, "--out", work / "x2"],
        ["index", "build", world.images, "--encoder", work / "missing.onnx", "--out",
         work / "x3"],
        ["index", "build", world.images, "--encoder", encoder, "--out", a_file],
        ["index", "build", world.images, "--encoder", encoder, "--out", work / "x4",
         "--index-type", "Nonsense42"],
        ["index", "build", world.images, "--encoder", encoder, "--out", work / "x5",
         "--memory", "lots"],
        ["index", "build", world.images, "--encoder", encoder, "--out", work / "x7",
         "--shard", "3", "--num-shards", "2"],
        ["index", "update", work / "no-such-index"],
        ["index", "update", a_file],
        ["index", "merge", work / "no-such-parts", "--out", work / "x8"],
        ["index", "merge", index, "--out", index],
        ["index", "repair", work / "no-such-index"],
        ["index", "eval", work / "no-such-index"],
        ["search", work / "no-such-index", world.images / QUERIES[0]],
        ["search", index, work / "no-such-query.png"],
        ["search", index, a_file],
        ["search", index, world.images / QUERIES[0], "--encoder", not_onnx],
        ["serve", index, "--host", "0.0.0.0"],
        ["serve", index, "--auth", work / "no-such-users-file"],
        ["serve", index, "--host", "0.0.0.0", "--auth", a_file],
    ]
    out_of_range = [
        ["index", "build", world.images, "--encoder", encoder, "--out", work / "x6",
         "--target-recall", "2"],
        ["search", index, world.images / QUERIES[0], "-k", "0"],
        ["serve", index, "--port", "70000"],
        ["serve", index, "--queue-size", "0"],
        ["search", index, world.images / QUERIES[0], "--min-score", "nan"],
        ["index", "eval", index, "-k", "0"],
        ["index", "dupes", index, "--threshold", "1.5"],
        ["index", "map", index, "--neighbors", "1"],
        ["index", "build", world.images, "--encoder", encoder, "--out", work / "x9",
         "--batch-size", "0"],
        ["index", "update", index, "--workers", "-1"],
        ["train", world.images, "--out", work / "x10", "--lr", "-1"],
        ["train", world.images, "--out", work / "x11", "--epochs", "0"],
        ["export", "--raw-pixels", "0", "--out", work / "x12.onnx"],
    ]
    tally = Tally()
    for argv in lines + out_of_range:
        outcome = forks.run(argv)
        ok = outcome.usage_error() if argv in out_of_range else outcome.clean_failure()
        tally.add(ok, f"{' '.join(map(str, argv[:3]))}...: exit "
                      f"{outcome.status} {outcome.stderr[-200:]!r}")
    return tally


# ----------------------------------------------------------------------------- writers


def concurrent_writers(forks: ForkServer, worlds: dict[str, KillWorld], work: Path,
                       reps: int) -> Tally:
    tally = Tally()
    build, merge, update = worlds["build"], worlds["merge"], worlds["update"]
    for rep in range(reps):
        for name, stagger in (("build+build", 0.0), ("build+build", 0.2),
                              ("update+update", 0.0), ("update+repair", 0.0),
                              ("merge+merge", 0.0), ("repair+repair", 0.0)):
            world = {"build": build, "merge": merge}.get(name.split("+")[0], update)
            target = work / f"race-{name}-{stagger}-{rep}"
            world.fresh(target)
            second = (["index", "repair", target] if name.endswith("repair")
                      else world.argv(target))
            first = ["index", "repair", target] if name == "repair+repair" else \
                world.argv(target)
            a = forks.spawn(first)
            time.sleep(stagger)
            b = forks.spawn(second)
            outcomes = [forks.wait(a), forks.wait(b)]
            ok = 0 in [o.status for o in outcomes]
            for outcome, other in zip(outcomes, (b, a), strict=True):
                if outcome.status != 0:
                    ok &= outcome.clean_failure() and \
                        f"process {other.pid}" in outcome.error_lines()[0]
            if forks.run(world.argv(target)).status != 0:
                ok = False
            problem = check(assert_recovered, target, world.images, world.reference,
                            world.same_ids)
            tally.notes["one stopped"] += any(o.status != 0 for o in outcomes)
            tally.add(bool(ok) and problem is None,
                      f"{name} {stagger}: {[o.status for o in outcomes]} "
                      f"{[o.stderr[-150:] for o in outcomes]} {problem}")
    return tally


# ----------------------------------------------------------------------------- serving


@dataclass
class Serving:
    """What the server did through live updates and for requests without sign-in."""

    updates: Tally
    switch_seconds: list[float]
    queries: int
    failed_queries: int
    routes: Tally


def _json_search(url: str, image: Path, k: int) -> list[str]:
    import json
    import urllib.request

    request = urllib.request.Request(f"{url}groco/api/search?k={k}", data=image.read_bytes(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return [r["relpath"] for r in json.loads(response.read())["results"]]


def serving_faults(forks: ForkServer, encoder: Path, work: Path, reps: int) -> Serving:
    """A server (in this process, polling every second, as `groco serve` does) answers a
    client that queries without pause while ``reps`` times a file is deleted, one is
    added and `groco index update` runs: how long until the new image is found, whether
    any query failed, whether the deleted file came back. Then a server with sign-in
    answers every route it registers without credentials."""
    import threading
    import urllib.error
    import urllib.request

    from app_hostile import free_port
    from routes import filled, registered_routes

    from groco.app.auth import Credentials, set_password
    from groco.app.web import launch_app
    from groco.index.build import build_index_dir

    images = make_collection(work / "serve-images", classes=3, per_class=8, size=32)
    index = work / "serve-index"
    build_index_dir(images, encoder, index, batch_size=8, workers=1, progress=False)
    app, url = launch_app(index, port=free_port(), block=False)
    files = sorted(images.rglob("*.png"))
    probe, stop = files[0], threading.Event()
    counts = Counter()

    def client() -> None:
        while not stop.is_set():
            try:
                _json_search(url, probe, 5)
                counts["answered"] += 1
            except (OSError, ValueError):
                counts["failed"] += 1

    thread = threading.Thread(target=client)
    thread.start()
    updates, seconds = Tally(), []
    try:
        for rep in range(reps * 3):
            deleted = files[1 + rep]
            deleted.unlink()
            extra = make_collection(work / f"serve-new-{rep}", classes=1, per_class=1,
                                    seed=100 + rep, size=32)
            added = images / "class0" / f"added-{rep}.png"
            (extra / "class0" / "img000.png").rename(added)
            relpaths = (str(deleted.relative_to(images)), str(added.relative_to(images)))
            outcome = forks.run(["index", "update", index, *SMALL])
            updated = time.monotonic()
            while _json_search(url, added, 1) != [relpaths[1]]:
                if time.monotonic() - updated > 10:
                    break
                time.sleep(0.05)
            waited = time.monotonic() - updated
            seconds.append(waited)
            returned = sum(relpaths[0] in _json_search(url, probe, len(files) + rep + 1)
                           for _ in range(10))
            updates.add(outcome.status == 0 and waited <= 5 and returned == 0,
                        f"update {rep}: exit {outcome.status}, found after {waited:.1f} s, "
                        f"deleted file returned {returned} times")
    finally:
        stop.set()
        thread.join()
        app.close()

    set_password(work / "serve-users", "alice", "secret")
    app, url = launch_app(index, port=free_port(), block=False,
                          credentials=Credentials.read(work / "serve-users"))
    routes = Tally()
    try:
        for method, path in registered_routes(app) + [("GET", "/no-such-route")]:
            if method == "WEBSOCKET":
                continue
            request = urllib.request.Request(url.rstrip("/") + filled(path), method=method,
                                             data=b"{}" if method == "POST" else None)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            routes.add(status == 401, f"{method} {path}: HTTP {status}")
    finally:
        app.close()
    return Serving(updates, seconds, counts["answered"] + counts["failed"], counts["failed"],
                   routes)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60, help="images per collection")
    parser.add_argument("--kills", type=int, default=20, help="kills at writes per command")
    parser.add_argument("--timed-kills", type=int, default=10,
                        help="kills at random times per command")
    parser.add_argument("--double-kills", type=int, default=5,
                        help="builds killed, then killed again while resuming")
    parser.add_argument("--reps", type=int, default=2,
                        help="repetitions of each damage and each writers race")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--encoder", type=Path, default=None,
                        help="an encoder file to use [default: export an untrained resnet18 "
                             "at 32 px]")
    parser.add_argument("--train-only", action="store_true",
                        help="only the training kills (kill -9 of `groco train`, --resume)")
    parser.add_argument("--hostile", action="store_true",
                        help="then run benchmarks/app_hostile.py (minutes, GBs of RAM)")
    args = parser.parse_args()
    print(header())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="groco-faults-") as tmp:
        work = Path(tmp)
        if args.train_only:
            with ForkServer(work / "forks") as forks:
                print("training kills:", flush=True)
                print_train_rows(train_kills(forks, work, args))
            return
        from app import export_untrained

        encoder = args.encoder or export_untrained(work / "encoder", "resnet18", 32)
        with ForkServer(work / "forks") as forks:
            print("kills:", flush=True)
            worlds = kill_worlds(forks, encoder, work, args.images)
            kills = run_kills(worlds, forks, work, args)
            train = train_kills(forks, work, args)
            by_name = {w.name: w for w in worlds}
            print("bad inputs:", flush=True)
            noticed, flipped = damaged_files(by_name["build"], forks, encoder, work,
                                             args.reps, args.seed)
            indexing, queries = bad_images(forks, encoder, work)
            lines = bad_command_lines(forks, by_name["build"], encoder, work)
            print("concurrent writers:", flush=True)
            races = concurrent_writers(forks, by_name, work, args.reps)
            print("serving:", flush=True)
            served = serving_faults(forks, encoder, work, args.reps)
    seconds = time.perf_counter() - started

    print(f"\nCollections: {args.images + 2} generated images (4 classes, 2 broken) for "
          "build and merge (2 parts), an index of "
          f"{2 * max(4, args.images // 4) + 1} updated with 2 new, 1 new broken, 1 deleted, "
          "1 changed, 1 touched file; untrained resnet18 at 32 px; "
          f"`{' '.join(SMALL)}`; seed {args.seed}; {seconds:.0f} s in all.\n")
    print("| command | writes in a clean run | kills at writes survived | kills at random "
          "times survived | killed resume survived | killed at |")
    print("|---|---|---|---|---|---|")
    for world in worlds:
        points, timed, double = kills[world.name]
        at = ", ".join(f"{op} {n}" for op, n in points.notes.most_common())
        early = timed.notes["finished before the kill"]
        timed_text = f"{timed.behaved} / {timed.tried}" + (f" ({early} ended first)"
                                                          if early else "")
        double_text = f"{double.behaved} / {double.tried}" if double.tried else "-"
        print(f"| {world.name} | {world.points} | {points.behaved} / {points.tried} | "
              f"{timed_text} | {double_text} | {at} |")
    for world in worlds:
        for tally in kills[world.name]:
            for failure in tally.failures:
                print(f"- {world.name} not survived: {failure}")
    print_train_rows(train)
    print("\n| bad input | tried | behaved | misbehaved |")
    print("|---|---|---|---|")
    rows = [("damaged index files (truncated, header, emptied, deleted) x search, eval, "
             "update, build; then repair + update", noticed),
            ("8 bytes flipped anywhere in an index file (same commands)", flipped),
            ("hostile files in a collection (build)", indexing),
            ("the same files as queries (search)", queries),
            ("bad command lines (out-of-range values, a non-loopback --host without "
             "--auth included)", lines),
            ("concurrent writers (build, update, merge, repair pairs)", races),
            ("`groco index update` (1 deleted, 1 added) under a running server queried "
             "without pause: new image found within 5 s, deleted never returned", served.updates),
            ("every route of a server with --auth, without credentials: HTTP 401",
             served.routes)]
    for name, tally in rows:
        failures = "; ".join(tally.failures[:3]) or "-"
        print(f"| {name} | {tally.tried} | {tally.behaved} | {failures} |")
    total = sum(t.tried for _, t in rows)
    good = sum(t.behaved for _, t in rows)
    print(f"\nBad inputs: {good} of {total} behaved. Writers races where one stopped: "
          f"{races.notes['one stopped']} of {races.tried}. Serving through "
          f"{served.updates.tried} updates: the new image found {min(served.switch_seconds):.1f}"
          f"-{max(served.switch_seconds):.1f} s after `index update` exited; "
          f"{served.failed_queries} of {served.queries} queries failed.")
    if args.hostile:
        subprocess.run([sys.executable, str(HERE / "app_hostile.py")], check=False)


if __name__ == "__main__":
    main()
