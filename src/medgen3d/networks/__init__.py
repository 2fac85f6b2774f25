"""Networks (``nn.Module`` only: no noise schedules, no losses)."""

from medgen3d.networks.mcdpm_unet import MultiConditionDiffusionUNet, PositionEmbedding

__all__ = ["MultiConditionDiffusionUNet", "PositionEmbedding"]
