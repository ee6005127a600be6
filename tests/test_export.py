"""groco.encoder: ONNX export (fp32/fp16/int8), metadata, the ONNX Runtime encoder, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from groco.cli import app
from groco.encoder.export import ExportError, export_encoder, load_embedding_model
from groco.encoder.runtime import CPU, Encoder, EncoderError
from groco.images import ImageError, find_images, load_image
from groco.training import checkpoint
from groco.training.config import TrainConfig
from groco.training.models import build_model

SIZE, RESIZE = 32, 36
RUNS = {"cnn": "resnet18", "vit": "vit_tiny_patch16_224"}  # ViT at 32 px: 2x2 patches + cls


def _image(kind: str, rng: np.random.Generator) -> Image.Image:
    """One generated picture: shapes, noise, a gradient or stripes, not square."""
    w, h = 40 + int(rng.integers(0, 24)), 40
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == "noise":
        pixels = rng.integers(0, 256, (h, w, 3)) * 0.5 + c1 * 0.5
    elif kind == "gradient":
        t = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
        pixels = c1 * (1 - t) + c2 * t
    elif kind == "stripes":
        on = (np.arange(w) // int(rng.integers(3, 12))) % 2 == 1
        pixels = np.where(on[None, :, None], c1, c2) * np.ones((h, 1, 1))
    else:
        img = Image.new("RGB", (w, h), tuple(int(v) for v in c2))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            box = (x0, y0, x0 + int(rng.integers(5, 30)), y0 + int(rng.integers(5, 30)))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        return img
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 generated images in 4 subfolders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    kinds = ("shapes", "noise", "gradient", "stripes")
    for i in range(40):
        kind = kinds[i % 4]
        (root / kind).mkdir(exist_ok=True)
        _image(kind, rng).save(root / kind / f"{i:03d}.png")
    return root


def _config(run_dir: Path, data: Path, backbone: str) -> TrainConfig:
    return TrainConfig(
        data=str(data), out=str(run_dir), backbone=backbone, image_size=SIZE,
        small_stem=backbone == "resnet18", eval_resize=RESIZE, mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225], method="groco", epochs=3, projector_hidden=64,
        projector_dim=32, projector_layers=2).resolved()


def _make_run(run_dir: Path, data: Path, backbone: str) -> Path:
    """What `groco train` leaves: config.yaml + last.safetensors (random init)."""
    torch.manual_seed(0)
    config = _config(run_dir, data, backbone)
    run_dir.mkdir(parents=True)
    checkpoint.save_weights(run_dir, build_model(config).state_dict())
    checkpoint.save_config(run_dir, config.to_dict())
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {kind: _make_run(root / kind, data, name) for kind, name in RUNS.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, runs: dict[str, Path]):
    """Lazily export (kind, precision) once per module; returns the ExportReport."""
    out = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(kind: str, precision: str = "fp32"):
        if (kind, precision) not in cache:
            cache[kind, precision] = export_encoder(
                runs[kind], out / f"{kind}-{precision}.onnx", precision=precision,
                calibration_images=32, parity_images=8)
        return cache[kind, precision]

    return get


def _batch(encoder: Encoder, files: list[Path]) -> np.ndarray:
    return np.stack([encoder.preprocess(load_image(f)) for f in files])


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_fp32_matches_pytorch_unit_norm_dynamic_batch(kind, exported, runs, data) -> None:
    report = exported(kind)
    assert report.precision == "fp32" and report.max_abs_diff <= 1e-4
    assert "images from" in report.parity_source  # real images, not random tensors
    encoder = Encoder(report.path, threads=2)
    files = find_images(data)[:17]
    batch = _batch(encoder, files)
    model, _, dim = load_embedding_model(runs[kind])
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = encoder.embed_arrays(batch)
    assert got.shape == (17, dim) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    one = encoder.embed_arrays(batch[5:6])  # batch 1 and batch 17 through the same graph
    np.testing.assert_allclose(one[0], got[5], atol=1e-5)


def test_metadata_round_trips(exported, runs, tmp_path) -> None:
    report = exported("cnn")
    encoder = Encoder(report.path)
    config = checkpoint.load_config(runs["cnn"])
    assert encoder.provider == CPU  # no GPU here; the session says what really runs
    assert (encoder.dim, encoder.image_size, encoder.resize_to) == (512, SIZE, RESIZE)
    assert encoder.backbone == "resnet18" and encoder.hash == report.hash
    meta = encoder.metadata
    assert meta["mean"] == "[0.485, 0.456, 0.406]" and meta["std"] == "[0.229, 0.224, 0.225]"
    assert meta["method"] == "groco" and meta["epochs"] == "3" and meta["precision"] == "fp32"
    assert meta["resize_policy"] == "shorter-side-bicubic-then-center-crop"
    assert meta["version"] and meta["embedding_dim"] == "512"
    assert config["image_size"] == int(meta["input_size"])

    # The hash is the sha256 of the file without its hash entry: reproducible.
    model = onnx.load(report.path)
    del model.metadata_props[-1]
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]
    assert digest == report.hash
    again = export_encoder(runs["cnn"], tmp_path / "again.onnx", parity_images=8)
    assert again.hash == report.hash


def test_embed_decodes_paths_bytes_and_images(exported, data) -> None:
    encoder = Encoder(exported("cnn").path, batch_size=4)
    files = find_images(data)[:10]
    expected = encoder.embed_arrays(_batch(encoder, files))
    np.testing.assert_allclose(encoder.embed(files), expected, atol=1e-6)
    mixed = [files[0], str(files[1]), files[2].read_bytes(), Image.open(files[3]).convert("RGBA")]
    np.testing.assert_allclose(encoder.embed(mixed, batch_size=3), expected[:4], atol=1e-6)
    assert encoder.embed([]).shape == (0, 512)
    with pytest.raises(ImageError, match="broken.png"):
        encoder.embed([*files[:5], data / "broken.png"])


def _top10(vectors: np.ndarray) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :10]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_low_precision_agrees_with_fp32(kind, precision, exported, data) -> None:
    report = exported(kind, precision)
    assert report.max_abs_diff <= 1e-4 and report.cosine_min >= 0.99
    files = find_images(data)
    reference = Encoder(exported(kind).path).embed(files)
    encoder = Encoder(report.path)
    assert encoder.metadata["precision"] == precision and encoder.hash != exported(kind).hash
    vectors = encoder.embed(files)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.99, cosines.min()

    # Neighbours: strict top-10 overlap on average; per image, a neighbour swapped for one
    # fp32 rates within 0.005 of its 10th neighbour (a near tie) still counts as kept.
    ours, theirs = _top10(vectors), _top10(reference)
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(ours, theirs, strict=True)]
    assert np.mean(overlap) >= 0.9, overlap
    sims = reference @ reference.T
    for i in range(len(files)):
        tenth = sims[i, theirs[i, -1]]
        kept = sum(sims[i, j] >= tenth - 0.005 for j in ours[i])
        assert kept >= 9, (i, kept)

    graph = onnx.load(report.path).graph
    if precision == "int8":  # static QDQ: the convolutions' weights are int8, per channel
        dequantised = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
        conv_weights = [dequantised.get(n.input[1]) for n in graph.node if n.op_type == "Conv"]
        assert conv_weights and all(w is not None for w in conv_weights)
    else:
        types = {t.data_type for t in graph.initializer if len(t.dims) > 1}
        assert types == {onnx.TensorProto.FLOAT16}


def test_int8_is_checked_on_held_out_images_with_7_bit_weights(exported, runs) -> None:
    report = exported("vit", "int8")
    assert report.parity_files and report.calibration_files
    assert not set(report.parity_files) & set(report.calibration_files)
    assert "held-out" in report.parity_source
    # 7-bit weights (reduce_range): u8 x s8 pair sums cannot saturate int16 on non-VNNI CPUs.
    graph = onnx.load(report.path).graph
    weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) >= 60  # the 7-bit range is used


def test_refuses_to_write_an_encoder_that_disagrees_with_fp32(exported, runs, tmp_path,
                                                            monkeypatch) -> None:
    from groco.encoder import checked as export_module

    exported("cnn")  # the trace is cached, so these exports are quick
    real_to_int8 = export_module.to_int8

    def miscalibrated(body, calibration, **options):  # ranges 100x too small: saturation
        return real_to_int8(body, calibration * 0.01, **options)

    monkeypatch.setattr(export_module, "to_int8", miscalibrated)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="agree too poorly with fp32") as info:
        export_encoder(runs["cnn"], out, precision="int8", calibration_images=32,
                       parity_images=8)
    assert "\n" not in str(info.value) and "cosine min" in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    monkeypatch.setattr(export_module, "to_int8", real_to_int8)
    monkeypatch.setattr(export_module, "MIN_COSINE", 1.01)  # nothing reaches it
    with pytest.raises(ExportError, match="fp16 embeddings agree too poorly"):
        export_encoder(runs["cnn"], out, precision="fp16", parity_images=4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_takes_the_best_epoch_and_says_so(data, tmp_path) -> None:
    run = _make_run(tmp_path / "run", data, "resnet18")  # last.safetensors: seed 0
    config = _config(run, data, "resnet18")
    torch.manual_seed(1)
    best = build_model(config).state_dict()
    checkpoint.save_weights(run, best, name=checkpoint.BEST, metadata={
        "epoch": "2", "criterion": "knn_top1", "reason": "best k-NN top-1 0.6000"})
    runner = CliRunner()
    out = tmp_path / "best.onnx"
    result = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "weights: epoch 2 from best.safetensors: best k-NN top-1 0.6000" in result.stdout

    files = find_images(data)[:6]
    encoder = Encoder(out)
    assert encoder.metadata["weights"] == checkpoint.BEST
    batch = _batch(encoder, files)
    got = encoder.embed_arrays(batch)
    best_model, _, _ = load_embedding_model(run, checkpoint.BEST)
    last_model, _, _ = load_embedding_model(run)
    assert np.abs(got - best_model.embed(batch)).max() <= 1e-4
    assert np.abs(got - last_model.embed(batch)).max() > 0.01  # the two really differ

    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "last.onnx"),
                                 "--last"])
    assert result.exit_code == 0, result.output
    assert "weights: the last epoch (last.safetensors" in result.stdout
    last = Encoder(tmp_path / "last.onnx")
    assert last.metadata["weights"] == checkpoint.WEIGHTS
    assert np.abs(last.embed_arrays(batch) - last_model.embed(batch)).max() <= 1e-4


def test_parity_without_images_uses_random_tensors(exported, runs, tmp_path) -> None:
    exported("cnn")  # the trace is cached, so this is quick
    report = export_encoder(runs["cnn"], tmp_path / "e.onnx", data=tmp_path / "gone",
                            parity_images=4)
    assert "random tensors" in report.parity_source and report.max_abs_diff <= 1e-4
    with pytest.raises(ExportError, match="calibration images"):
        export_encoder(runs["cnn"], tmp_path / "q.onnx", precision="int8",
                       data=tmp_path / "gone")
    assert not (tmp_path / "q.onnx").exists()


def test_bad_runs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ExportError, match="not a groco run directory"):
        export_encoder(tmp_path, tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="precision"):
        export_encoder(tmp_path, tmp_path / "x.onnx", precision="int4")


def test_bad_encoder_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(EncoderError, match="not found"):
        Encoder(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(EncoderError, match="not a readable ONNX model"):
        Encoder(corrupt)
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(EncoderError, match="not a readable ONNX model"):
        Encoder(text)

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    plain = tmp_path / "plain.onnx"
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, plain)
    with pytest.raises(EncoderError, match="not a groco encoder") as info:
        Encoder(plain)
    assert "\n" not in str(info.value)


def test_cli_export_and_embed(runs, data, exported, tmp_path) -> None:
    exported("cnn")  # warm the trace cache: the CLI runs in this process
    runner = CliRunner()
    onnx_path, npy = tmp_path / "enc.onnx", tmp_path / "emb.npy"
    result = runner.invoke(app, ["export", str(runs["cnn"]), "--out", str(onnx_path),
                                 "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert "fp16 vs fp32: cosine min" in result.stdout and onnx_path.is_file()

    folder = data / "stripes"
    result = runner.invoke(app, ["embed", str(folder), str(find_images(data)[0]),
                                 "--encoder", str(onnx_path), "--out", str(npy)])
    assert result.exit_code == 0, result.output
    vectors = np.load(npy)
    assert vectors.shape == (len(find_images(folder)) + 1, 512)
    expected = Encoder(onnx_path).embed(find_images(folder))
    np.testing.assert_allclose(vectors[:-1], expected, atol=1e-6)

    result = runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(onnx_path)])
    assert result.exit_code == 1 and "not a groco run directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["embed", str(folder), "--encoder", str(tmp_path / "x.onnx"),
                                 "--out", str(npy)])
    assert result.exit_code == 1 and "encoder file not found" in result.stderr
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = runner.invoke(app, ["embed", str(broken), "--encoder", str(onnx_path),
                                 "--out", str(npy)])
    assert result.exit_code == 1 and "broken.jpg" in result.stderr


def test_a_cuda_session_loads_the_cuda_libraries_once_first(exported, monkeypatch) -> None:
    """ONNX Runtime's CUDA provider finds the NVIDIA pip packages' libraries only when they
    are loaded first; without them it runs on the CPU without an error."""
    from groco.encoder import runtime

    calls: list[int] = []
    monkeypatch.setattr(runtime.ort, "preload_dlls", lambda: calls.append(1), raising=False)
    runtime.preload_cuda_libraries.cache_clear()
    try:
        Encoder(exported("cnn").path, providers=[runtime.CPU])
        assert calls == []
        for _ in range(2):  # where CUDA cannot start, the session runs on the CPU
            assert Encoder(exported("cnn").path,
                           providers=[runtime.CUDA, runtime.CPU]).provider in (runtime.CUDA,
                                                                                runtime.CPU)
        assert calls == [1]
    finally:
        runtime.preload_cuda_libraries.cache_clear()
