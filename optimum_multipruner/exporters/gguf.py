"""GGUF export for llama.cpp: a pruned (or dense) checkpoint as llama.cpp's `deci` architecture.

`deci` (written for Llama-3.1-Nemotron-51B) reads per-layer arrays for `attention.head_count`,
`attention.head_count_kv` and `feed_forward_length`, skips the attention where a layer's head count is 0 and the MLP
where its FFN length is 0: the Llama graph with the pruned format's per-layer sizes. Two of llama.cpp's gaps are worked
around by `deci_layers`, the one place to change when llama.cpp fixes them. Tensors, vocabulary and quantization go
through `gguf`, the GGUF writer of llama.cpp's repository.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import gguf
import numpy as np
import torch
from torch import nn

from optimum_multipruner_constants import GGUF_OUTTYPES

from ..architectures import ArchitectureAdapter, get_adapter
from ..model_card import MODEL_CARD_NAME, write_model_card
from ..modeling import check_finite_weights
from ..structure import PrunedStructure
from ..surgery import read_structure
from ..utils import atomic_file, check_output_file, get_logger, remove_stale_temporary_files, source_file

logger = get_logger(__name__)

ZERO_MLP_WIDTH = 32  # width of the all-zero MLP that stands for a removed one: one q8_0 block
ROPE_TYPES = ("default", "linear", "llama3")  # rotary embeddings the deci graph computes as transformers does
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
METADATA_PREFIX = "multipruner"  # our GGUF keys: `multipruner.structure`, `multipruner.record`, ...
PAD_TOKEN = "[PAD{}]"  # vocabulary rows the tokenizer does not fill (llama.cpp's converter names them so)

# `tokenizer.ggml.pre` of the byte-level BPE pre-tokenizers llama.cpp knows, by the steps of tokenizer.json's
# `pre_tokenizer`: (type, regex or digit option) each.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", LLAMA3_PATTERN), ("ByteLevel", False)): "llama-bpe",
}


# --------------------------------------------------------------------------- the deci encoding of each layer
@dataclass(frozen=True)
class DeciLayer:
    """What one decoder layer is written as: head counts and FFN length as llama.cpp reads them, and whether a removed
    sub-block is written as an all-zero stand-in."""

    heads: int
    kv_heads: int
    ffn_length: int
    zero_attention: bool = False  # deci's "linear attention": unit norm, all-zero n_embd x n_embd output
    zero_mlp: bool = False  # unit norm, all-zero gate/up/down of width ZERO_MLP_WIDTH


def deci_layers(structure: PrunedStructure) -> list[DeciLayer]:
    """How each layer of `structure` is written, with llama.cpp's two gaps (measured with llama-cpp-python 0.3.36)
    worked around by sub-blocks that add exactly zero:

    * attention removed in layer 0: the loader takes the head size from layer 0's head count, so a count of 0 there
      does not load. The layer is written as deci's "linear attention" (head count 1, KV count 0) whose n_embd x n_embd
      output projection is all zeros;
    * MLP removed where the attention is kept: with an FFN length of 0 the graph leaves the layer before the attention
      output joins the residual stream. The MLP is written as an all-zero MLP of width `ZERO_MLP_WIDTH`.

    Cost: at most n_embd² + 3·32·n_embd zero parameters (under 0.3% of an 8B model), the same in compute per token.
    Where both sub-blocks of a layer are gone, both counts are 0 and the graph skips the layer.
    """
    layers = []
    for index, (heads, kv_heads, width) in enumerate(
        zip(structure.num_attention_heads, structure.num_key_value_heads, structure.intermediate_size)
    ):
        zero_attention = index == 0 and kv_heads == 0
        zero_mlp = width == 0 and kv_heads > 0
        layers.append(
            DeciLayer(
                heads=1 if zero_attention else heads,
                kv_heads=kv_heads,
                ffn_length=ZERO_MLP_WIDTH if zero_mlp else width,
                zero_attention=zero_attention,
                zero_mlp=zero_mlp,
            )
        )
    return layers


# --------------------------------------------------------------------------- what can be exported
def _rope_parameters(config) -> dict[str, Any]:
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    parameters.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    parameters.setdefault("rope_type", "default")
    return parameters


def check_gguf_support(config, adapter: ArchitectureAdapter) -> None:
    """`ValueError` in one line naming what llama.cpp's deci graph lacks for this model, before anything is written."""
    rope = _rope_parameters(config)
    if (blocker := adapter.gguf_blocker(config)) is not None:
        reason = blocker
    elif rope["rope_type"] not in ROPE_TYPES:
        reason = f"the deci graph has no {rope['rope_type']!r} rope scaling (only {', '.join(ROPE_TYPES)})"
    elif rope.get("partial_rotary_factor", 1.0) != 1.0:
        reason = "the deci graph rotates whole heads, not a partial rotary dimension"
    elif getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        reason = "the deci graph takes no biases on pruned projections"
    elif getattr(config, "hidden_act", "silu") != "silu":
        reason = f"the deci graph's MLP is SwiGLU, not {config.hidden_act!r}"
    else:
        return
    raise ValueError(f"Cannot export a {adapter.display_name} model to GGUF: {reason}.")


def context_length(config) -> int:
    """The trained context, capped at the sliding attention window where the model has one: up to it, the deci
    graph's full attention computes what sliding-window attention computes."""
    length = config.max_position_embeddings
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < length:
        logger.warning("The model attends within a sliding window of %d tokens; the GGUF's context length is capped "
                       "there (llama.cpp's deci graph attends to the whole context).", window)
        return window
    return length


# --------------------------------------------------------------------------- export
def export_gguf(
    model_or_dir: Union[str, os.PathLike, nn.Module],
    output_file: Union[str, os.PathLike],
    outtype: str = "f16",
    overwrite: bool = False,
    tokenizer=None,
    record=None,
) -> str:
    """Export a pruned (or dense) model to one GGUF file that llama.cpp runs (`llama-cli -m`, `llama-server -m`).

    Args:
        model_or_dir: a checkpoint folder or Hub id (pruned or dense; its tokenizer, `pruning_record.json` and
            `README.md` go along), or a loaded model with `tokenizer`, exported as it is in memory (its dtype).
        output_file: the `.gguf` file; written atomically.
        outtype: `"f32"`, `"f16"` or `"q8_0"` (gguf's quantizer; a tensor whose rows are not a multiple of 32 is
            written in f16, as llama.cpp's converter does). Other types: llama.cpp's `llama-quantize` on the f16 file.
        overwrite: replace an existing `output_file` instead of raising `FileExistsError`.
        tokenizer: the tokenizer of a loaded model (a folder's own is used otherwise).
        record: the `PruningRecord` to store in the file's metadata (default: the folder's `pruning_record.json`).

    The file has llama.cpp's `deci` architecture with per-layer head counts, KV head counts and FFN lengths (see
    `deci_layers`), the family's rotary settings, norms, tied or untied embeddings, the tokenizer (byte-level BPE or
    SentencePiece, special tokens, chat template), and the pruning structure, record and model card as metadata
    (`multipruner.*`). A family llama.cpp cannot run is refused before anything is written. Returns the file path.
    """
    if outtype not in GGUF_OUTTYPES:
        raise ValueError(f"`outtype` must be one of {GGUF_OUTTYPES}, got {outtype!r}.")
    check_output_file(output_file, overwrite)
    model, tokenizer, provenance = _load(model_or_dir, tokenizer, record)
    check_finite_weights(model)
    if tokenizer is None:
        raise ValueError("A GGUF file needs the model's tokenizer: pass `tokenizer=` with a loaded model.")
    adapter = get_adapter(model)
    check_gguf_support(model.config, adapter)
    structure = read_structure(model, adapter)
    layers = deci_layers(structure)
    writer_arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DECI]
    remove_stale_temporary_files(output_file)
    with tempfile.TemporaryDirectory() as workdir, atomic_file(output_file) as tmp:
        tokenizer.save_pretrained(workdir)
        if record is not None and "model_card" not in provenance:  # a record applied in memory: its card
            provenance["model_card"] = Path(write_model_card(workdir, model.config, record)).read_text("utf-8")
        writer = gguf.GGUFWriter(tmp, writer_arch)
        _add_hyperparameters(writer, model.config, adapter, layers, outtype)
        _add_vocabulary(writer, Path(workdir), tokenizer, model.get_input_embeddings().weight.shape[0])
        _add_provenance(writer, structure, structure != PrunedStructure.dense(model.config, adapter), provenance)
        for name, tensor in _tensors(model, adapter, layers):
            _add_tensor(writer, name, tensor, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    logger.info("Wrote %s (%s, deci architecture)", output_file, outtype)
    return str(output_file)


def _load(model_or_dir, tokenizer, record) -> tuple[nn.Module, Any, dict[str, str]]:
    """The model, its tokenizer, and the texts that say how it was made (`record`, `model_card`)."""
    from ..record import RECORD_NAME

    provenance = {}
    if isinstance(model_or_dir, nn.Module):
        model = model_or_dir
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = str(model_or_dir)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto").eval()
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
        for key, name in (("record", RECORD_NAME), ("model_card", MODEL_CARD_NAME)):
            path = source_file(source, name)
            if path is not None:
                with open(path, encoding="utf-8") as handle:
                    provenance[key] = handle.read()
    if record is not None:
        provenance["record"] = json.dumps(record.to_dict(), indent=2) + "\n"
    return model, tokenizer, provenance


def _add_hyperparameters(writer: gguf.GGUFWriter, config, adapter: ArchitectureAdapter, layers: list[DeciLayer],
                         outtype: str) -> None:
    layout = adapter.attention_layout(config)
    rope = _rope_parameters(config)
    writer.add_name(os.path.basename(str(getattr(config, "name_or_path", "") or "").rstrip("/")) or "model")
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(len(layers))
    writer.add_context_length(context_length(config))
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length([layer.ffn_length for layer in layers])
    writer.add_head_count([layer.heads for layer in layers])
    writer.add_head_count_kv([layer.kv_heads for layer in layers])
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_rope_dimension_count(layout.head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


# --------------------------------------------------------------------------- tokenizer
def _pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) of a byte-level BPE tokenizer's pre-tokenizer; `ValueError` if it has
    none for it."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    options = {"ByteLevel": "use_regex", "Digits": "individual_digits"}
    key = tuple(
        (step.get("type"), (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split"
         else step.get(options.get(step.get("type"), ""), True))
        for step in steps
    )
    if key not in PRE_TOKENIZERS:
        raise ValueError(
            f"llama.cpp has no pre-tokenizer known to match this tokenizer's ({[step for step, _ in key]}); the "
            f"exporter knows {sorted(set(PRE_TOKENIZERS.values()))}."
        )
    return PRE_TOKENIZERS[key]


def _merge_rank_scores(tokenizer_json: dict[str, Any], size: int) -> list[float]:
    """SentencePiece-style scores of a BPE tokenizer with byte fallback: a token made by the merge of rank r scores
    -r, so llama.cpp's SentencePiece tokenizer (highest score first) merges in the BPE model's order."""
    vocab = tokenizer_json["model"]["vocab"]
    scores = [0.0] * size
    for rank, merge in enumerate(tokenizer_json["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = vocab.get(left + right)
        if token is not None and scores[token] == 0.0:
            scores[token] = -float(rank + 1)
    return scores


def _gguf_vocab(folder: Path) -> tuple[gguf.Vocab, Optional[dict[str, Any]]]:
    """gguf's vocabulary reader for a saved tokenizer: SentencePiece's model file, else tokenizer.json as byte-level
    BPE (GPT-2 style) or as BPE with byte fallback (SentencePiece converted)."""
    if (folder / "tokenizer.model").is_file():
        return gguf.vocab.SentencePieceVocab(folder), None
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model, decoder = tokenizer_json["model"], tokenizer_json.get("decoder") or {}
    if model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
        # Byte-level BPE has a token for every byte, so byte fallback never fires (transformers' GGUF reader sets
        # it); gguf's BpeVocab refuses the flag, so the saved copy drops it.
        model["byte_fallback"] = False
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    for reader in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab):
        try:
            return reader(folder), tokenizer_json
        except FileNotFoundError:
            continue
    raise ValueError("The tokenizer is neither byte-level BPE nor SentencePiece; llama.cpp's GGUF cannot hold it.")


def _add_vocabulary(writer: gguf.GGUFWriter, folder: Path, tokenizer, rows: int) -> None:
    """Tokens, scores and types through gguf's vocabulary helpers, padded to the embedding's `rows`; merges, special
    token ids, add-BOS/EOS flags and the chat template through `gguf.SpecialVocab`."""
    vocab, tokenizer_json = _gguf_vocab(folder)
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens()))
    if len(tokens) > rows:
        beyond = range(rows, len(tokens))
        if not all(token_id in tokenizer.added_tokens_decoder for token_id in beyond):
            raise ValueError(f"The tokenizer has {len(tokens)} tokens but the embedding only {rows} rows; it does not "
                             "belong to this model.")
        logger.warning("The tokenizer's added tokens %s have ids beyond the embedding's %d rows (the model cannot "
                       "read them); the GGUF leaves them out.", [tokenizer.added_tokens_decoder[i].content
                                                                 for i in beyond], rows)
        del tokens[rows:], scores[rows:], types[rows:]
    if isinstance(vocab, gguf.vocab.BpeVocab):
        writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_json))
        for token_id, added in tokenizer.added_tokens_decoder.items():  # BpeVocab types its base vocabulary NORMAL
            if token_id < len(types):
                types[token_id] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    elif tokenizer_json is not None:  # LlamaHfVocab scores every token alike; llama.cpp merges by score
        base = _merge_rank_scores(tokenizer_json, len(tokens))
        scores = [base[i] if types[i] == gguf.TokenType.NORMAL else score for i, score in enumerate(scores)]
    padding = rows - len(tokens)
    tokens += [PAD_TOKEN.format(i).encode() for i in range(padding)]
    scores += [-1000.0] * padding
    types += [gguf.TokenType.UNUSED] * padding
    writer.add_vocab_size(rows)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    is_bpe = isinstance(vocab, gguf.vocab.BpeVocab)
    gguf.SpecialVocab(folder, load_merges=is_bpe, n_vocab=rows).add_to_gguf(writer, quiet=True)


# --------------------------------------------------------------------------- provenance
def _add_provenance(writer: gguf.GGUFWriter, structure: PrunedStructure, pruned: bool,
                    provenance: dict[str, str]) -> None:
    """The pruned structure (0 = removed, as in `config.json`), the pruning record with its SHA-256, and the model
    card, so the file says how it was made; the tag `pruning` only for a pruned model."""
    writer.add_tags(["pruning", "multipruner"] if pruned else ["multipruner"])
    writer.add_string(f"{METADATA_PREFIX}.structure", json.dumps(structure.to_dict()))
    if "record" in provenance:
        writer.add_string(f"{METADATA_PREFIX}.record", provenance["record"])
        digest = hashlib.sha256(provenance["record"].encode("utf-8")).hexdigest()
        writer.add_string(f"{METADATA_PREFIX}.record_sha256", digest)
    if "model_card" in provenance:
        writer.add_string(f"{METADATA_PREFIX}.model_card", provenance["model_card"])


# --------------------------------------------------------------------------- tensors
def _tensor_name(kind: gguf.MODEL_TENSOR, layer: Optional[int] = None) -> str:
    name = gguf.TENSOR_NAMES[kind]
    return (name if layer is None else name.format(bid=layer)) + ".weight"


def permute_for_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Q/K rows from transformers' rotate-half order to llama.cpp's interleaved pairs, head by head (the permutation
    llama.cpp's converter applies to Llama models)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def llama3_rope_factors(rope: dict[str, Any], config, head_dim: int) -> torch.Tensor:
    """`[head_dim / 2]`: by how much llama.cpp divides each rotary frequency for Llama-3's rope scaling (the
    frequencies transformers' "llama3" rope computes)."""
    inverse = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope.get("original_max_position_embeddings") or config.max_position_embeddings
    wavelength = 2 * math.pi / inverse
    smooth = ((original / wavelength - low) / (high - low)).clamp(0, 1)
    factors = 1 / ((1 - smooth) / factor + smooth)  # 1 at high frequencies, `factor` at low ones
    return factors.float()


def _tensors(model: nn.Module, adapter: ArchitectureAdapter, layers: list[DeciLayer]) -> Iterator[tuple[str, Any]]:
    """`(GGUF name, tensor)` of every weight, Q/K permuted for llama.cpp's rotary embedding."""
    T = gguf.MODEL_TENSOR
    config = model.config
    layout = adapter.attention_layout(config)
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    yield _tensor_name(T.TOKEN_EMBD), embeddings
    yield _tensor_name(T.OUTPUT_NORM), adapter.final_norm(model).weight
    if head.data_ptr() != embeddings.data_ptr():  # untied: llama.cpp reuses token_embd when `output` is absent
        yield _tensor_name(T.OUTPUT), head
    rope = _rope_parameters(config)
    if rope["rope_type"] == "llama3":
        yield _tensor_name(T.ROPE_FREQS), llama3_rope_factors(rope, config, layout.head_dim)
    hidden = config.hidden_size
    for index, (layer, deci) in enumerate(zip(adapter.decoder_layers(model), layers)):
        attention_norm = getattr(layer, adapter.layer_layout.attention_norms[0])
        mlp_norm = getattr(layer, adapter.layer_layout.mlp_norms[0])
        if deci.zero_attention:
            yield _tensor_name(T.ATTN_NORM, index), torch.ones(hidden)
            yield _tensor_name(T.ATTN_OUT, index), torch.zeros(hidden, hidden)
        elif deci.kv_heads:
            attention = adapter.attention(layer)
            q, k, v = adapter.qkv_weights(attention)
            yield _tensor_name(T.ATTN_NORM, index), attention_norm.weight
            yield _tensor_name(T.ATTN_Q, index), permute_for_rope(q, deci.heads)
            yield _tensor_name(T.ATTN_K, index), permute_for_rope(k, deci.kv_heads)
            yield _tensor_name(T.ATTN_V, index), v
            yield _tensor_name(T.ATTN_OUT, index), attention.o_proj.weight
        if deci.zero_mlp:
            yield _tensor_name(T.FFN_NORM, index), torch.ones(hidden)
            for kind in (T.FFN_GATE, T.FFN_UP):
                yield _tensor_name(kind, index), torch.zeros(ZERO_MLP_WIDTH, hidden)
            yield _tensor_name(T.FFN_DOWN, index), torch.zeros(hidden, ZERO_MLP_WIDTH)
        elif deci.ffn_length:
            mlp = adapter.mlp(layer)
            gate, up = adapter.gate_up_weights(mlp)
            yield _tensor_name(T.FFN_NORM, index), mlp_norm.weight
            yield _tensor_name(T.FFN_GATE, index), gate
            yield _tensor_name(T.FFN_UP, index), up
            yield _tensor_name(T.FFN_DOWN, index), mlp.down_proj.weight


def _add_tensor(writer: gguf.GGUFWriter, name: str, tensor: torch.Tensor, outtype: str) -> None:
    """One tensor in `outtype`: vectors stay f32 (as in llama.cpp's converter), matrices become f16 or q8_0 (f16
    where a row is not a whole number of q8_0 blocks)."""
    data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    if data.ndim == 1 or outtype == "f32":
        writer.add_tensor(name, data)
        return
    if outtype == "q8_0":
        try:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        except gguf.quants.QuantError:
            logger.info("%s: rows of %d values are not whole q8_0 blocks; written in f16", name, data.shape[-1])
        else:
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            return
    writer.add_tensor(name, data.astype(np.float16))
