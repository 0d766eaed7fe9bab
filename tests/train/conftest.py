"""Tiny models shared by the training tests (one instance per test module)."""

import pytest

from tests.train.batchfixtures import flash_model, star_model


@pytest.fixture(scope="module")
def star_llama():
    return star_model("llama")


@pytest.fixture(scope="module")
def star_qwen():
    return star_model("qwen2")


@pytest.fixture(scope="module")
def flash():
    return flash_model()
