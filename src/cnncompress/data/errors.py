"""Errors raised when a dataset is absent, fails its checksum, or (given by a user) cannot be used."""

from __future__ import annotations


class DataNotFoundError(FileNotFoundError):
    """No copy of a required dataset file exists in any searched directory."""


class DataCorruptError(ValueError):
    """A dataset file exists but its content is not the published one (checksum, format or values)."""


class UserDataError(ValueError):
    """Data a user passed (a Dataset, a DataLoader, batches, or a ``--dataset file.py:build`` factory)
    that no stage can use: items that are not float image tensors, shapes that differ, NaN or inf,
    labels that are missing, not integers or out of range, or too much to hold in memory."""
