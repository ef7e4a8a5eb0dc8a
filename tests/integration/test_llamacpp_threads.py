"""Real llama.cpp (OpenMP build): concurrent requests from many server threads start no OpenMP team of their own.
llama.cpp keeps a team of n_threads threads per thread that calls it; the agent calls it from the model's one
thread (edgectl_agent.runtimes.llamacpp.ModelThread), so the process's native threads do not grow with the
number of threads serving requests (before, every worker thread added threads - 1 spinning OpenMP threads)."""

from __future__ import annotations

import os
import threading

import pytest
from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.llamacpp import LlamaCppRuntime

from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")

CALLERS = 6
THREADS = 3


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_callers_on_many_threads_share_the_model_threads_openmp_team(tmp_path):
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=1)
    desired = DesiredDeployment(name="tiny", threads=THREADS, context_length=256, artifact=ArtifactRef(
        digest="sha256:" + "a" * 64, format="gguf", quant="F32", size_bytes=path.stat().st_size, model="tiny"))
    model = LlamaCppRuntime().load(path, desired)
    params = GenerationParams(max_tokens=4, temperature=0.0)
    try:
        model.complete("hello world", params)  # the model thread's team exists from here
        before = native_threads()
        done = threading.Barrier(CALLERS + 1)
        failures: list[BaseException] = []

        def caller() -> None:
            try:
                streamed = list(model.complete("the capital of France is", params, stream=True))
                assert streamed and model.complete("hello", params)["choices"]
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                failures.append(e)
            done.wait(timeout=60)  # alive while the threads are counted: a team of its own would still exist

        workers = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for w in workers:
            w.start()
        while done.n_waiting < CALLERS and any(w.is_alive() for w in workers):
            threading.Event().wait(0.05)
        during = native_threads()
        done.wait(timeout=60)
        for w in workers:
            w.join()
        assert not failures, failures
        # The callers' own threads, and no more (each would otherwise bring THREADS - 1 OpenMP threads).
        assert during - before == CALLERS, (before, during)
    finally:
        model.close()
