"""Pretrained starts as timm users get them: a local file through timm's
``pretrained_cfg_overlay``, a populated Hugging Face cache read offline, and a clear
one-line error when the weights cannot be had; the network's own normalisation reaches
training and the ONNX file; the fine-tuning recipe trains only what it says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from groco.training.config import TrainConfig
from groco.training.models import build_backbone, pretrained_normalisation

HUB_ID = "timm/test_resnet.r160_in1k"  # timm's pretrained_cfg hf_hub_id for test_resnet


def _imagenet_like_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict timm would download for ``test_resnet``: its 1000-class network."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _same_backbone(backbone: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    own = backbone.state_dict()
    return all(torch.equal(own[k], weights[k]) for k in own)


def test_local_file_through_timm_keeps_the_pretrained_stem(tmp_path):
    weights = _imagenet_like_weights()
    path = tmp_path / "test_resnet.safetensors"
    save_file(weights, str(path))
    backbone, _ = build_backbone("test_resnet", 32, pretrained_file=path)
    assert _same_backbone(backbone, weights)
    # 32 px would give an untrained CNN the small stem; a pretrained one keeps its own.
    assert backbone.conv1[0].stride == (2, 2) and not isinstance(backbone.maxpool,
                                                                 torch.nn.Identity)
    untrained, _ = build_backbone("test_resnet", 32)
    assert untrained.conv1[0].stride == (1, 1)


def test_small_stem_keeps_pretrained_3x3_weights(tmp_path):
    weights = _imagenet_like_weights()
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    backbone, _ = build_backbone("test_resnet", 32, small_stem=True, pretrained_file=path)
    assert backbone.conv1[0].stride == (1, 1)  # ResNet-D deep stem: a 3x3 first conv
    assert _same_backbone(backbone, weights)


def _populate_hub_cache(home: Path, weights: dict[str, torch.Tensor]) -> None:
    """The Hugging Face cache layout ``hf_hub_download`` reads offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(weights, str(snapshot / "model.safetensors"))
    # hf-hub: names build the model from the repo's config.json, as published by timm.
    pretrained_cfg = {"tag": "r160_in1k", "input_size": [3, 160, 160], "mean": [0.5] * 3,
                      "std": [0.5] * 3, "num_classes": 1000, "first_conv": "conv1.0",
                      "classifier": "fc", "interpolation": "bilinear", "crop_pct": 0.95}
    (snapshot / "config.json").write_text(json.dumps(
        {"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": pretrained_cfg}))


def _python(code: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)


def test_pretrained_reads_a_populated_cache_offline(tmp_path):
    weights = _imagenet_like_weights(seed=3)
    _populate_hub_cache(tmp_path / "hf", weights)
    save_file(weights, str(tmp_path / "expected.safetensors"))
    code = f"""
import torch
from safetensors.torch import load_file
from groco.training.models import build_backbone
expected = load_file({str(tmp_path / "expected.safetensors")!r})
for name in ("test_resnet", "hf-hub:{HUB_ID}"):
    backbone, _ = build_backbone(name, 64, pretrained=True)
    own = backbone.state_dict()
    assert all(torch.equal(own[k], expected[k]) for k in own), name
print("ok")
"""
    result = _python(code, tmp_path / "hf")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_failed_download_is_one_line_saying_how_to_provide_the_file(tmp_path):
    from conftest import make_collection

    data = make_collection(tmp_path / "images")
    code = f"""
import sys
from groco.cli import app
sys.argv = ["groco", "train", {str(data)!r}, "--out", {str(tmp_path / "run")!r},
            "--backbone", "test_resnet", "--pretrained", "--image-size", "16",
            "--batch-size", "8", "--topk-neg", "4"]
app()
"""
    result = _python(code, tmp_path / "empty-hf")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot load timm's pretrained weights for "
                                "'test_resnet'")
    assert "--pretrained-file" in lines[-1] and "HF_HUB_OFFLINE" in lines[-1]
    assert "Traceback" not in result.stderr


def test_the_networks_own_normalisation_is_the_default():
    assert pretrained_normalisation("tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert pretrained_normalisation("resnet18")[0] == pytest.approx((0.485, 0.456, 0.406))
    lite0, _ = build_backbone("tf_efficientnet_lite0", 64)
    config = TrainConfig(data=".", out="run", backbone="tf_efficientnet_lite0").resolved()
    assert config.with_network(lite0).preprocessing.mean == (0.5, 0.5, 0.5)
    explicit = TrainConfig(data=".", out="run", backbone="tf_efficientnet_lite0",
                           mean=[0.1, 0.2, 0.3], std=[1, 1, 1]).resolved()
    assert explicit.with_network(lite0).preprocessing.mean == (0.1, 0.2, 0.3)


def test_finetune_trains_the_last_stages_and_heads_with_frozen_statistics(tmp_path):
    """One fine-tuning epoch after the head warm-up: the start's statistics, the stem and
    the first stage are untouched; only the last three stages moved; the run's ONNX file
    carries 0.5/0.5."""
    from conftest import make_collection

    from groco.encoder.export import export_encoder
    from groco.encoder.runtime import Encoder
    from groco.training.trainer import Trainer

    data = make_collection(tmp_path / "images", per_class=8)
    weights = _imagenet_like_weights(seed=5)
    path = tmp_path / "start.safetensors"
    save_file(weights, str(path))
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), backbone="test_resnet",
                         pretrained_file=str(path), image_size=32, batch_size=12, topk_neg=4,
                         workers=0, projector_dim=16, projector_hidden=16, epochs=2,
                         eval_every=0)
    trainer = Trainer(config, show_progress=False)
    resolved = trainer.config
    assert (resolved.finetune, resolved.freeze_bn, resolved.trainable_stages,
            resolved.head_warmup_epochs) == (True, True, 3, 1)
    trainer.train_epoch()
    trainer.epoch += 1
    after_warmup = {k: v.clone() for k, v in trainer.objective.backbone.state_dict().items()}
    assert all(torch.equal(after_warmup[k], weights[k]) for k in after_warmup)
    trainer.train_epoch()
    state = trainer.objective.backbone.state_dict()
    moved = {k for k, v in state.items() if not torch.equal(v, weights[k])}
    assert moved and all(k.startswith(("layer2.", "layer3.", "layer4.")) for k in moved), \
        sorted(moved)[:5]
    assert not any("running_" in k or "num_batches" in k for k in moved)
    assert "layer4.0.conv1.weight" in moved
    trainer.epoch += 1
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    trainer._save({"epoch": 2, "step": trainer.step}, best=False)
    report = export_encoder(tmp_path / "run", tmp_path / "e.onnx")
    encoder = Encoder(report.path)
    assert encoder.preprocessing.mean == (0.5, 0.5, 0.5)
    assert json.loads(encoder.metadata["std"]) == [0.5, 0.5, 0.5]


def test_weights_file_start_keeps_its_stem_and_a_groco_checkpoint_its_small_stem(tmp_path):
    """At <= 64 px an ImageNet file keeps its (4x cheaper) stem; a groco run trained with
    the automatic small stem records it, so `--weights run/last.safetensors` rebuilds it."""
    from conftest import make_collection

    from groco.training.trainer import Trainer

    imagenet = tmp_path / "imagenet.safetensors"
    save_file(_imagenet_like_weights(), str(imagenet))
    plain, _ = build_backbone("test_resnet", 32, weights=imagenet)
    assert not plain.groco_small_stem and plain.conv1[0].stride == (2, 2)

    data = make_collection(tmp_path / "images", classes=2, per_class=8, size=16)
    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(data), out=str(run), backbone="test_resnet", image_size=16,
                        batch_size=8, topk_neg=4, workers=0, projector_dim=16,
                        projector_hidden=16, epochs=1, eval_every=0),
            show_progress=False).fit()
    again, _ = build_backbone("test_resnet", 16, weights=run / "last.safetensors")
    assert again.groco_small_stem and again.conv1[0].stride == (1, 1)
