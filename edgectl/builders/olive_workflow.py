"""Run one Olive workflow: a Hugging Face folder -> an onnxruntime-genai folder for a CPU target.

    python -m edgectl.builders.olive_workflow versions
    python -m edgectl.builders.olive_workflow build SOURCE OUT --config WORKFLOW.json --work DIR

Run by edgectl.builders.olive in a child process whose path starts with the Olive overlay (``scripts/setup.sh olive``
installs olive-ai there, see edgectl.builders.olive for why it is not in the venv itself). ``build`` reads the
workflow that edgectl.builders.olive wrote (pure, unit-tested), runs it with ``olive.workflows.run`` and moves
Olive's output model folder to OUT. Olive's ModelBuilder pass calls the onnxruntime-genai model builder, which needs
the transformers-4 shims of edgectl.builders.onnx_genai_compat (applied here first). Prints JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TOOLS = ("olive-ai", "onnxruntime-genai", "onnxruntime", "transformers", "torch")


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for dist in TOOLS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    try:
        import olive.workflows  # noqa: F401  (installed but broken counts as missing)
    except Exception as e:  # noqa: BLE001
        found["olive-ai"] = None
        found["olive-import-error"] = f"{type(e).__name__}: {e}"
    return found


def model_folder(output_dir: Path) -> Path:
    """The folder holding genai_config.json that Olive wrote under ``output_dir`` (its layout moved between
    releases: ``model/`` in 0.13, the output folder itself or a per-pass folder in others)."""
    found = sorted(output_dir.rglob("genai_config.json"), key=lambda p: len(p.parts))
    if not found:
        raise SystemExit(f"Olive wrote no genai_config.json under {output_dir}: "
                         f"{sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob('*'))[:40]}")
    return found[0].parent


def skip_quantized_input_patch() -> None:
    """Olive 0.13's ModelBuilder pass patches onnxruntime-genai's loader of pre-quantized torch models (those an
    Olive GPTQ/RTN pass wrote) at a module path that onnxruntime-genai 0.18 moved (``models.quantized_model``), so
    every run fails on the import. edgectl's workflows feed the pass an unquantized Hugging Face folder, which that
    loader never sees: the patch is skipped."""
    from olive.passes.onnx.model_builder import ModelBuilder

    ModelBuilder.maybe_patch_quant = staticmethod(lambda: None)


def builder_option_strings(options: dict) -> list[str]:
    """Olive's keyword options as the model builder's KEY=VALUE strings (lists joined by '/', booleans lower case).
    Olive 0.13 names the weight options ``int4_block_size``, ``int4_algo_config`` ...; onnxruntime-genai 0.18 calls
    that prefix a deprecated alias in its help but reads only the bare names, and ignores unknown keys silently:
    the prefix is dropped here, or every option would be lost."""
    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (list, tuple)):
            return "/".join(str(v) for v in value)
        return str(value)

    return [f"{key.removeprefix('int4_')}={text(value)}" for key, value in options.items()]


def prepare_builder_options() -> None:
    """onnxruntime-genai 0.18's ``create_model`` expects options already passed through ``parse_extra_options``
    (which loads the Hugging Face config into them); Olive 0.13 calls it with raw keyword options. The wrapper
    does that step when Olive did not."""
    from onnxruntime_genai.models import builder

    create_model = builder.create_model
    if getattr(create_model, "_edgectl_wrapped", False):
        return

    def wrapped(model_name, input_path, output_dir, precision, execution_provider, cache_dir, **options):
        if "hf_details" not in options:
            options = builder.parse_extra_options(model_name, input_path, output_dir, precision, execution_provider,
                                                  cache_dir, builder_option_strings(options))
        return create_model(model_name, input_path, output_dir, precision, execution_provider, cache_dir, **options)

    wrapped._edgectl_wrapped = True
    builder.create_model = wrapped


def build(source: Path, out: Path, config_path: Path, work: Path) -> dict:
    from edgectl.builders.onnx_genai_compat import patch_transformers

    patch_transformers()
    skip_quantized_input_patch()
    prepare_builder_options()
    from olive.workflows import run as olive_run

    workflow = json.loads(config_path.read_text(encoding="utf-8"))
    workflow["input_model"]["model_path"] = str(source)
    workflow["output_dir"] = str(work / "output")
    workflow["cache_dir"] = str(work / "cache")
    olive_run(workflow)
    folder = model_folder(work / "output")
    shutil.move(str(folder), str(out))
    return {"files": sorted(p.name for p in out.iterdir())}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="olive_workflow")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions")
    b = sub.add_parser("build")
    b.add_argument("source", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--config", type=Path, required=True)
    b.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "versions":
        result = versions()
    else:
        result = build(args.source, args.out, args.config, args.work)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
