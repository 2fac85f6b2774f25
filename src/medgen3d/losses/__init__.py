"""Losses MONAI lacks: named, weighted terms for the image sequence generator."""
