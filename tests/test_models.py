"""Backbones (timm, small-image stem, local weights), projector and SSLModel."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from groco.training.models import (
    Projector,
    SSLModel,
    build_backbone,
    build_model,
    is_vit,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def test_resnet18_small_stem_keeps_a_spatial_map_at_32px():
    model, dim = build_backbone("resnet18", 32)  # auto: small stem at <= 64 px
    assert dim == 512
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    model.eval()
    x = _images(2, 32)
    with torch.no_grad():
        fmap = model.forward_features(x)
        feats = model(x)
    assert fmap.shape == (2, 512, 4, 4)
    assert feats.shape == (2, 512)


def test_small_stem_off_and_auto_off_at_larger_size():
    plain, _ = build_backbone("resnet18", 32, small_stem=False)
    assert plain.conv1.kernel_size == (7, 7)
    with torch.no_grad():
        assert plain.eval().forward_features(_images(1, 32)).shape[-2:] == (1, 1)
    large, _ = build_backbone("resnet18", 96)
    assert large.conv1.kernel_size == (7, 7)
    assert not isinstance(large.maxpool, nn.Identity)


def test_small_stem_on_deep_stem_and_strided_stem_families():
    resnet_d, _ = build_backbone("resnet18d", 32, small_stem=True)
    assert resnet_d.conv1[0].stride == (1, 1) and resnet_d.conv1[0].kernel_size == (3, 3)
    assert isinstance(resnet_d.maxpool, nn.Identity)
    mobile, dim = build_backbone("mobilenetv3_small_050", 32)
    assert mobile.conv_stem.stride == (1, 1)
    assert dim == 1024  # the 1x1 conv head's width (head_hidden_size), not num_features
    with torch.no_grad():
        assert mobile.eval()(_images(2, 32)).shape == (2, dim)


def test_small_stem_unknown_cnn_stem(caplog):
    with pytest.raises(ValueError, match="don't know the stem"):
        build_backbone("convnext_atto", 32, small_stem=True)
    with caplog.at_level(logging.WARNING, logger="groco.training.models"):
        model, _ = build_backbone("convnext_atto", 32)  # auto: left as it is, with a warning
    assert model.stem[0].stride == (4, 4)
    assert "stem not recognised" in caplog.text


def test_vit_builds_at_requested_size():
    for size in (32, 48):
        model, dim = build_backbone("vit_tiny_patch16_224", size)
        assert is_vit(model) and dim == 192
        assert tuple(model.patch_embed.img_size) == (size, size)
        tokens = (size // 16) ** 2 + model.num_prefix_tokens
        assert model.pos_embed.shape == (1, tokens, 192)
        with torch.no_grad():
            assert model.eval()(_images(2, size)).shape == (2, 192)
    with pytest.raises(ValueError, match="small_stem applies to CNNs"):
        build_backbone("vit_tiny_patch16_224", 32, small_stem=True)
    assert not is_vit(build_backbone("resnet18", 32)[0])


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_nope'.*timm\.list_models"):
        build_backbone("resnet_nope", 32)


def test_local_weights_round_trip(tmp_path):
    source, _ = build_backbone("resnet18", 32)
    with torch.no_grad():  # non-default BN statistics, so the buffers are checked too
        source.train()(_images(4, 32, seed=1))
    source.eval()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded, _ = build_backbone("resnet18", 32, weights=path)
    x = _images(2, 32, seed=2)
    with torch.no_grad():
        assert torch.equal(source(x), loaded.eval()(x))
        assert not torch.equal(source(x), build_backbone("resnet18", 32)[0].eval()(x))


def test_weights_from_nested_sslmodel_checkpoint_with_classifier(tmp_path):
    model = build_model(
        {"backbone": "resnet18", "image_size": 32, "projector_hidden": 32, "projector_dim": 16}
    )
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.backbone.fc.weight"] = torch.zeros(10, 512)  # a classifier head: ignored
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    loaded, _ = build_backbone("resnet18", 32, weights=path)
    x = _images(2, 32, seed=3)
    with torch.no_grad():
        assert torch.equal(model.backbone.eval()(x), loaded.eval()(x))


def test_mismatched_weights_are_a_clear_error(tmp_path):
    small, _ = build_backbone("resnet18", 32)
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit.*conv1\.weight.*same image_size"):
        build_backbone("resnet18", 32, small_stem=False, weights=path)
    vit, _ = build_backbone("vit_tiny_patch16_224", 32)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        build_backbone("resnet18", 32, weights=tmp_path / "vit.pth")
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", 32, weights=tmp_path / "absent.pth")


def test_projector_layout_and_output():
    proj = Projector(512, hidden_dim=64, out_dim=32, num_layers=3)
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    norms = [m for m in proj if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 64), (64, 64), (64, 32)]
    assert all(m.bias is None for m in linears)
    assert [m.affine for m in norms] == [True, True, False]
    assert isinstance(proj[-1], nn.BatchNorm1d) and not proj[-1].affine
    out = proj(torch.randn(16, 512))
    assert out.shape == (16, 32)
    torch.testing.assert_close(out.mean(0), torch.zeros(32), atol=1e-5, rtol=0)
    assert len(Projector(8, num_layers=1, out_dim=4)) == 2
    with pytest.raises(ValueError):
        Projector(8, num_layers=0)


def test_build_model_and_exporter_contract():
    cfg = {
        "backbone": "resnet18",
        "image_size": 32,
        "small_stem": None,
        "projector_hidden": 64,
        "projector_dim": 32,
        "projector_layers": 2,
        "weights": None,
    }
    model = build_model(cfg)
    assert isinstance(model, SSLModel) and model.feature_dim == 512
    features, projection = model(_images(4, 32))
    assert features.shape == (4, 512) and projection.shape == (4, 32)
    state = model.state_dict()
    assert all(k.startswith(("backbone.", "projector.")) for k in state)
    # what the exporter does: rebuild from config.yaml values and load the backbone.* keys
    backbone, _ = build_backbone(cfg["backbone"], cfg["image_size"], cfg["small_stem"])
    backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    )


def test_channels_last_gives_the_same_output():
    model = build_model(
        {"backbone": "resnet18", "image_size": 32, "projector_hidden": 32, "projector_dim": 16}
    ).eval()
    x = _images(2, 32, seed=4)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
