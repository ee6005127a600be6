"""`groco demo` runs the whole flow: train, export, index, k-NN, on a given folder."""

import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_flow(demo_run):
    from groco.index.map import has_map

    _, work, output, _, _ = demo_run
    assert "k-NN top-1" in output and "untrained" in output
    assert "raw pixels (32 px)" in output and (work / "raw-pixels" / "index").is_dir()
    assert (work / "encoder.onnx").is_file()
    assert (work / "index" / "manifest.json").is_file()
    assert (work / "run" / "last.safetensors").is_file()
    assert has_map(work / "index")  # the Map tab has something to draw


def test_demo_writes_the_bundled_digits(tmp_path):
    from groco.demo import write_digits
    from groco.images import find_images, label_of

    folder = write_digits(tmp_path / "digits")
    files = find_images(folder)
    assert len(files) == 1797
    assert {label_of(f, folder) for f in files} == {str(d) for d in range(10)}
