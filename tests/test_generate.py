"""The generation engine: greedy outputs identical to Hugging Face `generate`, steered or not."""

from __future__ import annotations

import pytest
import torch

from traitscope.generation import generate as engine
from traitscope.generation import static_decode
from traitscope.generation.decode_attention import matmul_decode
from traitscope.generation.generate import PerRow, generate
from traitscope.generation.prefix import batch_prefixes, left_layout, shared_prefix
from traitscope.model import chat
from traitscope.model.hooks import add_to_layer, add_to_rows

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


SYSTEM = "You are a careful assistant who answers in one short, plain sentence."
OTHER = "Reply as a pirate would, with gusto, in at most one sentence."
SHARED = ["Name a colour.", "What is two plus two?", "Say hello to a new colleague in a friendly way."]
# two system prompts interleaved, as a length-sorted batch mixes a trait set's instructions, and
# a prompt under the template's default system prompt, which no other row shares
MIXED = [(q, system) for q in SHARED for system in (SYSTEM, OTHER)] + [(SHARED[0], None)]


@pytest.mark.parametrize("steer", [False, True])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_shared_prefixes_run_once_and_generate_as_each_prompt_alone(smollm2, steer, cache, monkeypatch):
    """Prompts under two system prompts and one under the template's default: one prefix pass
    runs the three groups' prefixes, each copied into its rows, and every row generates as it
    does alone."""
    model, tok = smollm2
    if cache == "dynamic":
        monkeypatch.setattr(engine, "_static_decoder", lambda *_: None)
    prompts = [chat.encode(tok, chat.messages_for(q, s)).ids for q, s in MIXED]
    assert shared_prefix(prompts, [0, 2, 4]) >= 20 and shared_prefix(prompts, [1, 3, 5]) >= 15
    calls = []
    real = engine.prefill_prefix
    for loop in (engine, static_decode):  # the DynamicCache loop's and the static decoder's
        monkeypatch.setattr(loop, "prefill_prefix", lambda *a: calls.append(a[1].ids.shape) or real(*a))
    torch.manual_seed(1)
    vector = torch.randn(model.config.hidden_size) * 8.0
    with add_to_layer(model, 10, vector) if steer else torch.inference_mode():
        ours = generate(model, tok, prompts, 10, 4096, 0.0, 0, progress=False)
        reference = hf_greedy(model, tok, prompts, 10)
    # one pass: the two instructions and the lone prompt's all-but-last tokens (the widest)
    assert calls == [torch.Size([3, len(prompts[-1]) - 1])]
    assert ours == reference


@pytest.mark.parametrize("bucket", [0, 3])
def test_recorded_states_with_shared_prefixes_equal_those_without(smollm2, monkeypatch, bucket):
    """The copied prefixes and the [prefix | padding | suffix] layout, turned back into plain
    left padding, give the states of a batch that shares nothing; also where the batch is padded
    with `bucket` finished rows, as CUDA graphs pad it to a reused size (the Gemma-2-2B plan's EM
    capture failed there: the prefix was cut to the real rows, the decode steps were not)."""
    model, tok = smollm2
    monkeypatch.setattr(static_decode._StaticDecoder, "rows", lambda self, n: n + bucket)
    prompts = [chat.encode(tok, chat.messages_for(q, s)).ids for q, s in MIXED]

    def run() -> list[engine.GeneratedBatch]:
        stops = {tok.eos_token_id}
        args = (model, prompts, 6, 4096, 0.0, 0, stops, tok.pad_token_id, [3, 20])
        return list(engine.generate_batches(*args, progress=False))

    [shared] = run()
    monkeypatch.setattr("traitscope.generation.prefix.MIN_SHARED", 10_000)
    [plain] = run()
    assert shared.index == plain.index and shared.kept == plain.kept and shared.width == plain.width
    for layer in (3, 20):
        a, b = shared.hidden[layer], plain.hidden[layer]
        assert a.shape == b.shape
        for row, i in enumerate(shared.index):
            start = shared.width - len(prompts[i])  # padding columns hold nothing defined
            torch.testing.assert_close(a[row, start:], b[row, start:], atol=2e-4, rtol=1e-4)


def test_batch_prefixes_cuts_where_the_fewest_tokens_are_prefilled():
    """Two instructions x three questions and a lone prompt, in 8 rows (a bucket row repeats the
    last), hand-counted prefill tokens (groups x longest prefix + rows x longest suffix): sharing
    nothing costs 8 x 26 = 208; cut at 16 shared tokens, the instructions form two groups and
    the lone prompt one of its own, 3 x 25 + 8 x 3 = 99; cut at 20, the Y rows are alone too,
    5 x 25 + 8 x 3 = 149."""
    x, y, lone = [1] * 20, [2] * 16, [3] * 25 + [9]
    questions = [[10, 11], [12, 13, 14], [15]]
    prompts = [instruction + q for q in questions for instruction in (x, y)] + [lone]
    prefixes, lengths = batch_prefixes(prompts, range(7), rows=8, device=torch.device("cpu"), max_width=99)
    assert lengths == [20, 16, 20, 16, 20, 16, 25]
    assert prefixes.ids.tolist() == [[0] * 5 + x, [0] * 9 + y, lone[:25]]
    assert prefixes.group.tolist() == [0, 1, 0, 1, 0, 1, 2, 2]  # bucket row 7 repeats row 6
    assert prefixes.row_mask.sum(-1).tolist() == [20, 16, 20, 16, 20, 16, 25, 25]
    none, zeros = batch_prefixes([[1] * 9, [2] * 9], [0, 1], rows=2, device=torch.device("cpu"), max_width=99)
    assert none is None and zeros == [0, 0]  # alone, each would prefill 8 + 1 of its 9 tokens
    # at most 26 columns: cut at 16 or 20 the layout is 25 + 3 wide; every prompt alone (25 + 1,
    # 7 x 25 + 8 x 1 = 183) is the one that fits; at 25 none does
    alone, lengths = batch_prefixes(prompts, range(7), rows=8, device=torch.device("cpu"), max_width=26)
    assert lengths == [len(p) - 1 for p in prompts] and alone.ids.shape == (7, 25)
    narrow, lengths = batch_prefixes(prompts, range(7), rows=8, device=torch.device("cpu"), max_width=25)
    assert narrow is None and lengths == [0] * 7


def test_batch_prefixes_left_pads_groups_of_different_lengths():
    b, c = [5] * 10, [6] * 14
    prompts = [b + [1], c + [2], b + [3], c + [4]]
    prefixes, lengths = batch_prefixes(prompts, range(4), rows=4, device=torch.device("cpu"), max_width=99)
    assert lengths == [10, 14, 10, 14]
    assert prefixes.ids.tolist() == [[0] * 4 + b, c] and prefixes.mask.sum(-1).tolist() == [10, 14]
    assert prefixes.group.tolist() == [0, 1, 0, 1]
    assert prefixes.row_mask[0].tolist() == [0] * 4 + [1] * 10


def test_left_layout_moves_the_prefix_next_to_each_suffix():
    # prefix of 2 (values 1, 2), suffix region of 3; row 0's suffix has 1 token, row 1's 3
    middle = torch.tensor([[1, 2, 0, 0, 5], [1, 2, 6, 7, 8]], dtype=torch.float)[:, :, None]
    out = left_layout(middle, 2, torch.tensor([1, 3]))[:, :, 0]
    assert out[0, 2:].tolist() == [1, 2, 5]
    assert out[1].tolist() == [1, 2, 6, 7, 8]


@pytest.mark.parametrize("recording", [False, True])
@pytest.mark.parametrize("stop", [9, 99])  # 99: no row ever stops, max_new_tokens ends the loop
def test_decode_loop_feeds_up_to_the_step_where_every_row_has_stopped(recording, stop):
    """The stop check is read one feed late (`_StopFlags`): what that extra feed returned is
    dropped, so the fed tokens and recorded steps are those of a check before every feed."""
    script = [[1, 2], [9, 3], [4, 9], [5, 6], [7, 8]]  # row 0 stops at step 1, row 1 at step 2
    calls = []

    def decode(token: torch.Tensor, step: int):
        calls.append(step)
        return torch.tensor(script[step + 1]), {0: token}  # the "logits" the identity sampler returns

    finished = torch.zeros(2, dtype=torch.bool)
    fed, steps = engine._decode_loop(
        torch.tensor(script[0]), decode, 4, lambda x: x, torch.tensor([stop]), finished, recording
    )
    n = 3 if stop == 9 else 4  # tokens fed: through the step where the last row stopped
    assert [t.tolist() for t in fed] == script[:n]
    assert [s[0].tolist() for s in steps] == script[: n if recording else n - 1]
    assert calls == list(range(n if recording or stop == 9 else n - 1))


def test_hooks_key_lets_graphs_outlive_a_call_only_under_hooks_that_say_what_they_do(smollm2):
    """Steering vectors share a device slot (one key whatever the vector), nested steering of a
    layer adds both vectors, and an arbitrary hook makes the key None (its graph is the call's)."""
    from traitscope.model.hooks import decoder_layers, run_recorded

    model, tok = smollm2
    d = model.config.hidden_size
    ids = torch.tensor([chat.encode(tok, chat.messages_for("Hi")).ids])
    plain = run_recorded(model, [3], input_ids=ids)[3]
    one, two = torch.full((d,), 1.5), torch.linspace(-2.0, 2.0, d)
    # a loaded model's only hook makes the head's input contiguous, and changes no value
    assert [tag for _, _, tag in engine.hooks_key(model)] == ["contiguous_input"]
    with add_to_layer(model, 3, one):
        first = engine.hooks_key(model)
    with add_to_layer(model, 3, two):
        assert engine.hooks_key(model) == first
    with add_to_layer(model, 4, two):
        assert engine.hooks_key(model) not in (first, None)
    with add_to_layer(model, 3, one), add_to_layer(model, 3, two):
        assert engine.hooks_key(model) != first
        both = run_recorded(model, [3], input_ids=ids)[3]
    assert torch.allclose(both, plain + one + two, atol=1e-5)
    handle = decoder_layers(model)[1].register_forward_hook(lambda *_: None)
    try:
        with add_to_layer(model, 3, one):
            assert engine.hooks_key(model) is None
    finally:
        handle.remove()


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_rows_steered_apart_generate_as_each_vector_alone(smollm2, cache, monkeypatch):
    """A population in one generation (`add_to_rows`): each row's answer is what its vector gives
    alone (`add_to_layer`), also across several batches and under a system prompt, whose prefix
    a steered-apart batch may not share."""
    model, tok = smollm2
    if cache == "dynamic":
        monkeypatch.setattr(engine, "_static_decoder", lambda *_: None)
    prompts = [chat.encode(tok, chat.messages_for(q, SYSTEM)).ids for q in SHARED]
    torch.manual_seed(2)
    size = model.config.hidden_size
    vectors = [torch.randn(size) * 8.0, torch.zeros(size), torch.randn(size) * 8.0]
    alone = []
    for vector in vectors:
        with add_to_layer(model, 10, vector):
            alone += generate(model, tok, prompts, 10, 4096, 0.0, 0, progress=False)
    rows = torch.stack([v for v in vectors for _ in prompts])
    budget = 3 * (max(map(len, prompts)) + 10)  # three rows a batch: three batches
    with add_to_rows(model, 10, rows) as steering:
        together = generate(
            model, tok, prompts * 3, 10, budget, 0.0, 0, progress=False, per_row=PerRow(steering)
        )
    assert together == alone
    assert together[:3] != together[6:]  # the vectors do differ


def test_rows_of_one_noise_key_sample_alike_in_any_batch(smollm2):
    """Common random numbers: rows of one key draw the same noise, whichever batch holds them;
    other keys draw their own."""
    model, tok = smollm2
    prompt = chat.encode(tok, chat.messages_for(SHARED[2])).ids
    keys = [0, 1, 2, 0, 1, 2]
    budget = 2 * (len(prompt) + 12)  # two rows a batch: key 0's rows in batches 1 and 2
    out = generate(
        model, tok, [prompt] * 6, 12, budget, 1.0, 4, progress=False, per_row=PerRow(noise_keys=keys)
    )
    assert out[:3] == out[3:]
    assert len({tuple(o) for o in out[:3]}) == 3


def test_keyed_sampling_draws_the_softmax_distribution():
    """Gumbel-max with one noise row per key: over many keys, each token's frequency is its
    softmax probability at the temperature (a sign or scale slip in the noise breaks this)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 40_000
    keys = torch.arange(n)
    sample = engine._sampler(0.7, 0, torch.device("cpu"), keys, n)
    tokens = sample(logits.expand(n, -1))
    freq = torch.bincount(tokens, minlength=4).double() / n
    expected = torch.softmax(logits[0].double() / 0.7, dim=-1)
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)


def test_matmul_decode_is_attention_over_the_unmasked_columns():
    """Against attention written out in float64 (softmax of q.k / sqrt(d) over the allowed
    columns, times v), with the query heads of a KV head grouped as `grouped_sdpa` passes them."""
    torch.manual_seed(0)
    rows, kv_heads, group, columns, d = 3, 2, 3, 7, 16
    q = torch.randn(rows, kv_heads, group, d)
    k, v = torch.randn(rows, kv_heads, columns, d), torch.randn(rows, kv_heads, columns, d)
    allowed = torch.ones(rows, 1, 1, columns, dtype=torch.bool)
    allowed[0, ..., :2] = False  # left padding
    allowed[2, ..., 5:] = False  # columns not written yet
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float).min)
    out = matmul_decode(q, k, v, mask, d**-0.5)
    for r in range(rows):
        keep = allowed[r, 0, 0]
        for h in range(kv_heads):
            weights = torch.softmax(q[r, h].double() @ k[r, h, keep].double().T / d**0.5, dim=-1)
            expected = weights @ v[r, h, keep].double()
            torch.testing.assert_close(out[r, h].double(), expected, atol=1e-5, rtol=1e-5)
