import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from testing_utils import MISSING_ASSET, make_model, make_text, make_tokenizer, train_briefly  # noqa: E402

# `.ci/run` sets this: a test skipped because a data asset is missing then fails instead.
FAIL_ON_MISSING_ASSETS_ENV = "MULTIPRUNER_FAIL_ON_MISSING_ASSETS"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Run the tiny models on one thread: faster for such small matrices, and a busy machine does not slow them down
    by oversubscribing its cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under `MULTIPRUNER_FAIL_ON_MISSING_ASSETS=1`, a skip for a missing data asset (`testing_utils.require_asset`)
    is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(FAIL_ON_MISSING_ASSETS_ENV) == "1" and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if MISSING_ASSET in reason:
            report.outcome = "failed"
            report.longrepr = f"{reason} ({FAIL_ON_MISSING_ASSETS_ENV}=1: missing assets fail the run)"


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory):
    """A local .txt calibration file: one pseudo-sentence per line."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n".join(make_text(2000, seed=1)), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def trained_model(tokenizer):
    """`trained_model(family)`: a fresh copy of a briefly trained tiny model of `family`, trained once per session."""
    states = {}

    def get(family):
        if family not in states:
            states[family] = train_briefly(make_model(family), tokenizer).state_dict()
        model = make_model(family)
        model.load_state_dict(states[family])
        return model

    return get
