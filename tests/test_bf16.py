"""The bf16 path (what `dtype: auto` gives on a GPU and on a CPU with native bf16), forced to
bfloat16 so that an AVX2 machine runs it too (emulated there, so the cases stay small).

bf16 keeps 8 significant bits: one rounding moves a value by at most 2^-9 of it, and one unit in
the last place (ulp) is 2^-7 of the value's power of two. Two bf16 runs of the same computation
(a batch against each prompt alone) differ by accumulation order, so their tolerances are counted
in ulps of the values compared; a bf16 run against fp32 differs by the rounding each layer adds
to the residual stream, so that bound grows with depth. Each bound is stated where it is used.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import BF16
from test_capture_set import LAYERS, PROMPTS, random_traits, read_capture, settings, write_prompts

from traitscope.capture.store import capture
from traitscope.generation import generate as engine
from traitscope.generation.generate import generate
from traitscope.model import chat
from traitscope.model.hooks import add_to_layer, run_recorded
from traitscope.vectors.projection import project

EPS = 2.0**-8  # bf16's relative step: 2^-7 per ulp at the bottom of a binade, 2^-8 at its top


def ulp(x: torch.Tensor) -> torch.Tensor:
    """One bf16 ulp at the magnitude of each value: 2^(floor(log2|x|) - 7)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - 7)


def depth_bound(layer: int) -> float:
    """Relative error of a bf16 residual stream against fp32 after `layer` + 1 blocks: each block
    adds its output rounded to bf16, at most ~2 EPS of the stream (output and sum), linearly."""
    return 2 * (layer + 1) * EPS


# ---------------------------------------------------------------- generation

QUESTIONS = [
    ("What is the capital of France?", None),
    ("Write one sentence about the sea.", "You are a poet."),
    ("List three prime numbers.", None),
    ("How should I apologise to a friend I let down? Give me a short, kind answer.", "Be warm."),
]
# A greedy step is a tie in bf16 when the top two logits are this close: 8 ulps of SmolLM2's
# largest logits (|logit| in [16, 32), ulp 0.125). The test measures that a batch and each
# prompt alone differ by less at the first step (0.69 at most on an AVX512-BF16 EPYC).
TIE = 1.0


@pytest.mark.parametrize("steer", [False, True])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_bf16_greedy_tokens_are_the_references_argmax_up_to_bf16_ties(
    smollm2_bf16, steer, cache, monkeypatch
):
    """Every generated token is, on a teacher-forced forward pass of its prompt alone (the
    reference), the argmax or within TIE of it; most are the argmax itself. Left-padded
    batching and the KV cache reorder bf16 sums, so exact equality is only promised in fp32
    (test_generate.py)."""
    model, tok = smollm2_bf16
    assert next(model.parameters()).dtype == torch.bfloat16
    if cache == "dynamic":
        monkeypatch.setattr(engine, "_static_decoder", lambda *_: None)
    prompts = [chat.encode(tok, chat.messages_for(q, s)).ids for q, s in QUESTIONS]
    torch.manual_seed(0)
    vector = torch.randn(model.config.hidden_size) * 8.0
    checked = exact = 0
    with add_to_layer(model, 10, vector) if steer else torch.inference_mode():
        ours = generate(model, tok, prompts, 12, 4096, 0.0, 0, progress=False)
        width = max(map(len, prompts))
        batch = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        with torch.inference_mode():
            first = model(input_ids=batch, attention_mask=mask).logits[:, -1].float()
        for i, (prompt, new) in enumerate(zip(prompts, ours)):
            assert new, f"prompt {i}: nothing generated"
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([prompt + new])).logits[0].float()
            assert (first[i] - logits[len(prompt) - 1]).abs().max() < TIE  # a batch moves logits < TIE
            for step, token in enumerate(new):
                row = logits[len(prompt) - 1 + step]
                assert row[token] >= row.max() - TIE, f"prompt {i} step {step}: not a bf16 tie"
                exact += int(row[token] == row.max())
                checked += 1
    assert checked >= 30 and exact >= 0.8 * checked, (exact, checked)


# ---------------------------------------------------------------- capture and projection


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_bf16_capture_of_a_batch_equals_each_prompt_alone_to_a_few_ulps(
    tiny_manifest_bf16, tmp_path, padding_side
):
    """Batching pads and reorders sums: within 4 ulps of the largest value of each pooled vector
    (a mean over a prompt's tokens) or per-token row, every layer, every pool. (Whether left
    padding moves bf16 sums at all depends on the kernels: with AVX512 ones it does, by up to
    a few ulps; held to AVX2 the batch equals each prompt alone bit for bit.)"""
    s = settings(padding_side=padding_side)
    manifest = capture(
        tiny_manifest_bf16, write_prompts(tmp_path / "all.parquet"), tmp_path / "all.json", s, "cpu"
    )
    assert manifest["dtype"] == "bfloat16"
    together = read_capture(tmp_path / "all.json")
    for i, pid in enumerate(PROMPTS["prompt_id"]):
        alone_json = tmp_path / pid / "c.json"
        capture(
            tiny_manifest_bf16,
            write_prompts(tmp_path / f"{pid}.parquet", PROMPTS[i : i + 1]),
            alone_json,
            s,
            "cpu",
        )
        alone = read_capture(alone_json)
        pairs = [(together["pooled"][pid][layer], alone["pooled"][pid][layer]) for layer in LAYERS]
        pairs += [
            (a["acts"][layer], b["acts"][layer])
            for a, b in zip(together["tokens"][pid], alone["tokens"][pid])
            for layer in LAYERS
        ]
        for got, want in pairs:
            assert torch.equal(got.isnan(), want.isnan())
            got, want = got.nan_to_num(), want.nan_to_num()
            bound = 4 * ulp(want.abs().amax(dim=-1, keepdim=True))
            assert ((got - want).abs() <= bound).all(), f"{pid}: {(got - want).abs().max()} > {bound.min()}"


def test_bf16_projections_stay_within_the_depth_bound_of_fp32(tiny_manifest, tiny_manifest_bf16, tmp_path):
    """The whole capture -> project path in bf16 against fp32 on the same weights: each score
    (a dot product with a unit vector) moves by at most the depth bound times the state's norm,
    since |h16.v - h32.v| <= |h16 - h32| for |v| = 1."""
    prompts = write_prompts(tmp_path / "p.parquet")
    traits = random_traits()
    tables = {}
    for name, manifest in (("fp32", tiny_manifest), ("bf16", tiny_manifest_bf16)):
        out = tmp_path / name / "capture.json"
        capture(manifest, prompts, out, settings(), device="cpu")
        project(out, traits, "base", "tiny_set", tmp_path / f"{name}.parquet")
        tables[name] = pd.read_parquet(tmp_path / f"{name}.parquet")
    key = ["prompt_id", "trait", "layer", "position", "token_index"]
    both = tables["fp32"].merge(tables["bf16"], on=key, suffixes=("_32", "_16"), validate="one_to_one")
    assert len(both) == len(tables["fp32"]) == len(tables["bf16"]) > 0
    norm = (both["score_32"] / both["cosine_32"]).abs()  # |h| of the fp32 state
    bound = both["layer"].map(depth_bound) * norm
    moved = (both["score_16"] - both["score_32"]).abs()
    assert (moved <= bound).all(), both.loc[moved > bound, key]
    assert (moved > 0).any()  # really two number formats


@pytest.mark.e2e
def test_bf16_smollm2_states_stay_within_the_depth_bound_of_fp32(smollm2, smollm2_bf16):
    """SmolLM2's residual stream in bf16 against fp32, per token, at a shallow, middle and last
    layer (measured on an AVX512-BF16 EPYC: 2.5%, 3.6%, 7.2% at layers 3, 20, 29)."""
    model32, tok = smollm2
    model16, _ = smollm2_bf16
    layers = [3, 20, 29]
    for question in ("What is the capital of France?", "Explain why the sky looks blue."):
        ids = torch.tensor([chat.encode(tok, chat.messages_for(question)).ids])
        h16, h32 = run_recorded(model16, layers, input_ids=ids), run_recorded(model32, layers, input_ids=ids)
        for layer in layers:
            a, b = h16[layer][0].float(), h32[layer][0]
            relative = (a - b).norm(dim=-1) / b.norm(dim=-1)
            assert relative.max() <= depth_bound(layer), (layer, relative.max())
            assert relative.max() >= EPS / 2  # bf16 really ran


def test_bf16_lora_variant_equals_peft_on_the_same_bf16_base(tmp_path, tiny_weights):
    """A LoRA variant loaded in bf16 (adapter merged into bf16 weights) against PEFT's unmerged
    adapter on the same bf16 base: the merge rounds each weight once more, so logits agree to the
    depth bound of the tiny model's 3 layers, and the adapter moves them by more than that."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from traitscope.model.loading import ModelSpec, load, prepare_model

    base32 = AutoModelForCausalLM.from_pretrained(tiny_weights, dtype=torch.float32)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    peft.get_peft_model(base32, config).save_pretrained(tmp_path / "adapter")
    base_manifest = prepare_model(
        ModelSpec.from_config("tiny", {"path": str(tiny_weights)}), tmp_path / "tiny"
    )
    spec = ModelSpec.from_config(
        "tiny_lora", {"lora": {"base": "tiny", "adapter": str(tmp_path / "adapter")}}
    )
    manifest = prepare_model(spec, tmp_path / "tiny_lora", base_manifest)
    variant, _ = load(manifest, device="cpu", dtype=BF16)
    base, _ = load(base_manifest, device="cpu", dtype=BF16)
    assert next(variant.parameters()).dtype == torch.bfloat16
    unmerged = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_weights, dtype=torch.bfloat16), tmp_path / "adapter"
    ).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.inference_mode():
        got, want, plain = (m(input_ids=ids).logits[0].float() for m in (variant, unmerged, base))
    bound = depth_bound(3) * want.norm(dim=-1)
    assert ((got - want).norm(dim=-1) <= bound).all()
    assert ((plain - want).norm(dim=-1) > bound).any()  # the adapter's effect is larger than the bound
