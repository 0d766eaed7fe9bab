"""Fixtures for the evaluation tests; the factories are in evalfixtures.py."""

from pathlib import Path

import pytest
from evalfixtures import make_video


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory) -> Path:
    """An 8-frame, 4-fps, 64x64 video (2 s)."""
    return make_video(tmp_path_factory.mktemp("media") / "tiny.mp4")
