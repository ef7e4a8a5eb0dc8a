"""The part of the GPTQ builder that runs inside the vLLM venv (transformers 5 + llmcompressor), as a script:

    <venv>/bin/python gptq_oneshot.py quantize SOURCE OUT --bits 4 --group-size 64 --calibration FILE --threads N
        [--algorithm gptq|awq]
    <venv>/bin/python gptq_oneshot.py logits MODEL TEXT_FILE OUT.npy [--tokens TOKENS.npy]
    <venv>/bin/python gptq_oneshot.py versions

It imports nothing of edgectl (edgectl's own Python pins transformers 4.x, which llmcompressor and vLLM do not
accept): edgectl.builders.gptq builds its argv and reads what it writes. ``quantize`` is llmcompressor's one-shot
GPTQ (weights int``bits`` symmetric, one scale per ``group-size`` inputs, activations 16-bit: W4A16) on the
calibration lines, saved in the compressed-tensors format that vLLM loads; ``--algorithm awq``: llmcompressor's
one-shot AWQ instead (asymmetric groups, the same output format; the calibration lines concatenated into blocks of
AWQ_BLOCK_TOKENS, see calibration_blocks). ``logits`` evaluates a model folder on a
text with transformers on the CPU (a compressed-tensors folder is decompressed on load) for the quality record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Run as a script, its folder (edgectl/builders) would come first on sys.path, and its mlx.py / onnx.py would
# shadow the libraries of those names that transformers probes for.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

TOOLS = ("llmcompressor", "compressed-tensors", "transformers", "torch")
MAX_CALIBRATION_TOKENS = 128  # per sample: the lines are short; GPTQ's Hessians need samples, not long ones
# AWQ's smoothing search runs each layer's attention / MLP once per grid point over every calibration sample, so its
# cost is n_grid x the number of forward calls. 320 lines of ~13 tokens are 320 skinny matmuls per call (a CPU's
# worst case: 20-50 s a layer for SmolLM2, most of it in Linear.forward); the same tokens as 9 blocks of 512, the way
# AWQ's reference code (llm-awq / AutoAWQ get_calib_dataset) cuts its calibration text, are 9 calls per grid point.
AWQ_BLOCK_TOKENS = 512
AWQ_N_GRID = 20  # the AWQ paper's scale grid (also llmcompressor's default), stated so the recipe id pins it


def calibration_lines(path: str) -> list[str]:
    """One sample per non-empty line; a literal backslash-n inside a line is a newline (code samples)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]


def calibration_blocks(samples: list[list[int]], block_tokens: int) -> list[list[int]]:
    """The token ids of all ``samples`` end to end, cut into blocks of ``block_tokens`` (the last one shorter if the
    total is not a multiple): llm-awq's calibration procedure, which keeps every token and needs no padding."""
    flat = [token for sample in samples for token in sample]
    return [flat[i:i + block_tokens] for i in range(0, len(flat), block_tokens)]


def one_shot_recipe(algorithm: str, bits: int, group_size: int):
    """llmcompressor's modifier for ``algorithm``: both quantize every Linear but lm_head to int``bits`` weights in
    groups of ``group_size`` inputs. GPTQ: symmetric, error-compensating rounding (dampening 0.01). AWQ: asymmetric
    (a zero point per group, as AutoAWQ's W4A16), each layer's inputs scaled by its activation-aware search first."""
    weights = {"num_bits": bits, "type": "int", "symmetric": algorithm == "gptq", "strategy": "group",
               "group_size": group_size}
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    if algorithm == "awq":
        import torch
        from llmcompressor.modifiers.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.accelerator.is_available():
            # llmcompressor 0.14's AWQ pins its cached activations for faster host-to-GPU copies before each
            # smoothing search (IntermediatesCache.pin_memory), and pinning raises "Cannot access accelerator device
            # when none is available" on a CPU-only torch. There is nothing to copy to: leave them unpinned.
            IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None

        return AWQModifier(config_groups=groups, ignore=["lm_head"], n_grid=AWQ_N_GRID)
    from llmcompressor.modifiers.quantization import GPTQModifier

    return GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=0.01)


def quantize(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.source)
    model = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32)
    lines = calibration_lines(args.calibration)
    samples = [tokenizer(line, truncation=True, max_length=MAX_CALIBRATION_TOKENS)["input_ids"] for line in lines]
    max_length = MAX_CALIBRATION_TOKENS
    if args.algorithm == "awq":
        max_length = min(AWQ_BLOCK_TOKENS, getattr(model.config, "max_position_embeddings", None) or AWQ_BLOCK_TOKENS)
        samples = calibration_blocks(samples, max_length)
    dataset = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    recipe = one_shot_recipe(args.algorithm, args.bits, args.group_size)
    oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=max_length,
            num_calibration_samples=len(samples))
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)


def logits(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    if args.tokens:
        tokens = np.load(args.tokens).astype(np.int64).tolist()
    else:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        tokens = tokenizer(text)["input_ids"][: args.max_tokens]
        bos = tokenizer.bos_token_id
        if bos is not None and (not tokens or tokens[0] != bos):
            tokens = [bos] + tokens[: args.max_tokens - 1]
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0].float().numpy()
    np.save(args.out, out)
    np.save(args.out + ".tokens.npy", np.array(tokens, dtype=np.int64))


def versions(_: argparse.Namespace) -> None:
    from importlib import metadata

    found = {}
    for dist in TOOLS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    json.dump(found, sys.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gptq_oneshot")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("source")
    q.add_argument("out")
    q.add_argument("--bits", type=int, required=True)
    q.add_argument("--group-size", type=int, required=True)
    q.add_argument("--calibration", required=True)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--algorithm", choices=("gptq", "awq"), default="gptq")
    q.set_defaults(run=quantize)
    g = sub.add_parser("logits")
    g.add_argument("model")
    g.add_argument("text")
    g.add_argument("out")
    g.add_argument("--tokens")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--threads", type=int, default=1)
    g.set_defaults(run=logits)
    v = sub.add_parser("versions")
    v.set_defaults(run=versions)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
