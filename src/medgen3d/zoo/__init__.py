"""What makes the bundles model-zoo bundles: the record of the data a stage was trained on, sizes taken from the
data, one-line errors from ``python -m monai.bundle run``, and exported, self-contained bundle packages."""
