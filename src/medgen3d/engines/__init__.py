"""Trainers and handlers (MONAI/ignite engines whose ``_iteration`` stays short)."""
