"""What makes the bundles model-zoo bundles: the record of the data a stage was trained on, sizes taken from the
data, the noise schedule a diffusion bundle samples with, one-line errors from ``python -m monai.bundle run``, and
exported, self-contained bundle packages."""
