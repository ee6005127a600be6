"""Fault injection: ``kill -9`` of ``groco index build``, ``update`` and ``merge`` at seeded
random points, concurrent writers, damaged files.

Every command runs as the ``groco`` command does, in a fork of a preloaded process
(:mod:`faultkit`), and is killed just before one of its writes, drawn with a fixed seed
from a count of a clean run's writes (one kill in each stratum: early, middle, late).
After every fault the rerun must recover: every image recorded exactly once, the same
vectors as a run never interrupted, the index searchable. Killed updates must leave the
index answering at its old or its new state. A second writer stops at once with one line
naming the first. A damaged file gets a clean answer or one ``error:`` line, never a
traceback, and ``index repair`` + ``index update`` bring the index back.

Hostile uploads are in ``test_app.py`` (byte caps on every path, pixel caps, bounded
decodes); ``benchmarks/faults.py`` runs the same faults many more times.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from faultkit import (
    HOWS,
    KINDS,
    QUERIES,
    ForkServer,
    Outcome,
    answers,
    assert_recovered,
    change,
    damage,
    damage_target,
    spread,
)

from groco.index import shards
from groco.index.build import build_index_dir
from groco.index.store import DB_NAME, Store

SEED = 14
KILLS = 3
"""Kills per command (one per stratum of its writes); benchmarks/faults.py runs more."""
SMALL = ["--batch-size", "2", "--shard-size", "3", "--workers", "1", "--no-progress"]
FAST = {"batch_size": 2, "shard_size": 3, "workers": 1, "progress": False}


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory):
    with ForkServer(tmp_path_factory.mktemp("forks")) as server:
        yield server


# ----------------------------------------------------------------------------- checks


def assert_killed(outcome: Outcome) -> None:
    assert outcome.killed, f"not killed (status {outcome.status}): {outcome.stderr[-500:]}"


def assert_ok(outcome: Outcome, after: str = "") -> None:
    assert outcome.status == 0, f"rerun after a kill at {after} failed: {outcome.stderr[-800:]}"


# ----------------------------------------------------------------------------- worlds


@dataclass
class World:
    images: Path
    reference: Path  # the uninterrupted run's result
    points: int  # its kill points
    argv: object  # out dir -> argv


@pytest.fixture(scope="module")
def build_world(forks, encoder_file, tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("build")
    images = make_collection(base / "images", classes=3, per_class=4, broken=1)

    def argv(out: Path) -> list:
        return ["index", "build", images, "--encoder", encoder_file, "--out", out, *SMALL]

    census = forks.run(argv(base / "reference"))
    assert census.status == 0, census.stderr
    return World(images, base / "reference", census.points, argv)


@dataclass
class UpdateWorld(World):
    base: Path  # the index before the update
    queries: list[bytes]
    old: list
    new: list


@pytest.fixture(scope="module")
def update_world(forks, encoder_file, tmp_path_factory) -> UpdateWorld:
    base = tmp_path_factory.mktemp("update")
    images = make_collection(base / "images", classes=2, per_class=5, broken=1)
    build_index_dir(images, encoder_file, base / "base", **FAST)
    queries = [(images / q).read_bytes() for q in QUERIES]
    old = answers(base / "base", queries)
    change(images, base / "extra")
    shutil.copytree(base / "base", base / "reference")

    def argv(index: Path) -> list:
        return ["index", "update", index, *SMALL]

    census = forks.run(argv(base / "reference"))
    assert census.status == 0, census.stderr
    new = answers(base / "reference", queries)
    assert new != old
    return UpdateWorld(images, base / "reference", census.points, argv, base / "base",
                       queries, old, new)


@pytest.fixture(scope="module")
def merge_world(forks, build_world, encoder_file, tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("merge")
    for i in range(2):
        build_index_dir(build_world.images, encoder_file, base / "parts", shard=i,
                        num_shards=2, **FAST)

    def argv(out: Path) -> list:
        return ["index", "merge", base / "parts", "--out", out, "--shard-size", "3",
                "--no-progress"]

    census = forks.run(argv(base / "reference"))
    assert census.status == 0, census.stderr
    return World(build_world.images, base / "reference", census.points, argv)


# ----------------------------------------------------------------------------- kill -9


def test_build_killed_anywhere_resumes_with_every_image_once(forks, build_world, tmp_path):
    world = build_world
    assert world.points > 50  # the census saw the writes
    for n in spread(world.points, KILLS, SEED):
        out = tmp_path / f"killed-{n}"
        killed = forks.run(world.argv(out), kill_at=n)
        assert_killed(killed)
        assert_ok(forks.run(world.argv(out)), killed.killed_at)
        assert_recovered(out, world.images, world.reference)


def test_update_killed_anywhere_answers_old_or_new_then_recovers(forks, update_world,
                                                                tmp_path):
    world = update_world
    for n in spread(world.points, KILLS, SEED + 1):
        index = tmp_path / f"killed-{n}"
        shutil.copytree(world.base, index)
        killed = forks.run(world.argv(index), kill_at=n)
        assert_killed(killed)
        assert answers(index, world.queries) in (world.old, world.new), killed.killed_at
        assert_ok(forks.run(world.argv(index)), killed.killed_at)
        assert answers(index, world.queries) == world.new
        assert_recovered(index, world.images, world.reference, same_ids=False)


def test_merge_killed_anywhere_restarts_and_equals_an_uninterrupted_merge(forks, merge_world,
                                                                         tmp_path):
    world = merge_world
    for n in spread(world.points, KILLS, SEED + 2):
        out = tmp_path / f"killed-{n}"
        killed = forks.run(world.argv(out), kill_at=n)
        assert_killed(killed)
        assert_ok(forks.run(world.argv(out)), killed.killed_at)
        assert_recovered(out, world.images, world.reference)


def test_a_killed_rerun_is_recovered_too(forks, build_world, tmp_path):
    """Kill the build, then kill its resume, then resume again."""
    world, out = build_world, tmp_path / "index"
    first = spread(world.points, 2, SEED + 3)[0]
    assert_killed(forks.run(world.argv(out), kill_at=first))
    assert_killed(forks.run(world.argv(out), kill_at=max(5, first // 2)))
    assert_ok(forks.run(world.argv(out)), "two kills")
    assert_recovered(out, world.images, world.reference)


def test_build_killed_from_outside_then_the_worst_leftovers(forks, build_world, encoder_file,
                                                          tmp_path):
    """A kill from outside at a moment in time (not at a write), then the worst a kill
    can leave planted: a shard written but never committed, a half-written temp file."""
    world, out = build_world, tmp_path / "index"
    second_shard = shards.emb_path(out, 2)  # on disk: shard 1 is committed
    child = forks.spawn(world.argv(out))
    deadline = time.monotonic() + 60
    while not second_shard.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    forks.kill(child)
    assert_killed(forks.wait(child))
    assert not (out / "manifest.json").exists()
    with Store(out / DB_NAME, readonly=True) as store:
        recorded = store.count()
    assert 3 <= recorded < 13
    shutil.copy(shards.emb_path(out, 1), shards.emb_path(out, 900))
    shutil.copy(shards.ids_path(out, 1), shards.ids_path(out, 900))
    (out / "shards" / ".emb-00901.npy.x.tmp").write_bytes(b"partial")

    report = build_index_dir(world.images, encoder_file, out, **FAST)
    assert report.skipped == recorded and report.embedded + report.broken + report.skipped == 13
    assert report.count == 12
    assert not shards.emb_path(out, 900).exists()
    assert not list((out / "shards").glob(".*.tmp"))
    assert_recovered(out, world.images, world.reference)


# ----------------------------------------------------------------------------- writers


def writers_race(forks: ForkServer, first: list, second: list) -> list[Outcome]:
    """Start two writers at once; each ends well or stops at once naming the other."""
    a, b = forks.spawn(first), forks.spawn(second)
    outcomes = [forks.wait(a), forks.wait(b)]
    for outcome, other in zip(outcomes, (b, a), strict=True):
        if outcome.status != 0:
            assert outcome.clean_failure(), outcome.stderr
            assert f"being written by process {other.pid}" in outcome.error_lines()[0]
    assert 0 in [o.status for o in outcomes]
    return outcomes


def test_concurrent_writers_one_wins_the_other_stops_naming_it(forks, build_world,
                                                              update_world, merge_world,
                                                              tmp_path):
    out = tmp_path / "built"
    for outcome in writers_race(forks, build_world.argv(out), build_world.argv(out)):
        if outcome.status != 0:
            assert_ok(forks.run(build_world.argv(out)))
    assert_recovered(out, build_world.images, build_world.reference)

    index = tmp_path / "updated"
    shutil.copytree(update_world.base, index)
    repair = ["index", "repair", index]
    for argv in (update_world.argv(index), repair):
        writers_race(forks, update_world.argv(index), argv)
    assert_ok(forks.run(update_world.argv(index)))
    assert_recovered(index, update_world.images, update_world.reference,
                     same_ids=False)

    merged = tmp_path / "merged"
    writers_race(forks, merge_world.argv(merged), merge_world.argv(merged))
    assert_recovered(merged, merge_world.images, merge_world.reference)


# ----------------------------------------------------------------------------- damage


def test_damaged_files_get_one_line_then_repair_and_update_recover(forks, build_world,
                                                                    tmp_path):
    world = build_world
    rng = np.random.default_rng(SEED + 4)
    picks = [(KINDS[i], HOWS[j]) for i, j in zip(rng.permutation(5)[:3],
                                                 rng.integers(0, 4, 3), strict=True)]
    search = ["search", None, world.images / QUERIES[0], "-k", "3"]
    for kind, how in picks:
        if (kind, how) == ("meta.sqlite", "deleted"):
            how = "truncated"  # nothing to recover: a new build is the way out
        index = tmp_path / f"{kind}-{how}"
        shutil.copytree(world.reference, index)
        damage(damage_target(index, kind), how, rng)
        for argv in (search, ["index", "update", None, *SMALL]):
            argv = [index if a is None else a for a in argv]
            outcome = forks.run(argv)
            assert outcome.status == 0 or outcome.clean_failure(), (kind, how, outcome.stderr)
            assert "Traceback" not in outcome.stderr, (kind, how, outcome.stderr)
        assert_ok(forks.run(["index", "repair", index]), f"{kind} {how}")
        assert_ok(forks.run(["index", "update", index, *SMALL]), f"{kind} {how}")
        assert_recovered(index, world.images, world.reference, same_ids=False)
