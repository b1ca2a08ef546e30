"""Each family's tiny pruned model, exported once per session by `optimum-cli export openvino-pruned` (no `--task`), with
the OpenVINO tokenizer models that openvino-genai's `LLMPipeline` needs and a pruning record to carry over."""

import pytest
from exported_models import STRUCTURE, pruned_model
from testing_utils import make_tokenizer, run_optimum_cli


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`exported(family, structure=STRUCTURE)` -> (pruned checkpoint folder, IR folder)."""
    from optimum_multipruner import get_adapter
    from optimum_multipruner.record import RECORD_NAME, PruningRecord
    from optimum_multipruner.surgery import dense_parameter_count

    workdir = tmp_path_factory.mktemp("openvino")
    cache = {}

    def get(family, structure=STRUCTURE):
        key = family, str(structure.to_dict())
        if key not in cache:
            name = family if structure == STRUCTURE else f"{family}_{len(cache)}"
            checkpoint, ir = workdir / f"{name}_pruned", workdir / f"{name}_ov"
            model = pruned_model(family, structure)
            model.save_pretrained(checkpoint)
            make_tokenizer().save_pretrained(checkpoint)
            adapter = get_adapter(model)
            PruningRecord(
                model_type=adapter.model_type,
                num_hidden_layers=model.config.num_hidden_layers,
                dense_parameters=dense_parameter_count(model.config, adapter),
                structure=structure,
                weight_reorder=False,
                source="tests/exporters",
            ).save(checkpoint / RECORD_NAME)
            run_optimum_cli("export", "openvino-pruned", "--model", str(checkpoint), str(ir))
            cache[key] = str(checkpoint), str(ir)
        return cache[key]

    return get
