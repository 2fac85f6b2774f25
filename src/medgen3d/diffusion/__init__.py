"""Diffusion processes of MedGen3D: slice conditions, sampling, autoregressive volume generation.

Noise schedules come from ``monai.networks.schedulers``; networks are passed in, never owned.
"""
