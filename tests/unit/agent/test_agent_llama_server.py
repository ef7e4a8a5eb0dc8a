"""The llamacpp runtime's llama-server engine, its pure parts: which engine a deployment gets, llama-server's argv,
the translation of its logprobs and /slots into the agent's shapes. The real server is exercised end to end in
tests/integration/test_llama_server_engine.py (and test_openai_features.py runs under both engines)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes import llama_server, llama_server_model
from edgectl_agent.runtimes.llamacpp import llama_kwargs


def desired(**kw) -> DesiredDeployment:
    return DesiredDeployment(name="m", runtime="llamacpp", context_length=kw.pop("context_length", 512),
                             parallel=kw.pop("parallel", 4), artifact=ArtifactRef(
                                 digest="sha256:" + "0" * 64, format="gguf", quant="Q4_K_M", size_bytes=1, model="m"),
                             **kw)


@pytest.fixture
def binary(tmp_path: Path, monkeypatch) -> Path:
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\necho 'version: 0.6.0-dev (build 0, commit unknown)'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "libggml-base.so.0.26.0").write_text("")
    monkeypatch.setenv(llama_server.BINARY_ENV, str(exe))
    monkeypatch.delenv(llama_server.ENGINE_ENV, raising=False)
    return exe


def test_auto_picks_llama_server_for_concurrent_deployments_where_the_device_has_one(binary, monkeypatch) -> None:
    assert llama_server.choose_engine(desired(parallel=4), one_call=False) == "llama-server"
    assert llama_server.choose_engine(desired(parallel=1), one_call=False) == "in-process"
    assert llama_server.choose_engine(desired(parallel=4), one_call=True) == "in-process"  # embeddings, chat_format
    assert llama_server.choose_engine(desired(parallel=1, runtime_options={"engine": "llama-server"}),
                                      one_call=False) == "llama-server"
    assert llama_server.choose_engine(desired(parallel=4, runtime_options={"engine": "in-process"}),
                                      one_call=False) == "in-process"
    monkeypatch.setenv(llama_server.ENGINE_ENV, "in-process")  # what auto means on this device
    assert llama_server.choose_engine(desired(parallel=4), one_call=False) == "in-process"
    monkeypatch.setenv(llama_server.BINARY_ENV, str(binary.parent / "missing"))
    monkeypatch.delenv(llama_server.ENGINE_ENV)
    assert llama_server.choose_engine(desired(parallel=4), one_call=False) == "in-process"


def test_an_unknown_engine_or_a_missing_binary_is_an_error_naming_the_fix(binary, monkeypatch) -> None:
    with pytest.raises(RuntimeFailure, match="runtime_options.engine is 'fast'") as e:
        llama_server.choose_engine(desired(runtime_options={"engine": "fast"}), one_call=False)
    assert "auto, in-process, llama-server" in e.value.hint
    with pytest.raises(RuntimeFailure, match="chat_format"):
        llama_server.choose_engine(desired(runtime_options={"engine": "llama-server", "chat_format": "chatml"}),
                                   one_call=True)
    monkeypatch.setenv(llama_server.BINARY_ENV, str(binary.parent / "missing"))
    with pytest.raises(RuntimeFailure, match="no llama-server") as e:
        llama_server.binary_or_fail()
    assert e.value.status == 422 and "scripts/setup.sh llama-server" in e.value.hint


def test_argv_binds_loopback_behind_a_key_and_gives_every_slot_its_context(tmp_path: Path) -> None:
    argv = llama_server.server_argv(Path("/b/llama-server"), Path("/m.gguf"),
                                    desired(parallel=4, context_length=1024, threads=3), 4321, tmp_path / "key")
    flags = dict(zip(argv, argv[1:]))
    assert argv[:3] == ["/b/llama-server", "-m", "/m.gguf"]
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "4321"
    assert flags["--api-key-file"] == str(tmp_path / "key")
    assert flags["-c"] == "4096" and flags["--parallel"] == "4" and "--no-kv-unified" in argv  # 1024 per slot
    assert flags["-t"] == "3" and flags["-tb"] == "3"
    assert flags["-fa"] == "off" and flags["-cram"] == "0" and "--metrics" in argv and "--embeddings" not in argv
    argv = llama_server.server_argv(Path("/b"), Path("/m"), desired(runtime_options={
        "engine": "llama-server", "flash_attn": True, "type_k": 8, "n_threads_batch": 2, "embedding": True,
        "pooling_type": 1, "use_mmap": False}), 1, tmp_path / "key")
    flags = dict(zip(argv, argv[1:]))
    assert flags["-fa"] == "on" and flags["-ctk"] == "q8_0" and flags["-tb"] == "2" and flags["--pooling"] == "mean"
    assert "--embeddings" in argv and "--no-mmap" in argv
    with pytest.raises(RuntimeFailure, match="offload_kqv") as e:
        llama_server.server_argv(Path("/b"), Path("/m"), desired(runtime_options={"offload_kqv": True}), 1,
                                 tmp_path / "key")
    assert "engine: in-process" in e.value.hint


def test_engine_is_a_runtime_option_the_in_process_engine_ignores() -> None:
    assert "engine" not in llama_kwargs(desired(runtime_options={"engine": "in-process"}))


def test_version_is_the_binarys_and_its_ggml(binary) -> None:
    assert llama_server.installed_version() == "0.6.0-dev (ggml 0.26.0)"


def test_facts_report_llama_server_only_where_the_device_has_one(binary, tmp_path, monkeypatch) -> None:
    from edgectl_agent.facts import collect_facts

    assert collect_facts(tmp_path).llama_server == "0.6.0-dev (ggml 0.26.0)"
    monkeypatch.setenv(llama_server.BINARY_ENV, str(tmp_path / "missing"))
    assert collect_facts(tmp_path).llama_server is None


def test_logprobs_come_back_in_the_agents_shapes() -> None:
    upstream = {"content": [
        {"id": 5, "token": " a", "logprob": -0.5, "bytes": [32, 97],
         "top_logprobs": [{"id": 5, "token": " a", "logprob": -0.5, "bytes": [32, 97]},
                          {"id": 6, "token": " b", "logprob": -1.5, "bytes": [32, 98]}]},
        {"id": 7, "token": "cd", "logprob": -0.25, "bytes": [99, 100],
         "top_logprobs": [{"id": 7, "token": "cd", "logprob": -0.25, "bytes": [99, 100]}]}]}
    chat = llama_server_model.chat_logprobs(upstream)
    assert chat["content"][0] == {"token": " a", "logprob": -0.5, "bytes": [32, 97], "top_logprobs": [
        {"token": " a", "logprob": -0.5, "bytes": [32, 97]}, {"token": " b", "logprob": -1.5, "bytes": [32, 98]}]}
    legacy = llama_server_model.completion_logprobs(upstream, 3, 1)
    assert legacy == {"tokens": [" a", "cd"], "token_logprobs": [-0.5, -0.25],
                      "top_logprobs": [{" a": -0.5}, {"cd": -0.25}], "text_offset": [3, 5]}
    assert llama_server_model.completion_logprobs(upstream, 0, 0)["top_logprobs"] == [{}, {}]
    assert llama_server_model.chat_logprobs(None) is None


def test_the_manifest_schema_refuses_an_unknown_engine_naming_the_choices() -> None:
    from pydantic import ValidationError

    from edgectl.spec.deployment import DeploymentSpec

    spec = {"model": "m", "selector": {"labels": {"a": "b"}}}
    assert DeploymentSpec.model_validate({**spec, "runtime_options": {"engine": "llama-server"}})
    with pytest.raises(ValidationError, match="engine is 'fast': use one of auto, in-process, llama-server"):
        DeploymentSpec.model_validate({**spec, "runtime_options": {"engine": "fast"}})


def test_temperature_zero_asks_llama_server_for_greedy_decoding_not_its_whole_sampler_chain() -> None:
    from edgectl_agent.runtimes.base import GenerationParams

    model = llama_server_model.LlamaServerModel.__new__(llama_server_model.LlamaServerModel)
    model.name = "m"
    greedy = model._request(GenerationParams(temperature=0, max_tokens=8), True, chat=False)
    assert greedy["samplers"] == ["top_k"] and greedy["top_k"] == 1 and greedy["temperature"] == 0
    sampled = model._request(GenerationParams(temperature=0.7, max_tokens=8), True, chat=True)
    assert "samplers" not in sampled and "top_k" not in sampled and sampled["temperature"] == 0.7


def test_priority_is_llama_servers_prio_by_name_and_a_bad_one_names_the_choices(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edgectl.spec.deployment import DeploymentSpec

    argv = llama_server.server_argv(Path("/b"), Path("/m"), desired(runtime_options={"priority": "high"}), 1,
                                    tmp_path / "key")
    assert dict(zip(argv, argv[1:]))["--prio"] == "2"
    assert "--prio" not in llama_server.server_argv(Path("/b"), Path("/m"), desired(), 1, tmp_path / "key")
    with pytest.raises(RuntimeFailure, match="runtime_options.priority is 'max'") as e:
        llama_server.server_argv(Path("/b"), Path("/m"), desired(runtime_options={"priority": "max"}), 1,
                                 tmp_path / "key")
    assert "low, normal, medium, high, realtime" in e.value.hint
    assert "priority" not in llama_kwargs(desired(runtime_options={"priority": "high"}))  # not a Llama() argument
    spec = {"model": "m", "selector": {"labels": {"a": "b"}}}
    with pytest.raises(ValidationError, match="priority is 'max': use one of low, normal, medium, high, realtime"):
        DeploymentSpec.model_validate({**spec, "runtime_options": {"priority": "max"}})
