"""`optimum_multipruner.benchmark` refuses bad settings and folders without an IR before it starts any worker, both
through `benchmark` (pruned vs dense) and `measure_interleaved` (any number of IRs, used by the frontier and the main
job)."""

import pytest

from optimum_multipruner.benchmark import benchmark, measure_interleaved


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(engine="onnx"), ValueError, "`engine` must be one of"),
    (dict(repetitions=0), ValueError, "`repetitions` must be at least 1"),
    (dict(new_tokens=0), ValueError, "`new_tokens` must be at least 1"),
    (dict(warmup=-1), ValueError, "`warmup` must not be negative"),
    ({}, FileNotFoundError, "has no openvino_model.xml"),
])
def test_bad_settings_and_missing_irs_are_refused_before_any_run(tmp_path, kwargs, error, message):
    folders = {"a": tmp_path / "a", "b": tmp_path / "b"}
    with pytest.raises(error, match=message):
        measure_interleaved(folders, **kwargs)
    with pytest.raises(error, match=message):
        benchmark(folders["a"], folders["b"], **kwargs)
