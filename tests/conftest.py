import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from testing_utils import make_text, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory):
    """A local .txt calibration file: one pseudo-sentence per line."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n".join(make_text(2000, seed=1)), encoding="utf-8")
    return str(path)
