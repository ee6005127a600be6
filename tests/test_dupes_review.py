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
from groco.index.curate.review import KEEP_RULES, keeper, review_list, tier
from groco.index.dupes import DuplicateFile, find_duplicate_groups

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


def test_tier_against_the_keeper() -> None:
    rep = dfile(1, "a.png", score=1.0, hash_="same")
    twin = dfile(2, "b.png", score=1.0, hash_="same")
    near = dfile(3, "c.png", score=0.98)
    loose = dfile(4, "d.png", score=0.93)
    assert tier(twin, rep, rep, near=0.95) == "exact"
    assert tier(near, rep, rep, near=0.95) == "near"
    assert tier(loose, rep, rep, near=0.95) == "similar"
    # the keeper is not the representative: its own score stands for the pair's
    assert tier(rep, near, rep, near=0.95) == "near"
    assert tier(rep, loose, rep, near=0.95) == "similar"
    # neither is: the lower of their two scores
    assert tier(near, loose, rep, near=0.95) == "similar"


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
    by_rule = {rule: keepers(review_list(groups, near=0.95, rule=rule)) for rule in KEEP_RULES}
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
    entries = review_list(groups, near=0.95, rule="pixels")
    for e in entries:
        if e.file.relpath in EXACT and e.action != "keep":
            assert (e.tier, e.action) == ("exact", "remove?")
        if e.file.relpath == "a/1.png":
            assert (e.tier, e.action) == ("near", "remove?")
    # a near threshold above every copy's score: the copies are only similar, to review
    strict = review_list(groups, near=1.0, rule="path")
    assert {e.tier for e in strict if e.file.relpath in {"b/1-big.png", "a/2.png"}} == {"similar"}
    assert all(e.action == "review" for e in strict if e.tier == "similar")
    with pytest.raises(ValueError, match="keep rule"):
        review_list(groups, near=0.95, rule="largest")


def test_cli_review_text_json_csv_and_a_bad_rule(planted) -> None:
    _, index = planted
    runner = CliRunner()
    args = ["index", "dupes", str(index), "--threshold", "0.9", "--review", "--no-progress"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("3 groups: keep one file each (by pixels); 4 exact or "
                                  "near copies (cosine >= 0.9000) to remove?")
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
    bad = runner.invoke(app, [*args, "--keep", "newest"])
    assert bad.exit_code != 0 and "--keep must be one of" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_calibration_sets_the_thresholds_dupes_uses(planted, tmp_path: Path) -> None:
    images, built = planted
    index = tmp_path / "index"
    shutil.copytree(built, index)
    assert current_calibration(index) is None
    found = calibrate(index, sample=50, seed=1)
    # raw pixels: re-encoded and resized copies stay very close to their originals,
    # random-block images are far from each other
    assert 0.9 < found.near <= 1.0 and found.similar <= found.near
    assert found.sample == 18  # every file
    assert set(found.kinds) == {"jpeg", "smaller", "larger", "crop"}
    assert found.kinds["crop"]["median"] < found.kinds["jpeg"]["median"]
    # the sampled files whose nearest other file is a near copy: the 7 with a planted copy
    assert found.look_alike_share == pytest.approx(7 / 18, abs=1e-3)
    assert current_calibration(index) == found
    assert read_calibration(index, encoder_hash="another encoder") is None
    result = CliRunner().invoke(app, ["index", "dupes", str(index), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    by_default = [g["size"] for g in json.loads(result.stdout)]
    explicit = find_duplicate_groups(index, found.near)
    assert by_default == [g.size for g in explicit]
