"""Networks (``nn.Module`` only: no noise schedules, no losses)."""

from medgen3d.networks.mcdpm_unet import MultiConditionDiffusionUNet, PositionEmbedding
from medgen3d.networks.wrappers import FixedConditionWrapper

__all__ = ["FixedConditionWrapper", "MultiConditionDiffusionUNet", "PositionEmbedding"]
