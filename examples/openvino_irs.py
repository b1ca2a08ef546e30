"""OpenVINO IRs of the examples' and benchmarks' checkpoints: exported once and reused, and the weight bytes one decode
step reads (shared by `examples/compare_methods.py` and `benchmarks/openvino_speed.py`)."""

from __future__ import annotations

import gc
import math
import os
import time
from typing import Any

from optimum_multipruner_constants import OPENVINO_MODEL_FILES

# Nodes between a weight constant and its MatMul: decompression (Convert, Subtract, Multiply) and layout changes.
WEIGHT_PATH_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}


def openvino_dir(source: str, name: str, weight_format: str, work_dir: str) -> str:
    """`source` if it is an IR directory, else its export to `<work_dir>/<name>-<weight_format>` (reused if there)."""
    if os.path.isfile(os.path.join(source, OPENVINO_MODEL_FILES[0])):
        return source
    output = os.path.join(work_dir, f"{name}-{weight_format}")
    if os.path.isfile(os.path.join(output, OPENVINO_MODEL_FILES[0])):
        print(f"Reusing {output}")
        return output
    from optimum_multipruner.exporters import export_openvino

    start = time.perf_counter()
    export_openvino(source, output, weight_format=weight_format, convert_tokenizer=False)
    gc.collect()
    print(f"Exported {source} to {output} ({weight_format}) in {time.perf_counter() - start:.0f} s")
    return output


def matmul_weight_bytes(ir_dir: str) -> dict[str, Any]:
    """Bytes of the constants MatMuls read as their weight input (quantization scales and zero points included),
    each constant once, and how many weight constants there are of each element type.

    This is what one decode step must read: every linear layer and the lm_head. The embedding constant feeds a
    Gather (a one-row lookup) and is not counted, unless the same constant is also the (tied) lm_head weight.
    """
    import openvino as ov

    model = ov.Core().read_model(os.path.join(ir_dir, OPENVINO_MODEL_FILES[0]))
    constants = {}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        stack = [op.input_value(1).get_node()]
        while stack:
            node = stack.pop()
            if node.get_type_name() == "Constant":
                constants[node.get_name()] = node
            elif node.get_type_name() in WEIGHT_PATH_OPS:
                stack.extend(value.get_node() for value in node.input_values())
    total, types = 0, {}
    for node in constants.values():
        element_type = node.get_output_element_type(0)
        total += element_type.bitwidth * math.prod(node.get_output_shape(0)) // 8
        if len(node.get_output_shape(0)) == 2 and min(node.get_output_shape(0)) > 1:  # weights, not scales
            types[element_type.get_type_name()] = types.get(element_type.get_type_name(), 0) + 1
    return {"bytes": total, "weight_constants_by_type": types}
