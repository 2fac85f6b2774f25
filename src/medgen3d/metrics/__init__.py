"""Quality measures of synthetic data against real data."""
