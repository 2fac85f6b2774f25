"""Dataset-level generation by the image stages: every case of a mask dataset in, a paired dataset out."""
