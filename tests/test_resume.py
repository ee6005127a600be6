"""Exact resume at every kill point of a checkpoint: whatever file operation of a checkpoint
write a ``kill -9`` lands before, the run directory describes one finished epoch and
``--resume`` ends bit-identical to an uninterrupted run; a mismatched set is refused with
one line; ``--resume`` with other settings says how to train longer."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import make_collection
from faultkit import assert_same_run, point_name
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from groco.cli import app
from groco.training import checkpoint
from groco.training.config import TrainConfig
from groco.training.trainer import Trainer

EPOCHS = 2


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(backbone="test_resnet", image_size=16, batch_size=8, topk_neg=4, workers=0,
                    projector_dim=16, projector_hidden=16, epochs=EPOCHS, lr=0.5,
                    max_steps_per_epoch=2)
    return TrainConfig(data=str(data), out=str(out), **{**settings, **changes})


def _fit(config: TrainConfig, resume: bool = False) -> None:
    Trainer(config, resume=resume, show_progress=False).fit()


def _record_kill_points(monkeypatch, snapshots: Path, run: Path) -> list[tuple[Path, str]]:
    """Copy ``run`` just before each file operation a checkpoint write makes: each copy is
    what a ``kill -9`` at that moment leaves on disk."""
    taken: list[tuple[Path, str]] = []
    save = checkpoint.save_generation

    def profile(frame, event, arg):
        if event != "c_call" or point_name(arg) is None:
            return
        where = snapshots / f"{len(taken):03d}"
        shutil.copytree(run, where, symlinks=True, ignore=shutil.ignore_patterns("tensorboard"))
        taken.append((where, f"{point_name(arg)} in the checkpoint of epoch {epoch[0]}"))

    epoch = [0]

    def recorded(run_dir, generation):
        epoch[0] = generation.epoch
        sys.setprofile(profile)
        try:
            save(run_dir, generation)
        finally:
            sys.setprofile(None)

    monkeypatch.setattr(checkpoint, "save_generation", recorded)
    return taken


def _signature(run: Path) -> str:
    """Names, link targets and file bytes of a run directory: equal copies resume alike."""
    digest = hashlib.sha256()
    for path in sorted(run.rglob("*")):
        if "tensorboard" in path.parts:
            continue
        digest.update(str(path.relative_to(run)).encode())
        if path.is_symlink():
            digest.update(str(path.readlink()).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_every_kill_point_of_a_checkpoint_resumes_bit_identically(tmp_path, monkeypatch,
                                                                   one_thread):
    data = make_collection(tmp_path / "images", classes=2, per_class=8, size=16)
    straight = tmp_path / "straight"
    _fit(_config(data, straight))

    recorded = tmp_path / "recorded"
    points = _record_kill_points(monkeypatch, tmp_path / "killed", recorded)
    _fit(_config(data, recorded))
    monkeypatch.undo()
    assert_same_run(recorded, straight, "the recording run")
    assert {what.split(" in the checkpoint of epoch ")[1] for _, what in points} == \
        {str(e) for e in range(EPOCHS + 1)}
    kinds = {what.split(" ")[0] for _, what in points}
    wanted = {"os.rename", "os.replace", "os.symlink", "os.link", "file.write", "os.fsync"}
    assert wanted <= kinds, kinds

    seen: dict[str, Path] = {}
    for where, what in points:
        epochs = {row["epoch"] for row in checkpoint.read_metrics(where / checkpoint.METRICS)}
        restored = checkpoint.load_generation(where)
        if restored is not None:  # the directory describes one finished epoch
            assert epochs == {str(e) for e in range(restored.epoch + 1)}, what
            assert checkpoint.weights_metadata(where)["epoch"] == str(restored.epoch)
        signature = _signature(where)
        if signature in seen:
            continue
        seen[signature] = where
        _fit(_config(data, where), resume=True)
        assert_same_run(where, straight, f"killed before {what}")
    assert len(seen) >= 2 * (EPOCHS + 1), len(seen)


def _finished_run(tmp_path: Path) -> tuple[Path, Path]:
    data = make_collection(tmp_path / "images", classes=2, per_class=8, size=16)
    run = tmp_path / "run"
    _fit(_config(data, run, epochs=2))
    return data, run


def test_a_mismatched_checkpoint_is_refused_with_one_line(tmp_path):
    data, run = _finished_run(tmp_path)
    generation = checkpoint.current_generation(run)
    weights = load_file(str(generation / checkpoint.WEIGHTS))
    weights["projector.0.weight"] = weights["projector.0.weight"] + 1
    save_file(weights, str(generation / checkpoint.WEIGHTS), metadata={"epoch": "1"})
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(run), "--resume"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "cannot be resumed exactly" in lines[0] and "--weights" in lines[0]


def test_an_older_run_directory_with_weights_ahead_of_its_state_is_refused(tmp_path):
    """The layout before generations (plain files): a kill between ``last.safetensors``
    and ``last.json`` left epoch 2's weights with epoch 1's optimiser state."""
    data, run = _finished_run(tmp_path)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(run / checkpoint.CONFIG, legacy / checkpoint.CONFIG)
    for name in (checkpoint.WEIGHTS, checkpoint.STATE_TENSORS, checkpoint.METRICS):
        shutil.copy(run / name, legacy / name)  # follows the links: plain files, epoch 2
    state = json.loads((run / checkpoint.STATE).read_text())
    state.pop("files")
    (legacy / checkpoint.STATE).write_text(json.dumps({**state, "epoch": 1}))
    with pytest.raises(checkpoint.RunError, match="holds epoch 2, last.json epoch 1"):
        Trainer(_config(data, legacy), resume=True, show_progress=False)

    (legacy / checkpoint.STATE).write_text(json.dumps(state))  # a consistent older run
    trainer = Trainer(_config(data, legacy, epochs=2), resume=True, show_progress=False)
    assert (trainer.epoch, len(trainer.metrics)) == (2, 3)

    # Its next checkpoint turns the plain files into links through a generation.
    settings = (legacy / checkpoint.CONFIG).read_text().replace("epochs: 2", "epochs: 3")
    (legacy / checkpoint.CONFIG).write_text(settings)
    _fit(_config(data, legacy), resume=True)
    assert all((legacy / name).is_symlink() for name in checkpoint.GENERATION_FILES)
    assert checkpoint.load_generation(legacy).epoch == 3
    assert [row["epoch"] for row in checkpoint.read_metrics(legacy / checkpoint.METRICS)] == \
        ["0", "1", "2", "3"]


def test_resume_with_more_epochs_says_how_to_train_longer(tmp_path):
    data, run = _finished_run(tmp_path)
    before = _signature(run)
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(run), "--resume",
                                      "--epochs", "4"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--epochs 4 differs from its 2" in lines[0], result.output
    assert f"--weights {run / checkpoint.BEST} --epochs 4" in lines[0]
    assert _signature(run) == before

    same = CliRunner().invoke(app, ["train", str(data), "--out", str(run), "--resume",
                                    "--epochs", "2"])
    assert same.exit_code == 0, same.output
    assert "trained 2 epochs" in same.output
    assert _signature(run) == before
