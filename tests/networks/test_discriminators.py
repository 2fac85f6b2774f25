from __future__ import annotations

import torch

from medgen3d.networks import ImageDiscriminator, TemporalDiscriminator


def test_image_discriminator_sees_mask_and_image_at_each_scale():
    d = ImageDiscriminator(num_classes=4, num_scales=2, channels=8, num_layers=2)
    outputs = d(torch.randn(2, 4, 32, 32), torch.randn(2, 1, 32, 32))
    assert len(outputs) == 2
    full, half = outputs
    assert full[-1].shape[1] == 1 and half[-1].shape[1] == 1  # logits last
    assert full[-1].shape[-1] > half[-1].shape[-1]  # the second scale sees a half-size input
    assert len(full) > 1  # intermediate features for feature matching


def test_temporal_discriminator_takes_frames_and_flows():
    d = TemporalDiscriminator(num_frames=3, num_scales=1, channels=8, num_layers=2)
    outputs = d(torch.randn(2, 3, 32, 32), torch.randn(2, 4, 32, 32))
    assert len(outputs) == 1 and outputs[0][-1].shape[:2] == (2, 1)
