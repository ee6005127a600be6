"""`groco demo` runs the whole flow: train, export, index, k-NN, on a given folder."""

import pytest
from conftest import make_collection
from typer.testing import CliRunner

from groco.cli import app


@pytest.mark.slow
def test_demo_runs_the_whole_flow_without_the_ui(tmp_path):
    images = make_collection(tmp_path / "images", classes=4, per_class=20, size=24)
    work = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--data", str(images), "--work", str(work),
                                      "--epochs", "1", "--no-serve"])
    assert result.exit_code == 0, result.output
    assert "k-NN top-1" in result.output and "untrained" in result.output
    assert "raw pixels (32 px)" in result.output and (work / "raw-pixels" / "index").is_dir()
    assert (work / "encoder.onnx").is_file()
    assert (work / "index" / "manifest.json").is_file()
    assert (work / "run" / "last.safetensors").is_file()
    from groco.index.map import has_map

    assert has_map(work / "index")  # the Map tab has something to draw


def test_demo_writes_the_bundled_digits(tmp_path):
    from groco.demo import write_digits
    from groco.images import find_images, label_of

    folder = write_digits(tmp_path / "digits")
    files = find_images(folder)
    assert len(files) == 1797
    assert {label_of(f, folder) for f in files} == {str(d) for d in range(10)}
