"""llama.cpp prefills with the deployment's threads (n_threads_batch), on both of the agent's llama.cpp paths, as
edgectl's speed estimate assumes (edgectl.plan.speed.prefill_threads): real llama.cpp on the tiny GGUF."""

from __future__ import annotations

from pathlib import Path

from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.runtimes.llamacpp import LlamaCppRuntime

from tests.tinymodels import write_tiny_llama_gguf


def _desired(path: Path, **options) -> DesiredDeployment:
    return DesiredDeployment(name="m", runtime="llamacpp", context_length=128, threads=1, runtime_options=options,
                             artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="gguf", quant="F32",
                                                  size_bytes=path.stat().st_size, model="tiny"))


def test_both_llamacpp_paths_prefill_with_the_deployments_threads(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    one_call = LlamaCppRuntime().load(path, _desired(path, embedding=True))  # llama-cpp-python's Llama
    try:
        assert one_call._llm.context_params.n_threads_batch == 1
    finally:
        one_call.close()
    batched = LlamaCppRuntime().load(path, _desired(path))  # the continuous-batching engine
    try:
        import llama_cpp

        assert llama_cpp.llama_n_threads_batch(batched.engine._ctx.ctx) == 1
    finally:
        batched.close()
    told = LlamaCppRuntime().load(path, _desired(path, embedding=True, n_threads_batch=2))  # the option still wins
    try:
        assert told._llm.context_params.n_threads_batch == 2
    finally:
        told.close()
