"""Training-free compensation of a pruned model, measured (issue 20, item 2): a least-squares refit of the kept input
columns of every narrowed output projection, from calibration activations, kept in the library only if it lowers
held-out perplexity in and out of the calibration domain.

For each results-table record (MultiPruner 44:52:4 at 10% and 20% of SmolLM2-135M), the dense model is pruned with
`MultiPruner(model).apply(record)`, then, layer by layer through the *pruned* model (so every refit sees the inputs
the refits before it produce):

* `o_proj` of an attention that lost KV groups and `down_proj` of an MLP that lost channels: with `X` the
  projection's input (the kept heads' / channels' activations) and `T` the *dense* sub-block's output on the pruned
  model's own input to that sub-block (minus the projection's bias), the new weight is
  `argmin_W |X W^T - T|^2 + lam |W - W0|^2 = (X^T T + lam W0^T)^T (X^T X + lam I)^-1`, `W0` the sliced original
  weight and `lam = alpha * mean(diag(X^T X))` (ridge toward the original, relative to the activations' scale);
* attention first, then the MLP (whose input follows from the refitted attention), then the layer's output is
  propagated to the next layer. Removed sub-blocks and untouched widths are left as they are.

The calibration text is the record's own: both its calibration sets (its `config`: Alpaca rows drawn as the search
drew them, 40 rows per set cut into 512-token sequences: 9 sequences, 4,608 tokens per set, 9,216 in all).
Measured: held-out Alpaca perplexity (`examples/smollm2.py` `calibration_text(...)["held_out"]`: rows outside both
calibration sets, as many 512-token sequences as one set) and WikiText-2 perplexity (local test split, windows of
2048, the first `--wikitext-windows` of them). fp32, one thread. The report is written after every configuration;
`--resume` continues one with the same settings (and adds the `--alphas` it lacks).

    nice -n 10 python benchmarks/compensation.py --output benchmarks/results/compensation.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import LOCAL_WIKITEXT, calibration_text, load_smollm2  # noqa: E402

from optimum_multipruner import MultiPruner, MultiPrunerConfig  # noqa: E402
from optimum_multipruner.architectures import ArchitectureAdapter  # noqa: E402
from optimum_multipruner.data import build_calibration_sets  # noqa: E402
from optimum_multipruner.evaluation import evaluate_perplexity  # noqa: E402
from optimum_multipruner.nll import perplexity, reference_ignore_index  # noqa: E402
from optimum_multipruner.surgery import has_attention, has_mlp  # noqa: E402
from optimum_multipruner.utils import atomic_write_text, read_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RECORDS = {
    "10%": os.path.join(RESULTS, "smollm2", "multipruner_44_52_4_10", "pruning_record.json"),
    "20%": os.path.join(RESULTS, "smollm2", "multipruner_44_52_4_20", "pruning_record.json"),
}
UNCOMPENSATED = "none"


class RidgeFit:
    """Running `X^T X`, `X^T T` and `|T|^2` (float64) of a linear layer's input `X` and its target output `T`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.cross = torch.zeros(in_features, out_features, dtype=torch.float64)
        self.target_energy = 0.0

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).double()  # [tokens, in]
        t = targets.reshape(-1, targets.shape[-1]).double()  # [tokens, out]
        self.gram += x.T @ x
        self.cross += x.T @ t
        self.target_energy += float((t * t).sum())

    def solve(self, weight: torch.Tensor, alpha: float) -> torch.Tensor:
        """`[out, in]`: the ridge solution toward `weight`, `lam = alpha * mean(diag(X^T X))`."""
        original = weight.detach().double().T  # [in, out]
        lam = alpha * float(self.gram.diagonal().mean())
        eye = torch.eye(len(self.gram), dtype=torch.float64)
        return torch.linalg.solve(self.gram + lam * eye, self.cross + lam * original).T.to(weight.dtype)

    def relative_error(self, weight: torch.Tensor) -> float:
        """`|X W^T - T|^2 / |T|^2` from the running sums."""
        w = weight.detach().double().T  # [in, out]
        error = self.target_energy - 2 * float((w * self.cross).sum()) + float((w * (self.gram @ w)).sum())
        return error / self.target_energy


def first_output(output: Any) -> torch.Tensor:
    """A module's hidden-state output (attention modules return a tuple with it first)."""
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def layer_calls(model: nn.Module, adapter: ArchitectureAdapter,
                sequences: torch.Tensor) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Per sequence, the hidden states entering the first decoder layer, and per layer and sequence, the keyword
    arguments the model calls that layer with (rotary embeddings, mask, ...): one decoder forward per sequence."""
    layers = adapter.decoder_layers(model)
    first_inputs: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def recorder(i: int) -> Callable:
        def hook(module, args, call_kwargs):
            if i == 0:
                first_inputs.append(args[0] if args else call_kwargs["hidden_states"])
            kwargs[i].append({k: v for k, v in call_kwargs.items() if k != "hidden_states"})
        return hook

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for sequence in sequences:
            batch = sequence[None]
            model.get_decoder()(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return first_inputs, kwargs


@torch.no_grad()
def fit_projection(layer: nn.Module, branch: nn.Module, dense_branch: nn.Module, projection: nn.Linear,
                   hidden: list[torch.Tensor], kwargs: list[dict]) -> RidgeFit:
    """Run `layer` on every sequence and collect the ridge statistics of `projection` (the output projection of
    `branch`): its input, and as target the dense branch's output on `branch`'s own input, minus the bias."""
    fit = RidgeFit(projection.in_features, projection.out_features)
    inputs: list[torch.Tensor] = []

    def take_input(module, args):
        inputs.append(args[0])

    def take_target(module, args, call_kwargs, output):
        target = first_output(dense_branch(*args, **call_kwargs))
        if projection.bias is not None:
            target = target - projection.bias
        fit.add(inputs.pop(), target)

    handles = [projection.register_forward_pre_hook(take_input),
               branch.register_forward_hook(take_target, with_kwargs=True)]
    try:
        for h, call_kwargs in zip(hidden, kwargs):
            layer(h, **call_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return fit


def narrowed_projections(layer: nn.Module, dense_layer: nn.Module,
                         adapter: ArchitectureAdapter) -> list[tuple[str, nn.Module, nn.Module, nn.Linear]]:
    """`(kind, branch, dense branch, output projection)` of the layer's sub-blocks that are kept but narrower than
    in the dense layer, attention first. The output projections are the modules whose input columns the adapter's
    surgery slices (`select_kv_groups`: `o_proj`, `select_mlp_channels`: `down_proj`)."""
    found = []
    attention, dense_attention = adapter.attention(layer), adapter.attention(dense_layer)
    if has_attention(layer, adapter) and attention.o_proj.in_features < dense_attention.o_proj.in_features:
        found.append(("attention", attention, dense_attention, attention.o_proj))
    mlp, dense_mlp = adapter.mlp(layer), adapter.mlp(dense_layer)
    if has_mlp(layer, adapter) and adapter.mlp_width(mlp) < adapter.mlp_width(dense_mlp):
        found.append(("mlp", mlp, dense_mlp, mlp.down_proj))
    return found


@torch.no_grad()
def compensate(model: nn.Module, dense: nn.Module, adapter: ArchitectureAdapter, sequences: torch.Tensor,
               alpha: float) -> list[dict[str, Any]]:
    """Refit every narrowed output projection of the pruned `model` toward the `dense` model, layer by layer, on
    `sequences`; returns each refit's relative reconstruction error before and after."""
    hidden, kwargs = layer_calls(model, adapter, sequences)
    report = []
    for i, (layer, dense_layer) in enumerate(zip(adapter.decoder_layers(model), adapter.decoder_layers(dense))):
        for kind, branch, dense_branch, projection in narrowed_projections(layer, dense_layer, adapter):
            fit = fit_projection(layer, branch, dense_branch, projection, hidden, kwargs[i])
            refit = {"layer": i, "kind": kind, "kept_inputs": projection.in_features,
                     "relative_error_before": fit.relative_error(projection.weight)}
            projection.weight.copy_(fit.solve(projection.weight, alpha))
            report.append({**refit, "relative_error_after": fit.relative_error(projection.weight)})
        hidden = [first_output(layer(h, **call_kwargs)) for h, call_kwargs in zip(hidden, kwargs[i])]
    return report


def measure(model: nn.Module, tokenizer, held_out: torch.Tensor, wikitext_windows: int) -> dict[str, float]:
    """Held-out Alpaca and WikiText-2 perplexity."""
    alpaca = perplexity(model, held_out, ignore_index=reference_ignore_index(tokenizer))
    wikitext = evaluate_perplexity(model, tokenizer, LOCAL_WIKITEXT, 2048, max_windows=wikitext_windows,
                                   progress=False)["perplexity"]
    return {"alpaca_held_out": alpaca, "wikitext2": wikitext}


def run_configuration(record_path: str, alpha: Optional[float], wikitext_windows: int) -> dict[str, Any]:
    """Prune the dense model to the record, compensate with `alpha` (None: not at all) and measure it."""
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    dense = copy.deepcopy(model) if alpha is not None else None
    pruner = MultiPruner(model, tokenizer)
    pruner.apply(record_path)
    config = MultiPrunerConfig.from_dict(pruner.record.config)
    calibration = build_calibration_sets(config, tokenizer, model.get_input_embeddings().num_embeddings)
    text = calibration_text(tokenizer, config.num_calibration_samples_width, config.sequence_length, config.seed,
                            config.calibration_dataset)
    if not (torch.equal(text["first"], calibration["width"]) and torch.equal(text["second"], calibration["block"])):
        raise RuntimeError("calibration_text does not draw the record's calibration sets; the held-out rows are wrong.")
    result: dict[str, Any] = {"alpha": alpha}
    if alpha is not None:
        sequences = torch.cat([calibration["width"], calibration["block"]])
        fit_start = time.perf_counter()
        result["refits"] = compensate(model, dense, pruner.adapter, sequences, alpha)
        result["fit_seconds"] = time.perf_counter() - fit_start
        result["calibration_tokens"] = sequences.numel()
        del dense
    result.update(measure(model, tokenizer, text["held_out"], wikitext_windows))
    result["seconds"] = time.perf_counter() - start
    return result


def decide(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The issue's rule: keep compensation only if one alpha lowers both perplexities at every ratio."""
    metrics = ("alpaca_held_out", "wikitext2")
    per_alpha = {}
    for label in next(iter(results.values())):
        if label == UNCOMPENSATED:
            continue
        changes = {ratio: {m: runs[label][m] / runs[UNCOMPENSATED][m] - 1 for m in metrics}
                   for ratio, runs in results.items()}
        flat = [change for row in changes.values() for change in row.values()]
        per_alpha[label] = {"relative_change": changes, "lowers_all": all(change < 0 for change in flat),
                            "mean_log_ratio": sum(map(math.log1p, flat)) / len(flat)}
    passing = [label for label, row in per_alpha.items() if row["lowers_all"]]
    best = min(passing or per_alpha, key=lambda label: per_alpha[label]["mean_log_ratio"])
    return {"per_alpha": per_alpha, "best_alpha": best, "keep": bool(passing)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(RESULTS, "compensation.json"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1],
                        help="ridge strengths, relative to the mean diagonal of X^T X")
    parser.add_argument("--ratios", nargs="+", choices=sorted(RECORDS), default=sorted(RECORDS))
    parser.add_argument("--wikitext-windows", type=int, default=10, help="first windows of 2048 tokens")
    parser.add_argument("--threads", type=int, default=1)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue a report made with the same settings, adding any new --alphas")
    group.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = {"records": {r: os.path.relpath(RECORDS[r], os.path.dirname(RESULTS)) for r in args.ratios},
                "alphas": args.alphas, "wikitext_windows": args.wikitext_windows, "wikitext_sequence_length": 2048,
                "threads": args.threads, "dtype": "float32", "torch": torch.__version__}
    report: dict[str, Any] = {"settings": settings, "results": {}}
    if os.path.exists(args.output):
        if args.resume:
            report = read_json(args.output)
            made = report["settings"]
            if {**made, "alphas": args.alphas} != settings:
                raise SystemExit(f"{args.output} was made with other settings ({made}); use --overwrite.")
            made["alphas"] = sorted(set(made["alphas"]) | set(args.alphas))
        elif not args.overwrite:
            raise SystemExit(f"{args.output} exists; pass --resume to continue it or --overwrite to replace it.")
    labels = {UNCOMPENSATED: None, **{f"{alpha:g}": alpha for alpha in args.alphas}}
    for ratio in args.ratios:
        for label, alpha in labels.items():
            runs = report["results"].setdefault(ratio, {})
            if label in runs:
                continue
            runs[label] = run_configuration(RECORDS[ratio], alpha, args.wikitext_windows)
            print(f"{ratio} alpha={label}: Alpaca held-out {runs[label]['alpaca_held_out']:.3f}, "
                  f"WikiText-2 {runs[label]['wikitext2']:.3f} ({runs[label]['seconds']:.0f} s)", flush=True)
            atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    report["decision"] = decide(report["results"])
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["decision"], indent=2))


if __name__ == "__main__":
    main()
