"""Names shared by `optimum_multipruner` and its command line, in a module that imports nothing.

`optimum-cli` builds every command's parser at start-up, and the benchmark workers must not load torch: both read
these names from here, without importing the (heavy) `optimum_multipruner` package. Each name is defined only here.
"""

# Whether `import optimum_multipruner` registers the pruned model types (which imports torch and transformers). The
# optimum-cli plugin turns it off at start-up, so that building the parsers from the configs imports neither; the
# commands then call `optimum_multipruner.register()` when they run. Every other process leaves it on.
REGISTER_ON_IMPORT = True

PRUNED_MODEL_TYPE_PREFIX = "multipruner_"  # `model_type` of a pruned checkpoint: "multipruner_<family>"
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")  # OpenVINO export weight formats (the API's `None` = automatic)
OPENVINO_MODEL_FILES = ("openvino_model.xml", "openvino_model.bin")  # an IR folder's model: topology, weights
BENCHMARK_ENGINES = ("openvino", "genai")  # raw OpenVINO runtime (the default), openvino_genai.LLMPipeline
DEVICE_NAME_PATTERN = r"(cpu|mps|(cuda|xpu|npu|hpu|mlu|musa)(:\d+)?)"  # a torch device name, e.g. cpu, cuda:1
EXPORT_FORMATS = ("openvino", "gguf")  # `optimum-cli multipruner export --format`
GGUF_OUTTYPES = ("f32", "f16", "q8_0")  # GGUF tensor types written by `export_gguf` (others: llama.cpp's llama-quantize)
