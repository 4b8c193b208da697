"""Errors raised when a dataset is absent or fails its checksum."""

from __future__ import annotations


class DataNotFoundError(FileNotFoundError):
    """No copy of a required dataset file exists in any searched directory."""


class DataCorruptError(ValueError):
    """A dataset file exists but its content is not the published one (checksum, format or values)."""
