"""Networks (``nn.Module`` only: no noise schedules, no losses)."""

from medgen3d.networks.discriminators import ImageDiscriminator, MultiScaleDiscriminator, TemporalDiscriminator
from medgen3d.networks.mcdpm_unet import MultiConditionDiffusionUNet, PositionEmbedding
from medgen3d.networks.sequence_generator import GeneratorOutput, SequenceGenerator
from medgen3d.networks.views import ViewDenoisers
from medgen3d.networks.wrappers import FixedConditionWrapper, PackedSegmentationDenoiser, PackedSequenceGenerator

__all__ = [
    "FixedConditionWrapper",
    "GeneratorOutput",
    "ImageDiscriminator",
    "MultiConditionDiffusionUNet",
    "MultiScaleDiscriminator",
    "PackedSegmentationDenoiser",
    "PackedSequenceGenerator",
    "PositionEmbedding",
    "SequenceGenerator",
    "TemporalDiscriminator",
    "ViewDenoisers",
]
