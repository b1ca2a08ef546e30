"""Latency, throughput, memory and size of a pruned OpenVINO model against its dense baseline.

Design:

* **Two engines, never `OVModelForCausalLM`.** `engine="openvino"` (default) times the model's own prefill and
  per-token decode with the raw stateful infer request (`reset_state`, one `infer` per step), without `generate()`'s
  logits processors and torch/numpy conversions. `engine="genai"` runs `openvino_genai.LLMPipeline`, the path most
  deployments take (OpenVINO Model Server included), and reports its own perf metrics: time to first token, time per
  output token and throughput. Either way each measuring process holds only OpenVINO (and numpy), so its peak memory
  is the model's and not torch's.
* **One worker process per model, measured interleaved.** Shared VMs drift by up to 2x within minutes, so both models
  are compiled once, each in its own worker, and the parent alternates the runs round by round, reversing the order
  every round (A B, B A, A B, ...) so that a steady drift affects both alike. Ratios are reported as ratio of medians
  and as the median of the per-round (paired) ratios. The separate processes also give each model its own peak RSS.
* Prefill feeds `prompt_length` random tokens after `reset_state()`; decode then runs `new_tokens` greedy steps, each
  timed. Warm-up rounds are run the same way and discarded. Times are wall-clock seconds (`time.perf_counter`).
  The genai engine gets the same random prompt as tokens (no tokenizer involved) and generates exactly `new_tokens`
  greedy tokens (EOS ignored, no chat template).

This file also runs as the worker script (`python benchmark.py --worker`): module-level imports are the standard
library and the import-free `optimum_multipruner_constants`, so a worker never imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

from optimum_multipruner_constants import BENCHMARK_ENGINES, OPENVINO_MODEL_FILES

DEFAULT_OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}
_MEMORY_AND_SIZE = {
    "peak_rss_bytes": ("peak resident memory", "bytes"),
    "model_memory_bytes": ("peak memory above runtime", "bytes"),
    "size_bytes": ("IR size on disk", "bytes"),
}
# Figures compared between the models, per engine: key -> (label, unit); lower is better except for tokens/s.
FIGURES = {
    "openvino": {
        "prefill_s": ("prefill latency", "s"),
        "decode_s_per_token": ("decode latency per token", "s"),
        "prefill_tokens_per_s": ("prefill throughput", "tokens/s"),
        "decode_tokens_per_s": ("decode throughput", "tokens/s"),
        **_MEMORY_AND_SIZE,
    },
    "genai": {
        "ttft_s": ("time to first token", "s"),
        "tpot_s": ("time per output token", "s"),
        "throughput_tokens_per_s": ("throughput", "tokens/s"),
        **_MEMORY_AND_SIZE,
    },
}


# --------------------------------------------------------------------------- worker (runs in a child process)
class _Runner:
    """One compiled stateful IR and its infer request."""

    def __init__(self, model_dir: str, device: str, ov_config: dict[str, str]) -> None:
        import numpy as np
        import openvino as ov

        self.np = np
        core = ov.Core()
        model = core.read_model(os.path.join(model_dir, OPENVINO_MODEL_FILES[0]))
        self.input_names = {port.get_any_name() for port in model.inputs}
        self.vocab_size = model.output(0).get_partial_shape()[-1].get_length()
        self.request = core.compile_model(model, device, ov_config).create_infer_request()

    def _inputs(self, tokens, past_length: int) -> dict[str, Any]:
        np = self.np
        length = tokens.shape[1]
        inputs = {
            "input_ids": tokens,
            "attention_mask": np.ones((1, past_length + length), dtype=np.int64),
            "position_ids": np.arange(past_length, past_length + length, dtype=np.int64)[None, :],
            "beam_idx": np.zeros((1,), dtype=np.int32),
        }
        return {name: value for name, value in inputs.items() if name in self.input_names}

    def run(self, prompt_length: int, new_tokens: int, seed: int) -> dict[str, float]:
        """Prefill time, median per-token decode time, and the throughputs they imply."""
        np = self.np
        prompt = _random_prompt(np, self.vocab_size, prompt_length, seed)
        self.request.reset_state()
        start = time.perf_counter()
        self.request.infer(self._inputs(prompt, 0))
        prefill = time.perf_counter() - start
        decode = []
        for step in range(new_tokens):
            token = self.request.get_output_tensor(0).data[:, -1, :].argmax(axis=-1).reshape(1, 1).astype(np.int64)
            start = time.perf_counter()
            self.request.infer(self._inputs(token, prompt_length + step))
            decode.append(time.perf_counter() - start)
        per_token = statistics.median(decode)
        return {
            "prefill_s": prefill,
            "decode_s_per_token": per_token,
            "prefill_tokens_per_s": prompt_length / prefill,
            "decode_tokens_per_s": 1 / per_token,
        }


class _GenAIRunner:
    """One `openvino_genai.LLMPipeline` (stateful) of an IR folder."""

    def __init__(self, model_dir: str, device: str, ov_config: dict[str, str]) -> None:
        import numpy as np
        import openvino as ov
        import openvino_genai

        self.np, self.ov, self.genai = np, ov, openvino_genai
        self.vocab_size = (
            ov.Core().read_model(os.path.join(model_dir, OPENVINO_MODEL_FILES[0])).output(0).get_partial_shape()[-1]
            .get_length()
        )
        self.pipeline = openvino_genai.LLMPipeline(model_dir, device, **ov_config)

    def run(self, prompt_length: int, new_tokens: int, seed: int) -> dict[str, float]:
        """genai's own figures of one greedy generation of exactly `new_tokens` tokens (milliseconds -> seconds)."""
        np, ov = self.np, self.ov
        prompt = _random_prompt(np, self.vocab_size, prompt_length, seed)
        config = self.genai.GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True, do_sample=False,
            apply_chat_template=False,
        )
        inputs = self.genai.TokenizedInputs(ov.Tensor(prompt), ov.Tensor(np.ones_like(prompt)))
        metrics = self.pipeline.generate(inputs, config).perf_metrics
        return {
            "ttft_s": metrics.get_ttft().mean / 1000,
            "tpot_s": metrics.get_tpot().mean / 1000,
            "throughput_tokens_per_s": metrics.get_throughput().mean,
        }


RUNNERS = {"openvino": _Runner, "genai": _GenAIRunner}


def _random_prompt(np, vocab_size: int, length: int, seed: int):
    """`[1, length]` int64 token ids, the same for both models of a round (ids 0-3 are often special tokens)."""
    return np.random.default_rng(seed).integers(4, vocab_size, size=(1, length), dtype=np.int64)


def _memory_bytes(field: str) -> int:
    """`VmRSS` (current) or `VmHWM` (peak) resident memory of this process.

    Read from `/proc/self/status` on Linux: unlike `getrusage`'s `ru_maxrss`, it is not inherited across `exec` from
    the (torch-sized) parent. Elsewhere `ru_maxrss` (peak) is the fallback.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _serve() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    runner = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["command"] == "load":
                import openvino  # noqa: F401  (the runtime's own memory belongs to the baseline)

                baseline = _memory_bytes("VmRSS")
                start = time.perf_counter()
                runner = RUNNERS[request["engine"]](request["model"], request["device"], request["ov_config"])
                reply = {"compile_s": time.perf_counter() - start, "baseline_rss_bytes": baseline}
            elif request["command"] == "run":
                reply = runner.run(request["prompt_length"], request["new_tokens"], request["seed"])
            else:
                reply = {"peak_rss_bytes": _memory_bytes("VmHWM")}
        except Exception as error:  # reported to the parent, which raises
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


# --------------------------------------------------------------------------- parent side
class _Worker:
    """A child process measuring one model."""

    def __init__(self, name: str, model_dir: str, device: str, ov_config: dict[str, str], engine: str) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty worker never blocks on it
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        self.loaded = self.ask(command="load", model=os.path.abspath(model_dir), device=device, ov_config=ov_config,
                               engine=engine)

    def ask(self, **request: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise RuntimeError(f"The {self.name} benchmark worker died: {self.stderr.read()[-2000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"The {self.name} benchmark worker failed: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        self.stderr.close()


def ir_size_bytes(model_dir: Union[str, os.PathLike]) -> int:
    """Bytes of the IR files (`openvino_model.xml` + `.bin`)."""
    return sum(os.path.getsize(os.path.join(model_dir, name)) for name in OPENVINO_MODEL_FILES)


@dataclass(frozen=True)
class BenchmarkSettings:
    """How `benchmark` and `measure_interleaved` measure, checked on construction.

    `device` is any OpenVINO device name ("CPU", "GPU", "NPU", "AUTO", ...); `ov_config` holds compile properties
    (default `PERFORMANCE_HINT=LATENCY`). `engine` is `"openvino"` (raw runtime: prefill and decode latency) or
    `"genai"` (`openvino_genai.LLMPipeline`: TTFT, TPOT, throughput; needs `pip install openvino-genai`). Every figure
    is the median over `repetitions` measured runs, after `warmup` discarded rounds; round `i` prompts with random
    tokens of seed `seed + i`.
    """

    device: str = "CPU"
    prompt_length: int = 128
    new_tokens: int = 32
    repetitions: int = 5
    warmup: int = 1
    ov_config: Optional[dict[str, str]] = None
    seed: int = 0
    engine: str = "openvino"

    def __post_init__(self) -> None:
        if self.engine not in BENCHMARK_ENGINES:
            raise ValueError(f"`engine` must be one of {BENCHMARK_ENGINES}, got {self.engine!r}.")
        for name in ("prompt_length", "new_tokens", "repetitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise ValueError(f"`warmup` must not be negative, got {self.warmup}.")
        object.__setattr__(self, "ov_config", dict(self.ov_config or DEFAULT_OV_CONFIG))


def benchmark(model_dir: Union[str, os.PathLike], baseline_dir: Union[str, os.PathLike],
              **settings: Any) -> dict[str, Any]:
    """Measure the pruned IR `model_dir` against the dense IR `baseline_dir`, interleaved; return the results dict.
    `settings` are [`BenchmarkSettings`]' fields."""
    measured = BenchmarkSettings(**settings)
    models, runs = measure_interleaved({"pruned": model_dir, "dense": baseline_dir}, **dataclasses.asdict(measured))
    ratios = {key: models["pruned"][key] / models["dense"][key] for key in FIGURES[measured.engine]}
    paired = {
        key: statistics.median(p[key] / d[key] for p, d in zip(runs["pruned"], runs["dense"]))
        for key in runs["pruned"][0]
    }
    return {
        "engine": measured.engine,
        "device": measured.device,
        "settings": {"prompt_length": measured.prompt_length, "new_tokens": measured.new_tokens,
                     "repetitions": measured.repetitions, "warmup": measured.warmup,
                     "ov_config": dict(measured.ov_config), "order": "alternating per round (A B, B A, ...)"},
        "models": models,
        "ratios": ratios,
        "paired_ratios": paired,
        "runs": runs,
    }


def measure_interleaved(
    model_dirs: dict[str, Union[str, os.PathLike]], **settings: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, float]]]]:
    """Compile every IR of `model_dirs` (name -> folder) in its own worker and run them round by round, the order
    reversed every round (A B C, C B A, ...); return per model its medians, peak memory and IR size, and the runs.
    `settings` are [`BenchmarkSettings`]' fields."""
    measured = BenchmarkSettings(**settings)
    for directory in model_dirs.values():
        if not os.path.isfile(os.path.join(directory, OPENVINO_MODEL_FILES[0])):
            raise FileNotFoundError(
                f"{directory} has no {OPENVINO_MODEL_FILES[0]}; export it with `optimum-cli export openvino`."
            )
    if measured.engine == "genai":
        import importlib.util

        if importlib.util.find_spec("openvino_genai") is None:
            raise ImportError("The genai engine needs openvino-genai: `pip install optimum-multipruner[genai]`.")
    names = list(model_dirs)
    workers = {}
    try:
        for name in names:
            workers[name] = _Worker(name, str(model_dirs[name]), measured.device, measured.ov_config, measured.engine)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_index in range(measured.warmup + measured.repetitions):
            for name in names if round_index % 2 == 0 else names[::-1]:
                run = workers[name].ask(command="run", prompt_length=measured.prompt_length,
                                        new_tokens=measured.new_tokens, seed=measured.seed + round_index)
                if round_index >= measured.warmup:
                    runs[name].append(run)
        models = {}
        for name in names:
            medians = {key: statistics.median(run[key] for run in runs[name]) for key in runs[name][0]}
            medians["peak_rss_bytes"] = workers[name].ask(command="stats")["peak_rss_bytes"]
            medians["model_memory_bytes"] = medians["peak_rss_bytes"] - workers[name].loaded["baseline_rss_bytes"]
            medians["size_bytes"] = ir_size_bytes(model_dirs[name])
            models[name] = {"path": str(model_dirs[name]), **workers[name].loaded, **medians}
    finally:
        for worker in workers.values():
            worker.close()
    return models, runs


def _format_value(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "s":
        return f"{value * 1000:,.2f} ms"
    return f"{value:,.1f} {unit}"


def format_table(results: dict[str, Any]) -> str:
    """A text table: figure, pruned, dense, pruned/dense ratio (and the paired ratio where there is one)."""
    settings = results["settings"]
    lines = [
        f"{results['engine']} engine, device {results['device']}, prompt {settings['prompt_length']} tokens, "
        f"{settings['new_tokens']} new tokens, "
        f"{settings['repetitions']} runs (+{settings['warmup']} warm-up), medians",
        f"{'figure':<26} {'pruned':>16} {'dense':>16} {'ratio':>7} {'paired':>7}",
    ]
    for key, (label, unit) in FIGURES[results["engine"]].items():
        paired = results["paired_ratios"].get(key)
        lines.append(
            f"{label:<26} {_format_value(results['models']['pruned'][key], unit):>16} "
            f"{_format_value(results['models']['dense'][key], unit):>16} {results['ratios'][key]:>7.3f} "
            f"{'' if paired is None else f'{paired:.3f}':>7}"
        )
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """Write the results as JSON, atomically."""
    from optimum_multipruner.utils import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def plot_ratios(results: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """A PNG bar chart of the pruned/dense ratios (1.0 = same as dense), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = FIGURES[results["engine"]]
    labels = [label for label, _ in figures.values()]
    values = [results["ratios"][key] for key in figures]
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.barh(labels, values, color="tab:blue")
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xlim(0, max(values + [1.0]) * 1.15)  # room for the value labels
    axis.set_xlabel("pruned / dense")
    axis.set_title(f"Pruned vs dense on {results['device']} ({results['engine']} engine)")
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:.2f}", va="center")
    figure.tight_layout()
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{name}")
    try:
        figure.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _serve()
