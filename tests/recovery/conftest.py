"""The teacher of the recovery tests: a briefly trained tiny Llama (shared per session by `trained_model`)."""

import pytest


@pytest.fixture
def teacher(trained_model):
    return trained_model("llama")
