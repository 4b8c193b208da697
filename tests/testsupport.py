"""Constants the tests share (imported by name; pytest fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from cnncompress.models import ModelSpec

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the repository
SHARED_DATA = SHARED / "data"
SHARED_PRETRAINED = SHARED / "pretrained"
SHARED_PRESENT = SHARED_DATA.is_dir() and SHARED_PRETRAINED.is_dir()
SHARED_REASON = "needs ../shared/data and ../shared/pretrained (only present in CI and dev sessions)"
DIGITS8 = ModelSpec("digits_cnn", {"width": 8})  # the small model the end-to-end tests compress
