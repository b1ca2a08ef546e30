"""Search speed on the real SmolLM2-135M model: plain vs accelerated greedy block search, or (`--nproc N`) the
accelerated search in one process vs spread over N processes with torch.distributed.

Default mode: both searches run the same BlockPruner configuration on the same calibration sequences; the script
checks that they remove the same blocks with the same perplexities and reports the work each did, in full-forward
equivalents (one forward pass of the whole model over the whole calibration set; noise-free) and in wall time (noisy
on shared CPUs).

`--nproc N`: the accelerated search (exact, or `--search-mode fast`) runs once in 1 process and once in N processes
(gloo on the CPU, NCCL with `--device cuda`, one GPU per process), each process holding the whole model. On the CPU
each process gets `cores // N` threads, the single process too: CPU kernels sum in another order with another thread
count, which changes the last bits of the perplexities, so only equal threads can give the same record (on GPUs each
process computes as a single one does). It reports the seconds of the search on
rank 0 and the speed-up over 1 process (noisy on shared CPUs), the work summed over the processes and that of the
busiest one (noise-free; their ratio to 1 process's work bounds the speed-up), and whether the record is the same.

    python benchmarks/search_speed.py --steps 6 --output results/search_speed.json
    python benchmarks/search_speed.py --nproc 2 --steps 3 --output results/search_speed_nproc2.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import DEFAULT_CALIBRATION, load_smollm2  # noqa: E402

from optimum_multipruner import MultiPruner, MultiPrunerConfig  # noqa: E402
from optimum_multipruner.utils import atomic_write_text  # noqa: E402


def search(accelerated: bool, args: argparse.Namespace, device: str = "cpu") -> tuple[dict, float]:
    """One block search on SmolLM2-135M: its result and the seconds `prune` took."""
    model, tokenizer = load_smollm2()
    model.to(device)
    config = MultiPrunerConfig.blockpruner(
        target_ratio=0.5,
        max_steps=args.steps,
        calibration_dataset=args.calibration,
        num_calibration_samples_block=args.rows,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        accelerated_search=accelerated,
        search_mode=args.search_mode,
    )
    pruner = MultiPruner(model, tokenizer)
    if dist.is_initialized():
        dist.barrier()  # every process starts the search together
    start = time.perf_counter()
    pruner.prune(config, progress=args.progress)
    seconds = time.perf_counter() - start
    record = pruner.record
    result = {
        "mode": "accelerated" if accelerated else "plain",
        "steps": [[s.action, s.layer, s.perplexity, s.ratio] for s in record.steps],
        **record.search_stats["block"],
    }
    return result, seconds


# ------------------------------------------------------------------ plain vs accelerated
def compare_plain_and_accelerated(args: argparse.Namespace) -> None:
    plain, fast = search(False, args)[0], search(True, args)[0]
    same = [s[:2] for s in plain["steps"]] == [s[:2] for s in fast["steps"]] and all(
        abs(a[2] - b[2]) <= 1e-6 * b[2] for a, b in zip(fast["steps"], plain["steps"])
    )
    print(f"\nBlock search on SmolLM2-135M: {args.steps} steps, {args.rows} Alpaca rows, seq {args.sequence_length}")
    print(f"{'mode':<12} {'candidates':>10} {'stopped early':>13} {'full fwd equiv.':>15} {'wall s':>8}")
    for result in (plain, fast):
        print(
            f"{result['mode']:<12} {result['candidates_started']:>10} {result['candidates_stopped_early']:>13} "
            f"{result['full_forward_equivalents']:>15.1f} {result['seconds']:>8.1f}"
        )
    print(
        f"accelerated / plain: work x{fast['full_forward_equivalents'] / plain['full_forward_equivalents']:.3f}, "
        f"wall time x{fast['seconds'] / plain['seconds']:.3f}; same choices and perplexities: {same}"
    )
    print("removed:", ", ".join(f"{a}[{layer}]" for a, layer, *_ in fast["steps"]))
    _write(args, {"plain": plain, "accelerated": fast, "same_choices": same})
    if not same:
        raise SystemExit("The accelerated search made different choices than the plain search.")


# ------------------------------------------------------------------ 1 vs N processes
def _rank_search(rank: int, nproc: int, threads: int, store: str, args: argparse.Namespace, output: str) -> None:
    """One process of an `nproc`-process search (`nproc == 1`: a plain single process, no process group)."""
    torch.set_num_threads(threads)
    device = "cpu"
    if nproc > 1:
        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=nproc)
    if args.device == "cuda":
        device = f"cuda:{rank}"
        torch.cuda.set_device(device)
    try:
        result, seconds = search(True, args, device)
    finally:
        if nproc > 1:
            dist.destroy_process_group()
    if rank == 0:
        atomic_write_text(output, json.dumps({**result, "processes": nproc, "threads_per_process": threads,
                                              "wall_seconds": seconds}))


def run_processes(nproc: int, threads: int, args: argparse.Namespace) -> dict:
    """The accelerated search in `nproc` fresh processes of `threads` threads; rank 0's result and wall time."""
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "result.json")
        mp.spawn(_rank_search, args=(nproc, threads, os.path.join(folder, "store"), args, output), nprocs=nproc)
        with open(output, encoding="utf-8") as handle:
            return json.load(handle)


def compare_process_counts(args: argparse.Namespace) -> None:
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        raise SystemExit(f"--nproc {args.nproc} --device cuda needs {args.nproc} GPUs; "
                         f"{torch.cuda.device_count()} are visible.")
    threads = 1 if args.device == "cuda" else max(1, (os.cpu_count() or 1) // args.nproc)
    one, many = run_processes(1, threads, args), run_processes(args.nproc, threads, args)
    same = many["steps"] == one["steps"]  # actions, layers and perplexities, exactly
    for result in (one, many):
        result.setdefault("busiest_process_full_forward_equivalents", result["full_forward_equivalents"])
        result["speedup"] = round(one["wall_seconds"] / result["wall_seconds"], 3)
        # noise-free: the work of one process over the work of the busiest of N (the wall time's ideal speed-up)
        result["work_speedup"] = round(one["full_forward_equivalents"]
                                       / result["busiest_process_full_forward_equivalents"], 3)
    print(f"\nAccelerated {args.search_mode} block search on SmolLM2-135M ({args.device}): {args.steps} steps, "
          f"{args.rows} Alpaca rows, seq {args.sequence_length} (work in full-forward equivalents)")
    print(f"{'processes':>9} {'threads/proc':>12} {'seconds':>8} {'speed-up':>8} {'work, all':>9} "
          f"{'work, busiest':>13} {'work speed-up':>13} {'same record':>11}")
    for result in (one, many):
        print(f"{result['processes']:>9} {result['threads_per_process']:>12} {result['wall_seconds']:>8.1f} "
              f"{result['speedup']:>8.2f} {result['full_forward_equivalents']:>9.1f} "
              f"{result['busiest_process_full_forward_equivalents']:>13.1f} {result['work_speedup']:>13.2f} "
              f"{('yes' if same else 'NO') if result is many else '-':>11}")
    print("removed:", ", ".join(f"{a}[{layer}]" for a, layer, *_ in many["steps"]))
    _write(args, {"one_process": one, f"{args.nproc}_processes": many, "same_record": same})
    if not same:
        raise SystemExit(f"The {args.nproc}-process search made another record than the single-process search.")


def _write(args: argparse.Namespace, results: dict) -> None:
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps({"settings": vars(args), **results}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=8, help="Alpaca calibration rows")
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calibration", default=DEFAULT_CALIBRATION)
    parser.add_argument("--nproc", type=int, help="compare the accelerated search in 1 and in NPROC processes")
    parser.add_argument("--search-mode", choices=("exact", "fast"), default="exact", help="with --nproc")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="with --nproc: cuda = one GPU each")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.nproc is None:
        compare_plain_and_accelerated(args)
    elif args.nproc < 2:
        parser.error("--nproc must be at least 2")
    else:
        compare_process_counts(args)


if __name__ == "__main__":
    main()
