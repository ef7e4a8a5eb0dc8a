"""GPTQ W4A16 of SmolLM2 by two tools, in one run: llmcompressor (the builder edgectl uses) against gptqmodel.

    python bench/gptq_tools.py [--threads 1 2] [--gptqmodel-venv ~/.cache/edgectl/gptqmodel-venv]
        [--store ~/.cache/edgectl/bench-vllm-store] [--out DIR]

The source is SmolLM2-135M-Instruct's Hugging Face folder that the GGUF -> Hugging Face conversion made in
``--store`` (``bench/vllm_cpu.py --smollm2-quality`` fills it). gptqmodel quantizes it with the recipe of edgectl's
GPTQ builder (edgectl/builders/gptq_oneshot.py): int4 weights, symmetric, groups of 64, dampening 0.01, no act-order
(desc_act off, act_group_aware off), lm_head 16-bit, on the same calibration lines (edgectl/builders/data/
calibration.txt, one sample a line, each cut at 128 tokens), once per ``--threads`` value, timed. The llmcompressor
column is the GPTQ artifact of the same source in ``--store`` (its build time is the one recorded in
docs/benchmarks.md; ``--rebuild-llmcompressor`` times a fresh build in this run instead). Both folders are then
measured by the project's evaluator (edgectl.builders.quality.compare on edgectl-quality-text-v1, the source's
logits by transformers in the vLLM venv, as measure_hf does): top-1 agreement, KL divergence, perplexity. gptqmodel's
folder is evaluated in its own venv (transformers 5.19 in the vLLM venv cannot load the GPTQ format without
gptqmodel), on the source's tokens. Finally the vLLM venv's vLLM is asked whether it would load gptqmodel's format
(its quantization config through vLLM's own GPTQ config classes and CPU kernel check).

gptqmodel needs a venv of its own (it pins torch>=2.14.1 and transformers>=5.20.2, vLLM 0.32 pins torch 2.13.0 and
transformers<=5.19): ``python3 -m venv ~/.cache/edgectl/gptqmodel-venv && .../bin/pip install gptqmodel==7.7.0``.
Prints one JSON object with a "verdict" line. Network: none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "edgectl" / "builders" / "data" / "calibration.txt"
SCRIPT = str(Path(__file__).resolve())
ONESHOT = REPO / "edgectl" / "builders" / "gptq_oneshot.py"
MAX_CALIBRATION_TOKENS = 128  # gptq_oneshot.MAX_CALIBRATION_TOKENS
GPTQMODEL_RECIPE = {"bits": 4, "group_size": 64, "sym": True, "desc_act": False, "act_group_aware": False,
                    "damp_percent": 0.01}

# --- worker: runs inside the gptqmodel venv (imports nothing of edgectl) ----------------------------------------


def worker_quantize(source: str, out: str, calibration: str, threads: int) -> None:
    import torch
    from gptqmodel import GPTQConfig, GPTQModel
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with open(calibration, encoding="utf-8") as f:
        lines = [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    samples = []
    for line in lines:
        ids = tokenizer(line, truncation=True, max_length=MAX_CALIBRATION_TOKENS)["input_ids"]
        samples.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    config = GPTQConfig(**GPTQMODEL_RECIPE)
    model = GPTQModel.load(source, config, device="cpu", dtype=torch.float32)
    model.quantize(samples, batch_size=1, calibration_data_min_length=1, calibration_sort=None)
    model.save(out)


def worker_logits(model_dir: str, tokens_file: str, out: str, threads: int) -> None:
    """Logits of a gptqmodel folder (by gptqmodel's CPU kernels) or of an unquantized one (by plain transformers, the
    evaluator-drift check) over the tokens in ``tokens_file``."""
    import numpy as np
    import torch
    from gptqmodel import GPTQModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        quantized = "quantization_config" in json.load(f)
    if quantized:
        model = GPTQModel.load(model_dir, device="cpu", dtype=torch.float32).model
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tokens = np.load(tokens_file).astype(np.int64).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
    np.save(out, logits)


def worker_versions() -> None:
    from importlib import metadata

    json.dump({d: metadata.version(d) for d in ("gptqmodel", "torch", "transformers")}, sys.stdout)


# --- driver: runs with edgectl on the path --------------------------------------------------------------------


# gptqmodel 7.7 sizes its CPU worker pool as (CPUs + 1) // 2 and then asks for a model-loader pool of 2 inside it:
# on a 2-CPU machine GPTQModel.load raises "Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only
# has 1". Its environment override GPTQMODEL_CPU_WORKERS (gptqmodel/__init__.py) sets the pool; 2 is the least
# that loads.
# No PYTHONPATH (edgectl's own is for the driver), nothing fetched from the Hub.
GPTQMODEL_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1",
                 "TRANSFORMERS_OFFLINE": "1", "GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2")}


def run(argv: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def vllm_accepts(folder: Path, vllm_python: str) -> str:
    """What the vLLM venv's vLLM makes of ``folder``'s quantization config: the method it would pick and whether its
    CPU kernels support the weight type, or the error."""
    check = (
        "import json,sys\n"
        "from vllm.model_executor.layers.quantization.auto_gptq import AutoGPTQConfig\n"
        "from vllm.model_executor.layers.quantization.utils.marlin_utils import query_marlin_supported_quant_types\n"
        "cfg=json.load(open(sys.argv[1]))['quantization_config']\n"
        "method=AutoGPTQConfig.override_quantization_method(cfg, None)\n"
        "c=AutoGPTQConfig.from_config(cfg)\n"
        "ok=c.quant_type in query_marlin_supported_quant_types(has_zp=False)\n"
        "print(f'{method}: {c!r}; CPU kernel for {c.quant_type}: {ok}')\n")
    from edgectl.builders.gptq import worker_env

    done = subprocess.run([vllm_python, "-c", check, str(folder / "config.json")], check=False,
                          capture_output=True, text=True, env=worker_env())
    return done.stdout.strip() if done.returncode == 0 else f"error: {done.stderr.strip()[-600:]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="worker")
    q = sub.add_parser("worker-quantize")
    q.add_argument("source")
    q.add_argument("out")
    q.add_argument("--threads", type=int, default=1)
    g = sub.add_parser("worker-logits")
    g.add_argument("model")
    g.add_argument("tokens")
    g.add_argument("out")
    g.add_argument("--threads", type=int, default=1)
    sub.add_parser("worker-versions")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gptqmodel-venv", default="~/.cache/edgectl/gptqmodel-venv")
    parser.add_argument("--store", default="~/.cache/edgectl/bench-vllm-store")
    parser.add_argument("--out", help="folder for gptqmodel's outputs (default: a temporary one)")
    parser.add_argument("--rebuild-llmcompressor", action="store_true",
                        help="time fresh llmcompressor GPTQ builds (each --threads value) instead of reading the "
                             "stored artifact")
    args = parser.parse_args()
    if args.worker == "worker-quantize":
        return worker_quantize(args.source, args.out, str(CALIBRATION), args.threads)
    if args.worker == "worker-logits":
        return worker_logits(args.model, args.tokens, args.out, args.threads)
    if args.worker == "worker-versions":
        return worker_versions()

    sys.path[:0] = [str(REPO), str(REPO / "agent")]
    import numpy as np
    from edgectl_agent.runtimes.vllm import venv_python

    from edgectl.builders.gptq import _venv_versions, logits_argv, worker_env
    from edgectl.builders.quality import MAX_TOKENS, QUALITY_TEXT, compare

    store = Path(args.store).expanduser()
    converted = sorted((store / "converted").iterdir())
    if len(converted) != 1:
        sys.exit(f"bench/gptq_tools.py: expected one converted SmolLM2 folder in {store / 'converted'}, found "
                 f"{len(converted)}; run `python bench/vllm_cpu.py --smollm2-quality --store {store}` first")
    source = converted[0]
    gptq_python = str(Path(args.gptqmodel_venv).expanduser() / "bin" / "python")
    if not Path(gptq_python).exists():
        sys.exit(f"bench/gptq_tools.py: no gptqmodel venv at {args.gptqmodel_venv}; make it with `python3 -m venv "
                 f"{args.gptqmodel_venv} && {args.gptqmodel_venv}/bin/pip install gptqmodel==7.7.0`")
    vllm_python = str(venv_python())
    versions = subprocess.run([gptq_python, SCRIPT, "worker-versions"], check=False, capture_output=True, text=True,
                              env=GPTQMODEL_ENV).stdout
    result: dict = {"load_before": os.getloadavg()[0], "source": str(source), "recipe": GPTQMODEL_RECIPE,
                    "gptqmodel_venv": json.loads(versions or "{}"),
                    "llmcompressor_venv": _venv_versions(vllm_python)}
    # gptqmodel writes a logs/ folder into its working directory: its workers run in out_dir
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="gptq-tools-")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gptq-tools-eval-") as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(QUALITY_TEXT, encoding="utf-8")
        src = Path(tmp) / "source.npy"
        tokens = Path(str(src) + ".tokens.npy")
        run(logits_argv(Path(vllm_python), source, text, src, tokens=None, max_tokens=MAX_TOKENS, threads=2),
            "the source's logits (vLLM venv)", env=worker_env())
        source_logits, token_ids = np.load(src), np.load(tokens)

        def quality(artifact_logits: np.ndarray, tool: str) -> dict:
            q = compare(source_logits, artifact_logits, token_ids, tool=tool)
            return {"top1": round(q.top1_agreement, 4), "kl": round(q.kl_divergence, 4),
                    "ppl": round(q.perplexity, 2), "source_ppl": round(q.source_perplexity, 2),
                    "tokens": q.text_tokens}

        # llmcompressor: the stored GPTQ artifact of this source (or a fresh build)
        index = [json.loads(p.read_text()) for p in (store / "index").glob("*.json")]
        stored = [e for e in index if e["format"] == "gptq" and "llmcompressor-gptq" in e.get("tool_version", "")]
        llmc: dict = {}
        if args.rebuild_llmcompressor or not stored:
            from edgectl.builders.gptq import quantize_argv
            for threads in args.threads:
                folder = out_dir / f"llmcompressor-{threads}t"
                llmc[f"build_s_{threads}_threads"] = round(run(
                    quantize_argv(Path(vllm_python), source, folder, bits=4, group=64, calibration=CALIBRATION,
                                  threads=threads), f"llmcompressor's GPTQ ({threads} threads)", env=worker_env()), 1)
        else:
            folder = store / "trees" / stored[0]["digest"].split(":", 1)[1]
            llmc["build_s"] = "stored (163 s, 2 threads, idle: docs/benchmarks.md)"
        art = Path(tmp) / "llmc.npy"
        run(logits_argv(Path(vllm_python), folder, text, art, tokens=tokens, max_tokens=MAX_TOKENS, threads=2),
            "llmcompressor artifact's logits", env=worker_env())
        llmc.update(quality(np.load(art), "transformers (vLLM venv)"), size_bytes=folder_bytes(folder))
        result["llmcompressor"] = llmc

        gm: dict = {}
        for threads in args.threads:
            folder = out_dir / f"gptqmodel-{threads}t"
            gm[f"build_s_{threads}_threads"] = round(run(
                [gptq_python, SCRIPT, "worker-quantize", str(source), str(folder), "--threads", str(threads)],
                f"gptqmodel's GPTQ ({threads} threads)", env=GPTQMODEL_ENV, cwd=out_dir), 1)
        art = Path(tmp) / "gm.npy"
        run([gptq_python, SCRIPT, "worker-logits", str(folder), str(tokens), str(art), "--threads", "2"],
            "gptqmodel artifact's logits", env=GPTQMODEL_ENV, cwd=out_dir)
        gm.update(quality(np.load(art), "gptqmodel + transformers (gptqmodel venv)"), size_bytes=folder_bytes(folder),
                  vllm_cpu_format=vllm_accepts(folder, vllm_python))
        result["gptqmodel"] = gm
        # The two artifacts are read by different stacks (transformers 5.19 decompressing compressed-tensors; gptqmodel
        # 7.7's CPU kernels on transformers 5.25, torch 2.14.1): the source read by the gptqmodel venv's transformers
        # against the vLLM venv's reading bounds how much of the difference is the evaluator's.
        drift = Path(tmp) / "drift.npy"
        run([gptq_python, SCRIPT, "worker-logits", str(source), str(tokens), str(drift), "--threads", "2"],
            "the source's logits (gptqmodel venv)", env=GPTQMODEL_ENV, cwd=out_dir)
        result["evaluator_drift"] = quality(np.load(drift), "transformers (gptqmodel venv)")
    result["load_after"] = os.getloadavg()[0]
    closer = "gptqmodel" if gm["kl"] < llmc["kl"] else "llmcompressor"

    def builds(record: dict) -> str:
        return ", ".join(f"{k.split('_')[2]} thread(s) {v} s" for k, v in record.items() if k.startswith("build_s_")
                         and isinstance(v, float)) or "stored"

    ratios = [f"{t} thread(s) gptqmodel/llmcompressor {gm[k] / llmc[k]:.2f}" for t in args.threads
              if isinstance(llmc.get(k := f"build_s_{t}_threads"), float)]
    result["verdict"] = (f"SmolLM2 GPTQ W4A16 g64 vs its Q4_1 source: llmcompressor KL {llmc['kl']:.4f} top-1 "
                         f"{llmc['top1']:.3f}, gptqmodel KL {gm['kl']:.4f} top-1 {gm['top1']:.3f} (evaluator drift KL "
                         f"{result['evaluator_drift']['kl']:.4f}): {closer} is closer (KL ratio "
                         f"gptqmodel/llmcompressor {gm['kl'] / llmc['kl']:.2f}); build s: llmcompressor "
                         f"{builds(llmc)}; gptqmodel {builds(gm)}"
                         + (f"; same-run time ratio {', '.join(ratios)}" if ratios else "")
                         + f"; keep {closer if closer == 'llmcompressor' else 'gptqmodel (switch the builder)'}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
