"""MedGen3D: paired 3D image and multi-label mask synthesis."""
