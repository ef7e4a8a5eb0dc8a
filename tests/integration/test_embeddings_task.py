"""A Model with task: embedding, end to end for real: `edgectl apply` plans it onto llama.cpp in embedding mode,
builds (ships) the GGUF, activates it on a local agent (smoke-tested and gated with an embedding request), and the
real `openai` client gets vectors from /v1/embeddings (the Ollama client's /api/embed is the same model)."""

from __future__ import annotations

import json
import math

import pytest

from tests.integration.test_apply_local import edgectl, free_port, home  # noqa: F401 - home is a fixture
from tests.tinymodels import embedding_manifest, write_tiny_llama_gguf

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")


def test_an_embedding_model_is_planned_built_gated_and_served(tmp_path, home):  # noqa: F811
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    gguf = write_tiny_llama_gguf(mdir / "embedder.gguf", seed=5)
    port = free_port()
    (mdir / "embed.yaml").write_text(embedding_manifest(gguf, port=port))

    plan = json.loads(edgectl("plan", str(mdir), "--json", env=home).stdout)
    (device,) = plan["devices"]
    (dep,) = device["deployments"]
    assert dep["chosen"]["runtime"] == "llamacpp", dep

    r = edgectl("apply", str(mdir), env=home)
    assert "health gate passed" in r.stdout + r.stderr, r.stdout

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    out = client.embeddings.create(model="embed", input=["hello world", "the capital of France"])
    assert [d.index for d in out.data] == [0, 1]
    a, b = (d.embedding for d in out.data)
    assert len(a) == len(b) == 256 and a != b and all(math.isfinite(x) for x in a)
    again = client.embeddings.create(model="embed", input="hello world").data[0].embedding
    assert max(abs(x - y) for x, y in zip(again, a)) < 1e-4  # the same text, the same vector
    with pytest.raises(openai.BadRequestError) as e:  # an embedding model does not chat: a 400 naming why
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       logprobs=True)
    assert e.value.body["param"] == "logprobs"
