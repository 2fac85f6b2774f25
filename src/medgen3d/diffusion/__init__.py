"""Diffusion processes of MedGen3D: slice conditions, sampling, autoregressive volume generation.

Noise schedules come from ``monai.networks.schedulers`` (rectified flow with an ``x_0``-predicting network in
:mod:`~medgen3d.diffusion.schedulers`); networks are passed in, never owned.
"""
