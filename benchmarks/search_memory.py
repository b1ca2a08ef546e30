"""Peak memory of a MultiPruner search on the real SmolLM2-135M model, against the size of its weights.

A psutil thread samples the resident set size (RSS), and its anonymous part, while the search runs. The script reports
the peak RSS of the search minus the RSS right after loading the model (with every weight touched, since the
safetensors are mmap-ed), next to the model's weight bytes and the size of the accelerated
scorer's hidden-state cache (layers x sequences x seq_len x hidden x element size), so weight copies can be told
apart from cached activations.

    python benchmarks/search_memory.py --max-steps 1 --distribution 0 1 0 --output results/search_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import DEFAULT_CALIBRATION, load_smollm2  # noqa: E402

from optimum_multipruner import MultiPruner, MultiPrunerConfig  # noqa: E402
from optimum_multipruner.data import build_calibration_sets  # noqa: E402
from optimum_multipruner.resume_state import state_dict_hash  # noqa: E402
from optimum_multipruner.utils import atomic_write_text  # noqa: E402

MIB = 2**20


class PeakRSS:
    """Samples this process's RSS every `interval` seconds in a background thread; `peak` is the largest seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak, self.peak_anonymous = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total, anonymous = rss()
        self.peak, self.peak_anonymous = max(self.peak, total), max(self.peak_anonymous, anonymous)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def rss() -> tuple[int, int]:
    """Resident set size, and its anonymous part (RSS minus file-backed pages such as mmap-ed safetensors)."""
    info = psutil.Process().memory_info()
    return info.rss, info.rss - info.shared


def weight_bytes(model) -> int:
    """Bytes of all parameters and buffers (tied weights once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4, help="Alpaca calibration rows per set")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--target-ratio", type=float, default=0.05)
    parser.add_argument("--distribution", type=float, nargs=3, default=(20.0, 80.0, 0.0),
                        help="block, MLP, attention shares (the default runs a block step, then MLP steps)")
    parser.add_argument("--calibration", default=DEFAULT_CALIBRATION)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    model, tokenizer = load_smollm2()
    config = MultiPrunerConfig(
        target_ratio=args.target_ratio,
        pruning_distribution=tuple(args.distribution),
        mlp_channel_group_size=256,
        max_steps=args.max_steps,
        calibration_dataset=args.calibration,
        num_calibration_samples_block=args.rows,
        num_calibration_samples_width=args.rows,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
    )
    pruner = MultiPruner(model, tokenizer)
    weights = weight_bytes(model)
    vocab_size = model.get_input_embeddings().num_embeddings
    sequences = {name: len(s) for name, s in build_calibration_sets(config, tokenizer, vocab_size).items()}
    element = next(model.parameters()).element_size()
    cache = {
        name: model.config.num_hidden_layers * n * args.sequence_length * model.config.hidden_size * element
        for name, n in sequences.items()
    }
    lazy_load = rss()[0]
    state_dict_hash(model)  # touch every weight: safetensors are mmap-ed, so loading alone leaves most not resident
    after_load, anonymous_after_load = rss()
    with PeakRSS() as sampler:
        pruner.prune(config, progress=False)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; process lifetime, loading included
    extra, extra_anonymous = sampler.peak - after_load, sampler.peak_anonymous - anonymous_after_load
    results = {
        "weight_bytes": weights,
        "rss_after_load_untouched": lazy_load,
        "rss_after_load": after_load,
        "search_peak_rss": sampler.peak,
        "search_extra_rss": extra,
        "search_extra_rss_in_weight_copies": round(extra / weights, 3),
        "search_extra_anonymous_rss": extra_anonymous,
        "search_extra_anonymous_rss_in_weight_copies": round(extra_anonymous / weights, 3),
        "hidden_state_cache_bytes": cache,
        "extra_minus_largest_cache_in_weight_copies": round((extra - max(cache.values())) / weights, 3),
        "process_peak_rss_ru_maxrss": peak_kib * 1024,
        "calibration_sequences": sequences,
        "steps": [[s.stage, s.action, s.layer] for s in pruner.record.steps],
    }
    for key, value in results.items():
        shown = {k: f"{v / MIB:.1f} MiB" for k, v in value.items()} if key.endswith("cache_bytes") else value
        if isinstance(value, int) and key != "calibration_sequences":
            shown = f"{value / MIB:.1f} MiB"
        print(f"{key:45s} {shown}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
