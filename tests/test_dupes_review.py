"""The duplicates review list (groco.index.curate.review, `groco index dupes --review`):
one keeper per group by each rule, each other file's tier and action; and the per-encoder
calibration of the thresholds (`--calibrate`) on planted copies of the index's images."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from groco.cli import app
from groco.index.curate.calibrate import calibrate, current_calibration, read_calibration
from groco.index.curate.review import KEEP_RULES, keeper, review_list
from groco.index.dupes import DuplicateFile, find_duplicate_groups, scan_duplicates

EXACT = {"a/0.png", "b/0-copy.png", "b/0-copy2.png"}


def dfile(i: int, relpath: str, size: int = 100, score: float = 1.0,
          hash_: str = "") -> DuplicateFile:
    return DuplicateFile(id=i, relpath=relpath, path=f"/x/{relpath}", label=None,
                         hash=hash_ or f"h{i}", size=size, score=score, exact=False)


def test_each_keep_rule_names_its_keeper_and_ties_fall_to_the_next_rule() -> None:
    files = [dfile(1, "c.png", size=300), dfile(2, "a.png", size=500),
             dfile(3, "b.png", size=500)]
    pixels = {1: 400, 2: 100, 3: 100}
    mtimes = {1: 30.0, 2: 20.0, 3: 10.0}
    assert keeper(files, "pixels", pixels, mtimes).id == 1          # most pixels
    assert keeper(files, "bytes", pixels, mtimes).id == 3           # 500 bytes, then oldest
    assert keeper(files, "oldest", pixels, mtimes).id == 3
    assert keeper(files, "path", pixels, mtimes).id == 2            # a.png
    # a tie on pixels goes to bytes, then age, then path
    assert keeper(files, "pixels", {1: 100, 2: 100, 3: 100}, mtimes).id == 3
    assert keeper(files, "pixels", {}, {}).id == 2  # nothing known: bytes, then path
    with pytest.raises(ValueError, match="keep rule must be one of"):
        keeper(files, "newest", pixels, mtimes)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(images, index): 14 random-block images, two byte copies of a/0.png (the copies
    older on disk than the original), a 2x copy of a/1.png and a JPEG of b/2.png."""
    from groco.encoder.baselines import export_raw_pixels
    from groco.index.build import build_index_dir

    base = tmp_path_factory.mktemp("review")
    images = base / "images"
    rng = np.random.default_rng(0)
    for i in range(14):
        folder = images / ("a" if i < 7 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((36, 36), Image.NEAREST).save(folder / f"{i}.png")
    for copy in ("b/0-copy.png", "b/0-copy2.png"):
        shutil.copyfile(images / "a/0.png", images / copy)
    os.utime(images / "b/0-copy2.png", (1_000_000, 1_000_000))
    os.utime(images / "b/0-copy.png", (2_000_000, 2_000_000))
    Image.open(images / "a/1.png").resize((72, 72), Image.BILINEAR).save(images / "b/1-big.png")
    Image.open(images / "a/2.png").save(images / "a/2.jpg", quality=90)
    export_raw_pixels(12, base / "raw.onnx", parity_images=1)
    build_index_dir(images, base / "raw.onnx", base / "index", batch_size=8, progress=False)
    return images, base / "index"


def keepers(entries) -> dict[frozenset, str]:
    groups: dict[int, list] = {}
    for e in entries:
        groups.setdefault(e.group, []).append(e)
    return {frozenset(e.file.relpath for e in g): next(e.file.relpath for e in g
                                                        if e.action == "keep")
            for g in groups.values()}


def test_review_list_keeps_one_file_per_group_by_the_rule(planted) -> None:
    _, index = planted
    groups = find_duplicate_groups(index, 0.9)
    exact, big, jpeg = (frozenset(EXACT), frozenset({"a/1.png", "b/1-big.png"}),
                        frozenset({"a/2.png", "a/2.jpg"}))
    by_rule = {rule: keepers(review_list(groups, rule)) for rule in KEEP_RULES}
    assert set(by_rule["pixels"]) == {exact, big, jpeg}
    assert by_rule["pixels"][big] == "b/1-big.png"     # 72 x 72 beats 36 x 36
    assert by_rule["path"][big] == "a/1.png"
    assert by_rule["oldest"][exact] == "b/0-copy2.png"  # its mtime was set the earliest
    assert by_rule["path"][exact] == "a/0.png"
    # byte copies tie on pixels and bytes: the older one
    assert by_rule["pixels"][exact] == by_rule["bytes"][exact] == "b/0-copy2.png"
    sizes = {p.relative_to(planted[0]).as_posix(): p.stat().st_size
             for p in planted[0].rglob("*.*")}
    assert by_rule["bytes"][jpeg] == max(jpeg, key=sizes.get)
    entries = review_list(groups, "pixels")
    assert sum(e.tier == "keep" for e in entries) == 3
    for e in entries:
        if e.file.relpath in EXACT and e.action != "keep":
            assert (e.tier, e.action, e.copy_of) == ("exact", "remove?", "b/0-copy2.png")
        if e.file.relpath == "a/1.png":
            assert (e.tier, e.action, e.copy_of) == ("near", "remove?", "b/1-big.png")
    with pytest.raises(ValueError, match="keep rule"):
        review_list(groups, "largest")


def test_similar_images_are_listed_for_review_and_copy_groups_stay_whole(planted) -> None:
    _, index = planted
    scan = scan_duplicates(index, 0.9)
    # only byte copies count as copies: the resized and re-encoded ones become similar
    entries = review_list(scan.groups(1.0), "path", similar_groups=scan.groups(0.9))
    tiers = {e.file.relpath: (e.tier, e.action, e.copy_of) for e in entries}
    assert tiers["b/1-big.png"] == ("similar", "review", "a/1.png")
    assert tiers["a/2.png"] == ("similar", "review", "a/2.jpg")
    assert tiers["a/0.png"] == ("keep", "keep", None)
    assert {tiers[p] for p in EXACT - {"a/0.png"}} == {("exact", "remove?", "a/0.png")}
    # a copy group inside a cluster of look-alikes: its own keeper is similar to the
    # cluster's, its other members are copies of that keeper
    loose = scan_duplicates(index, 0.5)
    exact_only = loose.groups(1.0)
    clusters = review_list(exact_only, "path", similar_groups=loose.groups(0.5))
    by_group: dict[int, list] = {}
    for e in clusters:
        by_group.setdefault(e.group, []).append(e)
    for members in by_group.values():
        assert [e.tier for e in members].count("keep") == 1 and members[0].tier == "keep"
        paths = {e.file.relpath for e in members}
        assert paths >= EXACT or not EXACT & paths, "a copy group is never split"


def test_cli_review_text_json_csv_and_a_bad_rule(planted) -> None:
    _, index = planted
    runner = CliRunner()
    args = ["index", "dupes", str(index), "--threshold", "0.9", "--review", "--no-progress"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("3 groups: keep one file each (by pixels); 4 exact or "
                                  "near copies (cosine >= 0.9000) to remove?, 0 similar")
    result = runner.invoke(app, [*args, "--keep", "path", "--json"])
    assert result.exit_code == 0, result.output
    review = json.loads(result.stdout)
    assert review["keep"] == "path" and review["near"] == 0.9
    kept = [f["relpath"] for f in review["files"] if f["action"] == "keep"]
    assert sorted(kept) == ["a/0.png", "a/1.png", "a/2.jpg"]
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, [*args, "--csv"]).stdout)))
    assert len(rows) == 7 and sum(r["action"] == "keep" for r in rows) == 3
    assert {r["tier"] for r in rows} == {"keep", "exact", "near"}
    assert all(r["pixels"] for r in rows)
    assert {r["copy_of"] for r in rows if r["tier"] == "exact"} == {"b/0-copy2.png"}
    looser = runner.invoke(app, [*args[:4], "1.0", "--similar", "0.9", *args[5:], "--json"])
    assert looser.exit_code == 0, looser.output
    actions = {f["relpath"]: f["action"] for f in json.loads(looser.stdout)["files"]}
    for pair in (("a/1.png", "b/1-big.png"), ("a/2.png", "a/2.jpg")):
        assert sorted(actions[p] for p in pair) == ["keep", "review"]
    assert sorted(actions.values()).count("remove?") == 2  # the byte copies
    bad = runner.invoke(app, [*args, "--keep", "newest"])
    assert bad.exit_code != 0 and "--keep must be one of" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_calibration_sets_the_thresholds_dupes_uses(planted, tmp_path: Path) -> None:
    from groco.index.build import build_index_dir

    images, built = planted
    # copies are rare in a collection: 40 more distinct images beside the planted ones
    shutil.copytree(images, tmp_path / "images")
    rng = np.random.default_rng(5)
    for i in range(40):
        blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((36, 36), Image.NEAREST).save(
            tmp_path / "images" / "b" / f"more{i}.png")
    index = tmp_path / "index"
    build_index_dir(tmp_path / "images", built.parent / "raw.onnx", index, batch_size=16,
                    progress=False)
    assert current_calibration(index) is None
    found = calibrate(index, sample=100, seed=1)
    # raw pixels: re-encoded and resized copies stay very close to their originals,
    # random-block images are far from each other
    assert 0.9 < found.near <= 1.0 and found.similar <= found.near
    assert found.sample == 58  # every file
    assert set(found.kinds) == {"jpeg", "smaller", "larger", "crop"}
    assert found.kinds["crop"]["median"] < found.kinds["jpeg"]["median"]
    # the sampled files whose nearest other file (byte copies aside) is a near copy: the
    # resized and re-encoded pairs
    assert found.look_alike_share == pytest.approx(4 / 58, abs=1e-3)
    assert current_calibration(index) == found
    assert read_calibration(index, encoder_hash="another encoder") is None
    result = CliRunner().invoke(app, ["index", "dupes", str(index), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    by_default = [g["size"] for g in json.loads(result.stdout)]
    explicit = find_duplicate_groups(index, found.near)
    assert by_default == [g.size for g in explicit] == [3, 2, 2]
    # --distinct reads the calibration too
    from groco.index.api import IndexReader

    with IndexReader(index) as reader:
        assert reader.near_copy_threshold() == found.near
    with IndexReader(built) as reader:
        assert reader.near_copy_threshold() == 0.97


def test_the_near_threshold_keeps_the_copies_and_leaves_the_look_alikes() -> None:
    from groco.index.curate.calibrate import youden_threshold

    copies = np.array([0.99, 0.995, 1.0, 0.999])
    assert youden_threshold(copies, np.array([0.5, 0.6, 0.7, 0.98])) == 0.99
    # look-alikes as close as the copies: a copy is given up rather than most of them taken
    overlapping = np.array([0.80, 0.90, 0.95, 0.97, 0.99])
    look_alikes = np.array([0.85] * 8 + [0.5, 0.6])
    t = youden_threshold(overlapping, look_alikes)
    assert t == 0.90 and (look_alikes >= t).mean() == 0.0
