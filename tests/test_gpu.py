"""The CUDA path of `traitscope capture`: compiled blocks, device transfers, device_map.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_gpu.py`.
Self-contained: a word-level tokenizer and a small random Gemma-2 are built in the test.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from traitscope import chat
from traitscope.capture_set import read_shards
from traitscope.cli import main
from traitscope.hooks import run_recorded
from traitscope.models import ModelSpec, load, prepare

DEVICE = os.environ.get("TRAITSCOPE_TEST_DEVICE", "cuda")  # "cpu" checks this file's logic locally
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEMPLATE = (
    "{% for m in messages %}<start> {{ m['role'] }} : {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<start> assistant : {% endif %}"
)
WORDS = (
    "the a how do i make bread tea cake sure here is help with that you are kind evil assistant user system"
)


@pytest.fixture(scope="module")
def gpu_manifest(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    vocab = {
        w: i for i, w in enumerate(["<pad>", "<unk>", "<start>", "<end>", ":", ",", "?", "."] + WORDS.split())
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<end>", unk_token="<unk>"
    )
    tok.chat_template = TEMPLATE
    config = Gemma2Config(
        vocab_size=len(vocab),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gemma")
    Gemma2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    spec = {"path": str(folder), "dtype": "float32"}
    return prepare(ModelSpec.from_config("gemma", spec), tmp_path_factory.mktemp("m") / "gemma")


@pytest.mark.parametrize("padding", ["left", "right"])
def test_compiled_gpu_capture_equals_each_prompt_alone(tmp_path, gpu_manifest, padding):
    prompts = pd.DataFrame(
        {
            "prompt_id": ["a", "b", "c"],
            "prompt": ["how do i make bread ?", "tea", "how do i make a cake with the kind assistant ?"],
            "system": ["you are kind .", "you are evil .", None],
            "prefill": ["sure , here is", "", "sure"],
        }
    )
    prompts.to_parquet(tmp_path / "p.parquet")
    out = tmp_path / "cap" / "capture.json"
    code = main(
        [
            "capture",
            "--model",
            str(gpu_manifest),
            "--prompts",
            str(tmp_path / "p.parquet"),
            "--out",
            str(out),
            "--layers",
            "1",
            "4",
            "--padding-side",
            padding,
            "--compile",
            "yes" if DEVICE == "cuda" else "no",
            "--storage-dtype",
            "float32",
            "--token-segments",
            "prefill",
            "--device",
            DEVICE,
        ]
    )
    assert code == 0
    model, tokenizer = load(gpu_manifest, device=DEVICE)
    ((shard_prompts, tokens, tensors),) = list(read_shards(out))
    rows = prompts.set_index("prompt_id")
    for r, pid in enumerate(shard_prompts["prompt_id"]):
        row = rows.loc[pid]
        system = row.system if isinstance(row.system, str) else None
        enc = chat.encode(tokenizer, chat.messages_for(row.prompt, system), row.prefill)
        hidden = run_recorded(model, [1, 4], input_ids=torch.tensor([enc.ids], device=DEVICE))
        for layer in [1, 4]:
            expect = hidden[layer][0, enc.prompt_len - 1].cpu()
            got = tensors[f"pooled.layer.{layer}"][r, 0]  # pools[0] == last_prompt
            assert torch.allclose(got, expect, atol=1e-3), (pid, layer, (got - expect).abs().max())
        pre = tokens[tokens["prompt_id"] == pid]
        assert " ".join(pre["token"]) == row.prefill if row.prefill else pre.empty
    assert json.loads(out.read_text())["n_prompts"] == 3


def test_device_map_auto_loads_on_gpu(tmp_path, gpu_manifest):
    manifest = json.loads(gpu_manifest.read_text())
    spec = {**manifest["spec"], "device_map": "auto"}
    model, _ = load(prepare(ModelSpec.from_config("gemma", spec), tmp_path / "m"))
    assert next(model.parameters()).is_cuda


def test_trait_stages_run_on_the_gpu(tmp_path, gpu_manifest):
    """Generation, capture, vectors, evaluation and steering on CUDA, through the CLI."""
    import yaml

    from traitscope.activations import Activations

    trait = {
        "description": "d",
        "pairs": [{"positive": "you are evil .", "negative": "you are kind ."}],
        "extraction_questions": ["how do i make bread ?", "how do i make tea ?", "how do i make a cake ?"],
        "evaluation_questions": ["the kind assistant ?", "help with that ?", "sure ?"],
        "judge_rubric": "{question} {answer}",
    }
    path = tmp_path / "safety" / "evil.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(trait))
    m = str(gpu_manifest)
    steps = [
        [
            "trait-responses",
            "--model",
            m,
            "--trait-file",
            str(path),
            "--out",
            str(tmp_path / "r.parquet"),
            "--max-new-tokens",
            "4",
            "--pairs-per-question",
            "1",
        ],
        [
            "trait-activations",
            "--model",
            m,
            "--responses",
            str(tmp_path / "r.parquet"),
            "--out",
            str(tmp_path / "a.safetensors"),
        ],
        [
            "trait-vectors",
            "--activations",
            str(tmp_path / "a.safetensors"),
            "--responses",
            str(tmp_path / "r.parquet"),
            "--out",
            str(tmp_path / "v.safetensors"),
            "--meta",
            str(tmp_path / "v.json"),
        ],
        [
            "trait-evaluate",
            "--vectors",
            str(tmp_path / "v.safetensors"),
            "--activations",
            str(tmp_path / "a.safetensors"),
            "--responses",
            str(tmp_path / "r.parquet"),
            "--out",
            str(tmp_path / "e.json"),
            "--png",
            str(tmp_path / "e.png"),
        ],
        [
            "steering-check",
            "--model",
            m,
            "--vectors",
            str(tmp_path / "v.safetensors"),
            "--evaluation",
            str(tmp_path / "e.json"),
            "--trait-file",
            str(path),
            "--out",
            str(tmp_path / "s.json"),
            "--max-new-tokens",
            "4",
        ],
    ]
    for argv in steps:
        assert main(argv) == 0, argv[0]
    responses = pd.read_parquet(tmp_path / "r.parquet")
    assert len(responses) == 12 and (responses["n_response_tokens"] > 0).all()
    acts = Activations.load(tmp_path / "a.safetensors")
    assert acts.data["response_mean"].shape == (12, 6, 256) and acts.data["response_mean"].isfinite().all()
    steering = json.loads((tmp_path / "s.json").read_text())
    assert steering["n"] == 3 and np.isfinite(steering["difference"])
