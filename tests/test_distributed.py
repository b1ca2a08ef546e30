"""Candidate scoring spread over processes: rank detection, sharing out, collectives, and 2-process gloo searches
(torch.multiprocessing and `torchrun ... optimum-cli`) that must give the single-process record and weights."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from testing_utils import make_model, run_optimum_cli, search_config, train_briefly

from optimum_multipruner import distributed
from optimum_multipruner.record import RECORD_NAME

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SMALL_SEARCH = dict(num_calibration_samples_block=24, num_calibration_samples_width=16, sequence_length=32,
                    batch_size=2)


@pytest.fixture
def single_process(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------ one process
def test_share_out_balances_the_recomputed_layers():
    num_layers = 8
    costs = [num_layers - i for i in range(num_layers)] * 2  # attention then MLP blocks of layers 0..7
    shares = distributed.share_out(costs, 2)
    assert sorted(p for share in shares for p in share) == list(range(len(costs)))
    assert [sum(costs[p] for p in share) for share in shares] == [36, 36]
    assert all(share == sorted(share) for share in shares)  # each rank keeps the scoring order
    assert distributed.share_out(costs, 2) == shares  # the same split on every rank
    three = distributed.share_out(costs, 3)
    assert max(map(len, three)) - min(map(len, three)) <= 2
    assert max(sum(costs[p] for p in s) for s in three) - min(sum(costs[p] for p in s) for s in three) <= 1


def test_share_out_with_more_ranks_than_candidates():
    assert distributed.share_out([3, 1], 4) == [[0], [1], [], []]
    assert distributed.share_out([5, 5, 5], 1) == [[0, 1, 2]]


def test_rank_and_world_come_from_the_launcher(monkeypatch, single_process):
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (1, 2, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.local_device() == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.local_device() == torch.device("cpu")


def test_one_process_touches_no_process_group(single_process):
    device = torch.device("cpu")
    distributed.init_distributed(device)
    assert not dist.is_initialized()
    rows = torch.tensor([[2, 1.5, 1.0], [0, 9.0, 0.0]], dtype=torch.float64)
    assert distributed.all_gather_rows(rows, [2], device) is rows
    assert distributed.sum_over_ranks([1.0, 2.0], device) == [1.0, 2.0]
    distributed.check_same_on_all_ranks("anything", "models", device)
    with pytest.raises(KeyError), distributed.fail_together(device):
        raise KeyError("own error")


def test_weights_fingerprint_sees_another_seed():
    from testing_utils import make_model

    a, b = make_model("llama", seed=0), make_model("llama", seed=0)
    assert distributed.weights_fingerprint(a) == distributed.weights_fingerprint(b)
    assert distributed.weights_fingerprint(a) != distributed.weights_fingerprint(make_model("llama", seed=1))


# ------------------------------------------------------------------ two processes (gloo)
def _spawn(worker, tmp_path, *args, world: int = 2) -> None:
    """Run `worker(rank, *args)` in `world` processes joined in a gloo group (the caller's group, as accelerate or
    a user script would make it)."""
    mp.spawn(_entry, args=(world, str(tmp_path / "store"), worker, args), nprocs=world, join=True)


def _entry(rank: int, world: int, store: str, worker, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def _check_collectives(rank: int) -> None:
    device = torch.device("cpu")
    counts = [3, 1]  # uneven shares; float64 carries candidate indices and totals exactly
    rows = [[0, 1.25, 1.0], [2, 0.1 + 0.2, 0.0], [3, 7.0, 1.0]] if rank == 0 else [[1, 1e-300, 1.0]]
    gathered = distributed.all_gather_rows(torch.tensor(rows, dtype=torch.float64), counts, device)
    assert gathered.tolist() == [[0, 1.25, 1.0], [2, 0.1 + 0.2, 0.0], [3, 7.0, 1.0], [1, 1e-300, 1.0]]
    assert distributed.sum_over_ranks([rank, 1.0], device) == [1.0, 2.0]
    distributed.check_same_on_all_ranks("same", "models", device)
    with pytest.raises(ValueError, match=r"Rank\(s\) \[1\] have other models than rank 0"):
        distributed.check_same_on_all_ranks(f"rank {rank}", "models", device)
    with pytest.raises(RuntimeError if rank == 0 else KeyError, match="Rank|only rank 1"):
        with distributed.fail_together(device):
            if rank == 1:
                raise KeyError("only rank 1")


def _prune(checkpoint: str, calibration_file: str, overrides: dict, **prune_options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_multipruner import MultiPruner

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    pruner = MultiPruner(model, AutoTokenizer.from_pretrained(checkpoint))
    pruner.prune(search_config(calibration_file, **overrides), progress=False, **prune_options)
    return pruner


def _prune_and_save(checkpoint: str, calibration_file: str, overrides: dict, output: str, **prune_options) -> None:
    _prune(checkpoint, calibration_file, overrides, **prune_options).save_pretrained(output)
    # in a distributed search rank 0 writes; the other ranks return (even after rank 0 wrote)


def _worker(rank: int, checkpoint: str, calibration_file: str, out: str) -> None:
    _check_collectives(rank)
    with pytest.raises(ValueError, match=r"Rank\(s\) \[1\] have other configurations than rank 0"):
        _prune(checkpoint, calibration_file, dict(SMALL_SEARCH, seed=rank))
    with pytest.raises(RuntimeError if rank == 0 else ValueError, match=r"Rank\(s\) \[1\] failed|Cannot resume"):
        _prune(checkpoint, calibration_file, SMALL_SEARCH, resume_from=None if rank == 0 else out + "-nothing")
    for name, overrides in SEARCHES.items():
        _prune_and_save(checkpoint, calibration_file, overrides, os.path.join(out, name),
                        checkpoint_dir=os.path.join(out, f"{name}-progress"))


@contextmanager
def _one_thread():
    """Score with one thread, as every rank does, so CPU kernels sum in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _same_result(one: str, two: str) -> dict:
    """Same record (but the work statistics, which the two processes sum) and byte-identical weights; returns the
    statistics of the two-process search."""
    records, stats = [], []
    for folder in (one, two):
        with open(os.path.join(folder, RECORD_NAME), encoding="utf-8") as handle:
            record = json.load(handle)
        stats.append(record.pop("search_stats"))
        records.append(record)
    assert records[0] == records[1]
    assert records[0]["steps"]
    assert all(stage.get("processes") == 2 for stage in stats[1].values())
    weights = [os.path.join(folder, "model.safetensors") for folder in (one, two)]
    with open(weights[0], "rb") as a, open(weights[1], "rb") as b:
        assert a.read() == b.read()
    return stats[1]


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory, tokenizer):
    """A briefly trained tiny Llama (so candidates differ and some are stopped early), saved with its tokenizer."""
    path = tmp_path_factory.mktemp("distributed") / "dense"
    train_briefly(make_model("llama", seed=3), tokenizer, steps=60).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


SEARCHES = {  # the exact accelerated search; the fast mode (rounds re-shared; a screen that sits many out), with KL
    "exact": dict(SMALL_SEARCH),
    "fast": dict(SMALL_SEARCH, search_mode="fast", fast_search=dict(first_sequences=2, screen=0.1)),
    "fast-kl": dict(SMALL_SEARCH, search_mode="fast", fast_search=dict(first_sequences=2), importance_metric="kl"),
}


def test_two_processes_give_the_single_process_record_and_weights(dense_checkpoint, calibration_file, tmp_path,
                                                                   single_process):
    """In one spawn (to start the processes once): the collectives, input checks that fail together, and searches."""
    two = tmp_path / "two"
    _spawn(_worker, tmp_path, dense_checkpoint, calibration_file, str(two))
    for name, overrides in SEARCHES.items():
        with _one_thread():
            _prune_and_save(dense_checkpoint, calibration_file, overrides, str(tmp_path / "one" / name))
        stats = _same_result(str(tmp_path / "one" / name), str(two / name))
        assert sorted(os.listdir(two / f"{name}-progress")) == ["multipruner_progress.json"]
        if name == "exact":  # candidates a rank stopped early (against its own bound) were gathered and lost
            assert sum(stage["candidates_stopped_early"] for stage in stats.values()) > 0
        else:  # the rounds shared out the candidates still in the race
            assert sum(stage["candidates_dropped"] for stage in stats.values()) > 0
        if name == "fast":  # every rank screened alike (the damage each step records is the same on all)
            assert sum(stage["candidates_screened"] for stage in stats.values()) > 0


def test_torchrun_optimum_cli_prune(dense_checkpoint, calibration_file, tmp_path, single_process):
    """`torchrun --nproc-per-node 2 --no-python optimum-cli multipruner prune ...`: the group is made from the
    launcher's environment (gloo on CPU), rank 0 writes the checkpoint, the result is the single-process one."""
    options = ["--calibration-dataset", calibration_file, "--target-ratio", "0.3", "--mlp-channel-group-size", "64",
               "--width-alignment", "32", "--no-progress"]
    for name, value in SMALL_SEARCH.items():
        options += ["--" + name.replace("_", "-"), str(value)]
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    two = str(tmp_path / "two")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python", cli,
         "multipruner", "prune", "-m", dense_checkpoint, two, *options],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Pruned ") == 1  # only rank 0 reports
    one = str(tmp_path / "one")
    with _one_thread():
        run_optimum_cli("multipruner", "prune", "-m", dense_checkpoint, one, *options)
    _same_result(one, two)
