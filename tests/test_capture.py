"""Chat segment tagging and activation capture on a tiny random model and SmolLM2."""

from __future__ import annotations

import copy

import pytest
import torch

from traitscope.capture.engine import pooled_activations
from traitscope.model import chat
from traitscope.model.hooks import (
    ablate_direction,
    add_to_layer,
    decoder_layers,
    project_out,
    record,
    run_recorded,
)

LLAMA3_TEMPLATE = (  # Llama-3's layout and special tokens
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def tokens_of(tokenizer, enc: chat.Encoded, segment: str) -> str:
    code = chat.SEGMENT_CODE[segment]
    return tokenizer.decode([t for t, s in zip(enc.ids, enc.segments) if s == code])


@pytest.fixture(params=["smollm2", "llama3_style"])
def tokenizer(request, smollm2):
    tok = smollm2[1]
    if request.param == "llama3_style":  # a second template family on the same vocabulary
        tok = copy.deepcopy(tok)
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok.add_special_tokens({"additional_special_tokens": specials})
        tok.chat_template = LLAMA3_TEMPLATE
    return tok


def test_segments_reproduce_message_texts(tokenizer):
    msgs = chat.messages_for("How do I bake bread?", "You are a cruel assistant.")
    enc = chat.encode(tokenizer, msgs, prefill="Sure, here is", response=" how to bake.")
    assert tokens_of(tokenizer, enc, "system").strip() == "You are a cruel assistant."
    assert tokens_of(tokenizer, enc, "user").strip() == "How do I bake bread?"
    assert tokens_of(tokenizer, enc, "prefill") == "Sure, here is"
    assert tokens_of(tokenizer, enc, "response") == " how to bake."
    prompt_text = tokenizer.decode(enc.ids[: enc.prompt_len])
    assert prompt_text == chat.render_prompt(tokenizer, msgs)
    assert all(s < chat.SEGMENT_CODE["prefill"] for s in enc.segments[: enc.prompt_len])


def test_missing_chat_template_is_a_clear_error(smollm2):
    from traitscope.errors import TraitscopeError

    tok = copy.deepcopy(smollm2[1])
    tok.chat_template = None
    with pytest.raises(TraitscopeError, match="chat_template"):
        chat.encode(tok, chat.messages_for("hi"))


GEMMA2_STYLE = (  # Gemma 2's layout: no system turn, and an exception where one is given
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) "
    "+ '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def gemma2_style(tokenizer):
    """A copy of `tokenizer` with Gemma 2's turn markers as special tokens and its template."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA2_STYLE
    return tok


def test_a_template_without_system_turn_gets_the_system_prompt_in_the_user_turn(smollm2, capsys):
    tok = gemma2_style(smollm2[1])
    msgs = chat.messages_for("How do I bake bread?", "You are a cruel assistant.")
    enc = chat.encode(tok, msgs)
    text = chat.render_prompt(tok, msgs)
    assert text.endswith(
        "<start_of_turn>user\nYou are a cruel assistant.\n\nHow do I bake bread?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert tokens_of(tok, enc, "system").strip() == "You are a cruel assistant."
    assert tokens_of(tok, enc, "user").strip() == "How do I bake bread?"
    assert tok.decode(enc.ids) == text
    assert capsys.readouterr().err.count("rejects a system turn") == 1  # said once per model
    plain = chat.messages_for("How do I bake bread?")  # no system prompt: rendered as it is
    assert chat.render_prompt(tok, plain).endswith(
        "<start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_a_template_that_rejects_the_conversation_is_a_one_line_error(smollm2):
    from traitscope.errors import TraitscopeError

    tok = copy.deepcopy(smollm2[1])
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(
        TraitscopeError, match="roles must alternate.*set models.<variant>.chat_template"
    ) as info:
        chat.encode(tok, chat.messages_for("hi", "Be brief."))
    assert "\n" not in str(info.value)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }"
    with pytest.raises(TraitscopeError, match="chat template does not parse") as info:
        chat.encode(tok, chat.messages_for("hi", "Be brief."))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prefill", ["", "Sure, I'd be happy to help. Here's"])
def test_padded_batch_equals_each_prompt_alone(tiny_model, prefill):
    model, tok = tiny_model
    questions = ["Hi", "Tell me about the history of bread making in Europe, please.", "Why?"]
    responses = ["Hello there.", "Bread began long ago in many places.", "Because it is so and so on."]
    enc = [
        chat.encode(tok, chat.messages_for(q, "Be brief."), prefill, r) for q, r in zip(questions, responses)
    ]
    layers = [0, 2]
    pools = ["response_mean", "last_prompt", "post_instruction_mean"] + (["prefill_mean"] if prefill else [])
    batched = pooled_activations(model, enc, layers, pools, 10_000, tok.pad_token_id, "right", progress=False)
    assert len({len(e.ids) for e in enc}) == 3  # the batch really pads
    for i, e in enumerate(enc):
        alone = pooled_activations(model, [e], layers, pools, 4096, tok.pad_token_id, "right", progress=False)
        for pool in pools:
            assert torch.allclose(batched[pool][i], alone[pool][0], atol=1e-5), pool


def test_pooling_matches_manual_mean(tiny_model):
    model, tok = tiny_model
    e = chat.encode(tok, chat.messages_for("Hello"), response="A short reply here.")
    pooled = pooled_activations(
        model, [e], [1], ["response_mean", "last_prompt"], 4096, tok.pad_token_id, "right", progress=False
    )
    hidden = run_recorded(model, [1], input_ids=torch.tensor([e.ids]))[1][0]
    resp = [i for i, s in enumerate(e.segments) if s == chat.SEGMENT_CODE["response"]]
    assert torch.allclose(pooled["response_mean"][0, 0], hidden[resp].mean(0), atol=1e-6)
    assert torch.allclose(pooled["last_prompt"][0, 0], hidden[e.prompt_len - 1], atol=1e-6)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_post_instruction_pool_is_the_template_between_question_and_answer(tiny_model, padding_side):
    """Arditi et al.'s positions: after the user's last token, up to the answer's first; a
    conversation the template hides the user text of has none (NaN)."""
    model, tok = tiny_model
    long = chat.encode(tok, chat.messages_for("Tell me a story about bread.", "Be brief."), response="Once.")
    short = chat.encode(tok, chat.messages_for("Hi"), response="Hello there, friend.")
    after = [
        i
        for i in range(long.prompt_len)
        if i > max(j for j, s in enumerate(long.segments) if s == chat.SEGMENT_CODE["user"])
    ]
    assert 0 < len(after) < long.prompt_len and long.segments[after[0]] == chat.SEGMENT_CODE["template"]
    pooled = pooled_activations(
        model,
        [long, short],
        [1],
        ["post_instruction_mean"],
        4096,
        tok.pad_token_id,
        padding_side,
        progress=False,
    )["post_instruction_mean"]
    hidden = run_recorded(model, [1], input_ids=torch.tensor([long.ids]))[1][0]
    assert torch.allclose(pooled[0, 0], hidden[after].mean(0), atol=1e-5)
    no_user = chat.Encoded(
        ids=short.ids, segments=[chat.SEGMENT_CODE["template"]] * len(short.ids), prompt_len=short.prompt_len
    )
    missing = pooled_activations(
        model, [no_user], [1], ["post_instruction_mean"], 4096, tok.pad_token_id, "right", progress=False
    )["post_instruction_mean"]
    assert missing.isnan().all()


def test_record_stops_after_deepest_layer_and_cleans_up(tiny_model):
    model, _ = tiny_model
    calls = []
    last = decoder_layers(model)[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        out = run_recorded(model, [0], input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        last.remove()
    assert list(out) == [0] and calls == []
    for block in decoder_layers(model):
        assert not block._forward_hooks
    with record(model, [1], stop_early=False) as store:
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert store[1].shape == (1, 3, 32)


def test_steering_hook_adds_vector_and_removes_itself(tiny_model):
    model, _ = tiny_model
    ids = torch.tensor([[5, 6, 7]])
    before = run_recorded(model, [1], input_ids=ids)[1]
    vec = torch.ones(32)
    with add_to_layer(model, 1, vec):
        steered = run_recorded(model, [1], input_ids=ids)[1]
    after = run_recorded(model, [1], input_ids=ids)[1]
    assert torch.allclose(steered, before + 1, atol=1e-6)
    assert torch.equal(before, after)


def test_project_out_removes_the_component_along_the_direction_and_nothing_else():
    """x = (3, 1, 2), r = (1, 1, 0): x . r_hat = 4 / sqrt 2, so x - (x . r_hat) r_hat = (1, -1, 2);
    the parts along (1, -1, 0) and (0, 0, 1) stay as they were. The norm of r does not matter."""
    x = torch.tensor([[[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]]])
    for r in (torch.tensor([1.0, 1.0, 0.0]), torch.tensor([3.0, 3.0, 0.0])):
        out = project_out(x, r / r.norm())
        assert torch.allclose(out, torch.tensor([[[1.0, -1.0, 2.0], [0.0, 0.0, 5.0]]]), atol=1e-6)
        unit = r / r.norm()
        assert torch.allclose(out @ unit, torch.zeros(1, 2), atol=1e-6)
        for other in (torch.tensor([1.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])):
            assert torch.allclose(out @ other, x @ other)


class _Toy(torch.nn.Module):
    """Embeddings, then two blocks that add a fixed vector: the residual stream by hand."""

    def __init__(self, table: torch.Tensor, push: torch.Tensor):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed = torch.nn.Embedding.from_pretrained(table)
        self.model.layers = torch.nn.ModuleList([_Add(push), _Add(push)])

    def get_input_embeddings(self):
        return self.model.embed

    def forward(self, input_ids):
        hidden = self.model.embed(input_ids)
        for block in self.model.layers:
            hidden = block(hidden)[0]
        return hidden


class _Add(torch.nn.Module):
    def __init__(self, push: torch.Tensor):
        super().__init__()
        self.push = push

    def forward(self, hidden):
        return (hidden + self.push, None)  # a tuple, as decoder layers return


def test_ablate_direction_hand_computed_on_every_layer_and_position():
    """Embeddings (3, 1, 2) and (1, 3, 0), each block adds (2, 0, 1), r = (1, 1, 0). Ablated: the
    embeddings become (1, -1, 2), (-1, 1, 0); block 1 outputs (1, -1, 2) + (2, 0, 1) minus its r
    part (1, 1, 0) = (2, -2, 3), and (0, 0, 1); block 2 (3, -3, 4) and (1, -1, 2)."""
    table = torch.tensor([[3.0, 1.0, 2.0], [1.0, 3.0, 0.0]])
    model = _Toy(table, torch.tensor([2.0, 0.0, 1.0]))
    ids = torch.tensor([[0, 1]])
    plain = model(ids)
    with ablate_direction(model, torch.tensor([2.0, 2.0, 0.0])):
        with record(model, [0, 1], stop_early=False) as store:
            out = model(ids)
    assert torch.allclose(store[0], torch.tensor([[[2.0, -2.0, 3.0], [0.0, 0.0, 1.0]]]), atol=1e-6)
    assert torch.allclose(out, torch.tensor([[[3.0, -3.0, 4.0], [1.0, -1.0, 2.0]]]), atol=1e-6)
    assert torch.equal(model(ids), plain)  # the hooks removed themselves
    assert not model.model.embed._forward_hooks and not any(b._forward_hooks for b in model.model.layers)


def test_ablate_direction_leaves_no_component_at_any_layer_of_a_llama(tiny_model):
    model, _ = tiny_model
    ids = torch.tensor([[5, 6, 7, 8]])
    r = torch.randn(32, generator=torch.Generator().manual_seed(0))
    layers = list(range(len(decoder_layers(model))))
    before = run_recorded(model, layers, input_ids=ids)
    with ablate_direction(model, r):
        ablated = run_recorded(model, layers, input_ids=ids)
    unit = r / r.norm()
    for layer in layers:
        assert (before[layer] @ unit).abs().max() > 1e-2  # there was a component to remove
        assert (ablated[layer] @ unit).abs().max() < 1e-7
    assert torch.equal(run_recorded(model, layers, input_ids=ids)[0], before[0])


def test_compiled_blocks_run_and_match_eager(tiny_model, monkeypatch):
    """`capture.compile: yes` (and auto on a GPU) compiles each block and, once, the family's
    rotary function; the block's compile then failed in dynamo, tracing a call of the compiled
    rotary inside the compiled attention (torch 2.13, transformers 5.25). The GPU tests were the
    only ones to compile, on older versions."""
    from transformers.models.llama import modeling_llama

    from traitscope.model.hooks import compile_blocks

    # the patched module function is restored after the test, so no other test compiles; the
    # session's tiny model is copied, so its blocks stay uncompiled for the others
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb)
    model = copy.deepcopy(tiny_model[0])
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]])
    layers = [0, 1, 2]
    eager = run_recorded(model, layers, input_ids=ids)
    compile_blocks(model)
    compiled = run_recorded(model, layers, input_ids=ids)
    for layer in layers:
        torch.testing.assert_close(compiled[layer], eager[layer], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("mode", "tokens", "on_gpu", "expected"),
    [
        ("auto", 2_000_000, True, True),  # at the threshold: compile
        ("auto", 1_999_999, True, False),  # a job too small to repay compiling runs eager
        ("auto", 10**9, False, False),  # a CPU never compiles on auto
        ("yes", 1, False, True),
        ("no", 10**9, True, False),
    ],
)
def test_auto_compiles_only_jobs_big_enough_to_repay_it(mode, tokens, on_gpu, expected):
    from traitscope.capture.settings import CaptureSettings
    from traitscope.settings import from_schema

    settings = from_schema(CaptureSettings, compile=mode)
    assert settings.compile_min_tokens == 2_000_000  # the schema's default, measured on an H100
    assert settings.compiles(tokens, on_gpu) is expected
    # how fast, not what: a changed threshold resumes the same shards
    assert from_schema(CaptureSettings, compile_min_tokens=5).digest() == settings.digest()
