"""Baseline encoders (groco.encoder.baselines): raw pixels and a timm network as it is,
exported without a run, indexed like any encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from groco.cli import app
from groco.encoder.baselines import RAW_PIXELS, export_raw_pixels, raw_pixel_body
from groco.encoder.graph import append_l2_normalisation, run
from groco.encoder.runtime import Encoder
from groco.images import find_images, load_image
from groco.index.manifest import read_manifest
from groco.preprocessing import Preprocessing

NETWORK = "tf_efficientnet_lite0"  # its own normalisation is 0.5 / 0.5, not ImageNet's
SIZE = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs: scikit-learn's two sample images and 10 crops of them, not square,
    in two class folders."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    for name, pixels in zip(("china", "flower"), load_sample_images().images, strict=True):
        (root / name).mkdir()
        image = Image.fromarray(pixels)
        image.save(root / name / "whole.jpg", quality=92)
        w, h = image.size
        for i in range(5):
            box = (40 * i, 30 * i, 40 * i + w // 2 + 17 * i, 30 * i + h // 2)
            image.crop(box).save(root / name / f"crop{i}.png")
    return root


def test_raw_pixel_encoder_is_the_numpy_formula(photos, tmp_path) -> None:
    size = 16
    report = export_raw_pixels(size, tmp_path / "raw.onnx", data=photos)
    assert report.max_abs_diff <= 1e-5 and "images from" in report.parity_source
    encoder = Encoder(report.path)
    files = find_images(photos)
    got = encoder.embed(files)

    # resize the shorter side to 16 and centre-crop, flatten channels first, subtract the
    # image's mean, divide by the norm
    pixels = np.stack([Preprocessing(size, size).array(load_image(f)) for f in files])
    assert pixels.shape == (len(files), 3, size, size)
    flat = pixels.reshape(len(files), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    expected = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    assert got.shape == (len(files), 3 * size * size)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    meta = encoder.metadata
    assert meta["backbone"] == RAW_PIXELS and meta["method"] == RAW_PIXELS
    assert (encoder.image_size, encoder.resize_to, encoder.dim) == (size, size, 768)
    assert meta["mean"] == "[0.0, 0.0, 0.0]" and meta["std"] == "[1.0, 1.0, 1.0]"
    assert meta["centre"] == "per-image mean"
    again = export_raw_pixels(size, tmp_path / "again.onnx")
    assert again.hash == report.hash  # the same encoder whatever images checked it


def test_raw_pixel_graph_without_centring_and_of_a_flat_image() -> None:
    batch = np.random.default_rng(0).random((3, 3, 4, 4), dtype=np.float32)
    batch[2] = 0.25  # a flat image: centred it is all zeros, and stays zeros (no NaN)
    plain = run(append_l2_normalisation(raw_pixel_body(4, centre=False)), batch)
    flat = batch.reshape(3, -1)
    np.testing.assert_allclose(plain, flat / np.linalg.norm(flat, axis=1, keepdims=True),
                               atol=1e-6)
    centred = run(append_l2_normalisation(raw_pixel_body(4)), batch)
    assert np.all(np.isfinite(centred)) and np.abs(centred[2]).max() == 0
    np.testing.assert_allclose(np.linalg.norm(centred[:2], axis=1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm state dict (classifier included, as timm saves it) of random weights."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_file(timm.create_model(NETWORK).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def backbone_encoder(weights_file, photos, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("enc") / "lite0.onnx"
    result = CliRunner().invoke(app, [
        "export", "--backbone", NETWORK, "--image-size", str(SIZE), "--weights",
        str(weights_file), "--out", str(out), "--data", str(photos)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_backbone_from_a_weights_file_embeds_like_the_network(
        backbone_encoder, weights_file, photos) -> None:
    path, printed = backbone_encoder
    assert f"weights file {weights_file}" in printed and "parity vs PyTorch" in printed
    encoder = Encoder(path)
    meta = encoder.metadata
    # the network's own normalisation (timm's pretrained_cfg) reaches the file
    cfg = timm.create_model(NETWORK, pretrained=False).pretrained_cfg
    assert json.loads(meta["mean"]) == pytest.approx(list(cfg["mean"]))
    assert json.loads(meta["std"]) == pytest.approx(list(cfg["std"]))
    assert json.loads(meta["mean"]) == pytest.approx([0.5, 0.5, 0.5])
    assert meta["backbone"] == NETWORK and meta["method"] == "weights"
    assert meta["weights"] == weights_file.name

    # a file that is not a groco checkpoint keeps its stem, as the start of a run does
    assert np.abs(encoder.embed(find_images(photos)) - _by_hand(weights_file, photos, encoder,
                                                                stride=2)).max() <= 1e-4


def test_backbone_with_the_small_stem_is_the_stride_1_network(weights_file, photos,
                                                              tmp_path) -> None:
    out = tmp_path / "small-stem.onnx"
    result = CliRunner().invoke(app, [
        "export", "--backbone", NETWORK, "--image-size", str(SIZE), "--weights",
        str(weights_file), "--small-stem", "--out", str(out), "--data", str(photos)])
    assert result.exit_code == 0, result.output
    encoder = Encoder(out)
    got = encoder.embed(find_images(photos))
    assert np.abs(got - _by_hand(weights_file, photos, encoder, stride=1)).max() <= 1e-4


def _by_hand(weights_file: Path, photos: Path, encoder: Encoder, stride: int) -> np.ndarray:
    """The PyTorch network built by hand from the file (stem conv at ``stride``), with its
    own mean/std applied, on the encoder's preprocessed images."""
    cfg = timm.create_model(NETWORK, pretrained=False).pretrained_cfg
    network = timm.create_model(NETWORK, num_classes=0)
    weights = {k: v for k, v in load_file(str(weights_file)).items()
               if not k.startswith("classifier.")}
    network.load_state_dict(weights, strict=True)
    network.conv_stem.stride = (stride, stride)
    network.eval()
    batch = np.stack([encoder.preprocess(load_image(f)) for f in find_images(photos)])
    x = torch.from_numpy(batch)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(network((x - mean) / std), dim=1).numpy()
    assert expected.shape == (len(batch), 1280)
    return expected


def test_the_index_accepts_both_baselines(backbone_encoder, photos, tmp_path) -> None:
    runner = CliRunner()
    raw = tmp_path / "raw.onnx"
    result = runner.invoke(app, ["export", "--raw-pixels", "12", "--out", str(raw)])
    assert result.exit_code == 0, result.output
    query = find_images(photos)[3]
    for name, encoder in (("raw", raw), ("lite0", backbone_encoder[0])):
        index = tmp_path / f"index-{name}"
        result = runner.invoke(app, ["index", "build", str(photos), "--encoder", str(encoder),
                                     "--out", str(index)])
        assert result.exit_code == 0, result.output
        manifest = read_manifest(index)
        assert manifest["encoder_hash"] == Encoder(encoder).hash
        assert manifest["count"] == len(find_images(photos))
        result = runner.invoke(app, ["search", str(index), str(query), "-k", "3", "--json"])
        assert result.exit_code == 0, result.output
        first = json.loads(result.stdout)["results"][0]
        assert Path(first["path"]).resolve() == query.resolve()


def test_bad_baseline_requests_are_one_line_errors(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "x.onnx"
    cases = [
        (["export", "--out", str(out)], "give one of RUN, --backbone NAME or --raw-pixels N"),
        (["export", str(tmp_path), "--raw-pixels", "8", "--out", str(out)], "not RUN and"),
        (["export", "--raw-pixels", "8", "--pretrained", "--out", str(out)], "go with --backbone"),
        (["export", "--raw-pixels", "8", "--precision", "int8", "--out", str(out)], "fp32 only"),
        (["export", "--backbone", "resnet18", "--pretrained", "--weights", str(out),
          "--out", str(out)], "not both"),
        (["export", "--backbone", "resnet18", "--weights", str(tmp_path / "none.pt"),
          "--out", str(out)], "weights file not found"),
        (["export", "--backbone", "resnet_nope", "--out", str(out)], "unknown timm model"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    onnx_files = list(tmp_path.glob("*.onnx"))
    assert onnx_files == [], onnx_files


def _populate_hub_cache(home: Path, repo_id: str, weights: dict[str, torch.Tensor]) -> None:
    """The Hugging Face cache layout ``hf_hub_download`` reads offline (one snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(weights, str(repo / "snapshots" / commit / "model.safetensors"))


@pytest.mark.slow
def test_pretrained_backbone_from_the_cache_offline(photos, tmp_path) -> None:
    """--pretrained goes the way timm users get weights (here a cache read offline); the
    file records the method, and embeds like the network with those weights."""
    import os
    import subprocess
    import sys

    name = "test_resnet"
    cfg = timm.models.get_pretrained_cfg(name)
    torch.manual_seed(5)
    weights = {k: v.contiguous()
               for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    _populate_hub_cache(tmp_path / "hf", cfg.hf_hub_id, weights)
    out = tmp_path / "pretrained.onnx"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    code = ("import sys; from groco.cli import app; sys.argv = ['groco', 'export', "
            f"'--backbone', {name!r}, '--image-size', '32', '--pretrained', '--out', "
            f"{str(out)!r}, '--data', {str(photos)!r}]; app()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "timm's pretrained weights" in result.stdout

    encoder = Encoder(out)
    assert encoder.metadata["method"] == "pretrained" and encoder.backbone == name
    assert json.loads(encoder.metadata["mean"]) == pytest.approx(list(cfg.mean))
    network = timm.create_model(name, num_classes=0)
    network.load_state_dict({k: v for k, v in weights.items() if not k.startswith("fc.")})
    files = find_images(photos)[:4]
    batch = np.stack([encoder.preprocess(load_image(f)) for f in files])
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(network.eval()((torch.from_numpy(batch) - mean) / std)).numpy()
    assert np.abs(encoder.embed_arrays(batch) - expected).max() <= 1e-4
