"""Convolutional autoencoder detector: anomalies are what the network cannot reconstruct.

The network follows the autoencoder of Bergmann et al., "Improving Unsupervised Defect
Segmentation by Applying Structural Similarity to Autoencoders" (VISAPP 2019), which is the
AE baseline of the MVTec AD paper (Bergmann et al., CVPR 2019): strided 4x4 convolutions with
BatchNorm + LeakyReLU(0.2) down to a dense latent vector (100 dims), mirrored by transposed
convolutions. It is trained with an MSE reconstruction loss on good images only.

Anomaly map, ``map="l1"``: per-pixel ``|x - x_hat|`` averaged over the 3 channels, computed in
[0, 1] image space (the reconstruction is de-normalised and clamped first), so map values do
not depend on the training set's statistics. ``map="ssim"`` (AE-SSIM of the MVTec AD paper):
``1 - SSIM`` with an 11x11 Gaussian window (sigma 1.5) between the grayscale input and the
grayscale reconstruction; values lie in [0, 2]. Either map is optionally Gaussian-smoothed at
``image_size`` resolution, the image score is its max (or the mean of its top-k fraction) at
``image_size``, and the map is bilinearly resized to the input's resolution.

Input normalisation (per-channel mean/std) is computed from the training images in ``fit``
and stored in the state dict, never from test images.

The inference is one module, :class:`AutoencoderModel` (network + normalisation buffers): its
``forward`` is what ``ConvAutoencoder.predict`` runs.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly.models.base import Detector, check_image_size, model_buffer
from anomaly.models.notes import autoencoder_notes
from anomaly.models.params import Fraction, Positive, PositiveFloat, Sigma, detector_config
from anomaly.models.postprocess import gaussian_blur, resize_images, ssim_map, to_grayscale, topk_mean
from anomaly.models.registry import MethodSpec, register

logger = logging.getLogger(__name__)


@detector_config
class AutoencoderConfig:
    """Parameters of :class:`ConvAutoencoder` (the keys of ``--set``/``params``)."""

    image_size: int = 128  # network input side; a multiple of 16, >= 32
    base_channels: Positive = 32  # channels of the first conv layers (2x and 4x deeper)
    latent_dim: Positive = 100  # size of the dense bottleneck vector
    epochs: Positive = 100
    lr: PositiveFloat = 1e-3  # Adam learning rate
    batch_size: Positive = 16
    seed: int = 0  # seeds weight init and the batch order
    loss: Literal["mse", "ssim"] = "mse"  # "mse" | "ssim" (mean 1 - SSIM per channel, the AE-SSIM training loss)
    map: Literal["l1", "ssim"] = "l1"  # "l1" | "ssim"
    smooth_sigma: Sigma = 4.0  # Gaussian sigma in px at image_size; 0 disables
    score: Literal["max", "topk_mean"] = "max"  # "max" | "topk_mean"
    topk: Fraction = 0.01  # fraction of map pixels averaged when score == "topk_mean"
    normalise: bool = True  # per-channel mean/std from the training images

    def __post_init__(self) -> None:
        check_image_size(self.image_size, 32, multiple=16)


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2))


class AutoencoderNet(nn.Module):
    """Encoder (S -> S/16 -> dense latent) and mirrored decoder, Bergmann et al. 2019 layout."""

    def __init__(self, image_size: int = 128, base_channels: int = 32, latent_dim: int = 100) -> None:
        super().__init__()
        c, k = base_channels, image_size // 16  # k: spatial side at the bottleneck (8 at 128)
        self.encoder = nn.Sequential(
            _block(nn.Conv2d(3, c, 4, 2, 1), c),  # (B, c, S/2, S/2)
            _block(nn.Conv2d(c, c, 4, 2, 1), c),  # (B, c, S/4, S/4)
            _block(nn.Conv2d(c, c, 3, 1, 1), c),
            _block(nn.Conv2d(c, 2 * c, 4, 2, 1), 2 * c),  # (B, 2c, S/8, S/8)
            _block(nn.Conv2d(2 * c, 2 * c, 3, 1, 1), 2 * c),
            _block(nn.Conv2d(2 * c, 4 * c, 4, 2, 1), 4 * c),  # (B, 4c, S/16, S/16)
            _block(nn.Conv2d(4 * c, 2 * c, 3, 1, 1), 2 * c),
            _block(nn.Conv2d(2 * c, c, 3, 1, 1), c),
            nn.Conv2d(c, latent_dim, k),  # (B, latent, 1, 1)
        )
        self.decoder = nn.Sequential(
            _block(nn.ConvTranspose2d(latent_dim, c, k), c),  # (B, c, S/16, S/16)
            _block(nn.Conv2d(c, 2 * c, 3, 1, 1), 2 * c),
            _block(nn.Conv2d(2 * c, 4 * c, 3, 1, 1), 4 * c),
            _block(nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), 2 * c),  # (B, 2c, S/8, S/8)
            _block(nn.Conv2d(2 * c, 2 * c, 3, 1, 1), 2 * c),
            _block(nn.ConvTranspose2d(2 * c, c, 4, 2, 1), c),  # (B, c, S/4, S/4)
            _block(nn.Conv2d(c, c, 3, 1, 1), c),
            _block(nn.ConvTranspose2d(c, c, 4, 2, 1), c),  # (B, c, S/2, S/2)
            nn.ConvTranspose2d(c, 3, 4, 2, 1),  # (B, 3, S, S), linear output (normalised space)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 3, S, S) reconstructions in the same space."""
        return self.decoder(self.encoder(x))


class AutoencoderModel(nn.Module):
    """The autoencoder's inference as one module: reconstruction -> residual map -> (scores, maps).

    Holds the network and the training images' per-channel ``mean``/``std`` (buffers); ``fitted``
    is set by fit or load. :meth:`forward` is what :meth:`ConvAutoencoder.predict` runs.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.network = AutoencoderNet(config.image_size, config.base_channels, config.latent_dim)
        self.register_buffer("mean", torch.zeros(3))  # (3,) normalisation stats, set by fit
        self.register_buffer("std", torch.ones(3))
        self.map, self.score = config.map, config.score
        self.smooth_sigma, self.topk = float(config.smooth_sigma), float(config.topk)
        self.fitted = False

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.view(1, 3, 1, 1) + self.mean.view(1, 3, 1, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, 3, S, S) reconstruction in [0, 1]."""
        return self.denormalise(self.network(self.normalise(x))).clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> image scores (B,) and maps (B, S, S), smoothed."""
        x_hat = self.reconstruct(images)
        if self.map == "l1":
            maps = (images - x_hat).abs().mean(dim=1)  # (B, S, S)
        else:
            maps = 1.0 - ssim_map(to_grayscale(x_hat), to_grayscale(images)).squeeze(1)  # (B, S, S)
        maps = gaussian_blur(maps, self.smooth_sigma)
        scores = maps.flatten(1).amax(dim=1) if self.score == "max" else topk_mean(maps, self.topk)  # (B,)
        return scores, maps


class ConvAutoencoder(Detector):
    """Reconstruction-based detector; see the module docstring for map and score definitions.

    Attributes:
        history: mean training loss per epoch, filled by ``fit``.
    """

    name = "autoencoder"
    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig | dict | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self.model = AutoencoderModel(self.config).to(self.device).eval()
        self.history: list[float] = []

    @property
    def network(self) -> AutoencoderNet:
        return self.model.network

    @network.setter
    def network(self, network: AutoencoderNet) -> None:
        self.model.network = network.to(self.device)

    mean = model_buffer("mean", "(3,) per-channel mean of the training images (a buffer of :attr:`model`).")

    std = model_buffer("std", "(3,) per-channel standard deviation of the training images.")

    @property
    def fitted(self) -> bool:
        return self.model.fitted

    @fitted.setter
    def fitted(self, value: bool) -> None:
        self.model.fitted = bool(value)

    def _build_network(self) -> AutoencoderNet:
        cfg = self.config
        return AutoencoderNet(cfg.image_size, cfg.base_channels, cfg.latent_dim).to(self.device)

    # -- training ----------------------------------------------------------------------------------
    def _fit(self, train_loader: DataLoader) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        images = self._collect(train_loader)  # (N, 3, S, S) on CPU, cached: decode/resize once
        if cfg.normalise:
            self.mean = images.mean(dim=(0, 2, 3)).to(self.device)
            self.std = images.std(dim=(0, 2, 3)).clamp_min(1e-6).to(self.device)
        self.network = self._build_network()  # fresh, seeded weights
        optimiser = torch.optim.Adam(self.network.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.history = []
        self.network.train()
        progress = tqdm(range(cfg.epochs), desc="autoencoder", unit="epoch", leave=False)
        for _ in progress:
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(images), cfg.batch_size):
                batch = images[order[start : start + cfg.batch_size]].to(self.device)  # (b, 3, S, S)
                loss = self._loss(batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            self.history.append(total / len(images))
            progress.set_postfix(loss=f"{self.history[-1]:.5f}")
        self.model.eval()
        self.fitted = True
        logger.info("autoencoder: %d epochs on %d images, final loss %.5f", cfg.epochs, len(images), self.history[-1])

    def _collect(self, train_loader: DataLoader) -> torch.Tensor:
        """Read every training batch once, resized to ``image_size``: (N, 3, S, S) float32 on CPU."""
        chunks = []
        for batch in train_loader:
            if not isinstance(batch, dict) or "image" not in batch:
                raise ValueError("train_loader must yield dicts with an 'image' tensor of shape (B, 3, H, W)")
            chunks.append(self._resize(batch["image"].float()).cpu())
        if not chunks:
            raise ValueError("train_loader yielded no images: the autoencoder needs good training images")
        return torch.cat(chunks)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss of a (b, 3, S, S) batch in [0, 1]."""
        x = self.model.normalise(batch)
        x_hat = self.network(x)
        if self.config.loss == "mse":
            return F.mse_loss(x_hat, x)
        return (1.0 - ssim_map(self.model.denormalise(x_hat), batch)).mean()

    # -- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions for figures.

        Args:
            images: (B, 3, H, W) float in [0, 1].

        Returns:
            (B, 3, H, W) reconstructions in [0, 1] on the CPU, resized back to the input's H, W.
        """
        images = images.to(self.device, torch.float32)
        x_hat = self._reconstruct(self._resize(images))  # (B, 3, S, S)
        if x_hat.shape[-2:] != images.shape[-2:]:
            x_hat = F.interpolate(x_hat, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return x_hat.clamp(0.0, 1.0).cpu()

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, 3, S, S) reconstruction in [0, 1]."""
        if not self.fitted:
            raise RuntimeError("the autoencoder is not fitted: call fit() or load a saved model first")
        return self.model.eval().reconstruct(x)

    # -- helpers -----------------------------------------------------------------------------------
    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        return resize_images(images, self.config.image_size)

    # -- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Network weights (``network.*``), normalisation stats and the loss history."""
        state = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        state["mean"], state["std"] = self.mean, self.std
        state["history"] = torch.tensor(self.history, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned; the detector is then ready to predict."""
        self._check_state(state, {"mean": (3,), "std": (3,)})
        prefix = "network."
        self.network.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        self.network.eval()
        self.mean, self.std = state["mean"], state["std"]
        self.history = [float(v) for v in state.get("history", torch.empty(0)).tolist()]
        self.fitted = True


register(MethodSpec(
    "autoencoder", ConvAutoencoder, "a convolutional autoencoder trained on good images; reconstruction error",
    trained=True, report={"synthetic": {"image_size": 128, "epochs": 30}, "real": {"image_size": None, "epochs": 50}},
    notes=autoencoder_notes))
