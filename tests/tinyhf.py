"""A tiny Hugging Face llama model directory for tests: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (with a ChatML chat template) and generation_config.json.

Random weights, real shapes: every converter (llama.cpp's convert-hf-to-gguf, optimum-intel, the onnxruntime-genai
model builder, mlx_lm) accepts it, and every runtime runs it. Hidden 256 and FF 512 keep each matrix row a multiple
of 256 (K-quants) and of 128 (INT4 group size). About 2.5 MB in FP32; the same seed writes the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.tinymodels import CHATML_TEMPLATE, TINY_FF, TINY_HEADS, TINY_HIDDEN, TINY_KV_HEADS, TINY_LAYERS, _WORDS

HF_VOCAB = 512
HF_CONTEXT = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tokenizer_json() -> dict:
    """A byte-level BPE tokenizer (GPT-2 style, like SmolLM2's): 256 byte tokens, the specials, whole words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bytes_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {}
    for tok in SPECIALS:
        vocab[tok] = len(vocab)
    for ch in sorted(bytes_alphabet):
        vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:  # merge each word left to right: "Ġ" + word becomes one token
        piece = "Ġ"
        for ch in word:
            if len(vocab) >= HF_VOCAB:
                break
            merged = piece + ch
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((piece, ch))
            piece = merged
    while len(vocab) < HF_VOCAB:  # pad to the embedding size with unreachable tokens
        vocab[f"<|unused{len(vocab)}|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return json.loads(tok.to_str())


def write_tiny_hf_llama(folder: Path, *, seed: int = 0, dtype: str = "float32") -> Path:
    """Write the model directory into ``folder`` (created) and return it."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    head_dim = TINY_HIDDEN // TINY_HEADS
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": TINY_HIDDEN,
        "intermediate_size": TINY_FF, "num_hidden_layers": TINY_LAYERS, "num_attention_heads": TINY_HEADS,
        "num_key_value_heads": TINY_KV_HEADS, "head_dim": head_dim, "vocab_size": HF_VOCAB,
        "max_position_embeddings": HF_CONTEXT, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": dtype,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
    rng = np.random.default_rng(seed)
    np_dtype = np.float16 if dtype == "float16" else np.float32

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np_dtype)

    kv = TINY_KV_HEADS * head_dim
    tensors = {"model.embed_tokens.weight": w(HF_VOCAB, TINY_HIDDEN), "lm_head.weight": w(HF_VOCAB, TINY_HIDDEN),
               "model.norm.weight": np.ones(TINY_HIDDEN, np_dtype)}
    for i in range(TINY_LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": w(TINY_HIDDEN, TINY_HIDDEN),
            p + "self_attn.k_proj.weight": w(kv, TINY_HIDDEN),
            p + "self_attn.v_proj.weight": w(kv, TINY_HIDDEN),
            p + "self_attn.o_proj.weight": w(TINY_HIDDEN, TINY_HIDDEN),
            p + "mlp.gate_proj.weight": w(TINY_FF, TINY_HIDDEN),
            p + "mlp.up_proj.weight": w(TINY_FF, TINY_HIDDEN),
            p + "mlp.down_proj.weight": w(TINY_HIDDEN, TINY_FF),
            p + "input_layernorm.weight": np.ones(TINY_HIDDEN, np_dtype),
            p + "post_attention_layernorm.weight": np.ones(TINY_HIDDEN, np_dtype),
        }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 32}, indent=2))
    (folder / "tokenizer.json").write_text(json.dumps(_tokenizer_json()))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": HF_CONTEXT,
        "chat_template": CHATML_TEMPLATE, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>"}))
    return folder
