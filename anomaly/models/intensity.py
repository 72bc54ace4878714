"""A no-learning baseline: how far each pixel's grey level lies from the image's own median grey.

``IntensityBaseline`` (method ``intensity``) is the floor every learned detector must clear. The
anomaly map of an image is ``|g(x) - median(g)|`` where ``g`` is the image's grey level (mean of
the three channels) and the median is taken over that same image, Gaussian-smoothed (sigma 4 px,
the value PaDiM and PatchCore use) and resized to the input; the image score is the map's maximum.

Why this statistic: on an inspection image the background dominates, so the median grey is the
background's; the map then lights up "anything that is not background", i.e. the part itself and
whatever sits on it. A detector whose pixel AUROC is not clearly above this map is mostly saying
"the defect lies on the part", and one whose image AUROC is not above it is mostly measuring
contrast. Using the image's own median (rather than the good training images' per-pixel mean/std)
needs no fit at all and does not depend on the part's pose, so it is a fair floor on data where the
part moves (the synthetic screw) as well as where it does not. ``fit`` only checks the loader.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from torch import nn

from anomaly.models.base import Detector, check_image_size
from anomaly.models.notes import intensity_notes
from anomaly.models.params import Sigma, detector_config
from anomaly.models.postprocess import gaussian_blur
from anomaly.models.registry import MethodSpec, register

logger = logging.getLogger(__name__)


@detector_config
class IntensityConfig:
    """Parameters of :class:`IntensityBaseline` (the keys of ``--set``/``params``)."""

    image_size: int = 256  # maps are computed at this side, then resized to the input
    smooth_sigma: Sigma = 4.0  # Gaussian sigma in px at image_size; 0 disables

    def __post_init__(self) -> None:
        check_image_size(self.image_size, 8)


class IntensityModel(nn.Module):
    """The baseline's inference as one module (nothing fitted, so always ``fitted``)."""

    fitted = True

    def __init__(self, config: IntensityConfig) -> None:
        super().__init__()
        self.smooth_sigma = float(config.smooth_sigma)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> scores (B,) and maps (B, S, S)."""
        grey = images.mean(1)  # (B, S, S)
        median = grey.flatten(1).median(1).values  # (B,) each image's own median grey
        maps = gaussian_blur((grey - median[:, None, None]).abs(), self.smooth_sigma)  # (B, S, S)
        return maps.flatten(1).amax(1), maps


class IntensityBaseline(Detector):
    """No-learning baseline: smoothed |grey - the image's median grey|; score = the map's maximum."""

    name = "intensity"
    config_class = IntensityConfig

    def __init__(self, config: IntensityConfig | dict | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self.model = IntensityModel(self.config).to(self.device).eval()

    def _fit(self, train_loader: DataLoader) -> None:
        n = sum(len(batch["image"]) for batch in train_loader)
        if n < 1:
            raise ValueError("the intensity baseline needs at least 1 training image (it learns nothing from it)")
        logger.info("intensity baseline: nothing to learn (%d good images seen)", n)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"image_size": torch.tensor([self.config.image_size])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._check_state(state, {"image_size": (1,)})


register(MethodSpec(
    "intensity", IntensityBaseline, "no learning: each pixel's grey-level distance from the image's median grey",
    baseline=True,
    report={"synthetic": {"image_size": 256, "epochs": None}, "real": {"image_size": None, "epochs": None}},
    notes=intensity_notes))
