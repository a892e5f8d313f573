"""Watches Tinker training runs and restores corrupted ones from a checkpoint."""

__version__ = "0.1.0"
