"""The generation engine: greedy outputs identical to Hugging Face `generate`, steered or not."""

from __future__ import annotations

import pytest
import torch

from traitscope.model import chat
from traitscope.model import generate as engine
from traitscope.model.generate import generate
from traitscope.model.hooks import add_to_layer

QUESTIONS = [
    ("What is the capital of France?", None),
    ("Write one sentence about the sea.", "You are a poet."),
    ("List three prime numbers.", None),
    ("How should I apologise to a friend I let down? Give me a short, kind answer.", "Be warm."),
]


def hf_greedy(model, tok, prompts, max_new_tokens):
    """Each prompt alone through `model.generate`: the eager reference path."""
    stops = {tok.eos_token_id, tok.pad_token_id}
    out = []
    for ids in prompts:
        with torch.inference_mode():
            new = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                top_p=None,
                top_k=None,
            )[0, len(ids) :].tolist()
        out.append(new[: next((k for k, t in enumerate(new) if t in stops), len(new))])
    return out


@pytest.mark.parametrize("steer", [False, True])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_greedy_generation_matches_hf_generate_on_smollm2(smollm2, steer, cache, monkeypatch):
    """Both decode loops: the static cache (the default on CPU and CUDA) and the DynamicCache
    loop that models the static path cannot run fall back to."""
    model, tok = smollm2
    if cache == "dynamic":
        monkeypatch.setattr(engine, "_static_decoder", lambda *_: None)
    else:
        assert engine._static_decoder(model, torch.device("cpu")) is not None
    prompts = [chat.encode(tok, chat.messages_for(q, s)).ids for q, s in QUESTIONS]
    assert len({len(p) for p in prompts}) > 1  # one batch, really left-padded
    torch.manual_seed(0)
    vector = torch.randn(model.config.hidden_size) * 8.0
    with add_to_layer(model, 10, vector) if steer else torch.inference_mode():
        ours = generate(model, tok, prompts, 12, 4096, 0.0, 0, progress=False)
        reference = hf_greedy(model, tok, prompts, 12)
    assert ours == reference
    assert all(ours)


def test_steering_changes_what_is_generated(smollm2):
    model, tok = smollm2
    prompts = [chat.encode(tok, chat.messages_for(q, s)).ids for q, s in QUESTIONS[:2]]
    plain = generate(model, tok, prompts, 8, 4096, 0.0, 0, progress=False)
    with add_to_layer(model, 10, torch.full((model.config.hidden_size,), 4.0)):
        steered = generate(model, tok, prompts, 8, 4096, 0.0, 0, progress=False)
    assert plain != steered


def test_sampling_is_seeded(smollm2):
    model, tok = smollm2
    prompts = [chat.encode(tok, chat.messages_for(q, s)).ids for q, s in QUESTIONS[:2]]
    a = generate(model, tok, prompts, 8, 4096, 1.0, 3, progress=False)
    b = generate(model, tok, prompts, 8, 4096, 1.0, 3, progress=False)
    assert a == b
