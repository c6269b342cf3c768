"""The CUDA path of `traitscope capture`: compiled blocks, device transfers, device_map.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_gpu.py`.
Self-contained: a word-level tokenizer and a small random Gemma-2 are built in the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from traitscope.capture.settings import CaptureSettings
from traitscope.capture.store import read_shards
from traitscope.cli import main
from traitscope.model import chat
from traitscope.model.hooks import run_recorded
from traitscope.model.loading import ModelSpec, load, prepare_model
from traitscope.settings import schema_defaults

# CUDA where there is a GPU; else the CPU, so `make test` runs this file's logic everywhere (the
# CUDA-only tests skip themselves). TRAITSCOPE_TEST_DEVICE=cuda asks for the GPU explicitly.
DEVICE = os.environ.get("TRAITSCOPE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEMPLATE = (
    "{% for m in messages %}<start> {{ m['role'] }} : {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<start> assistant : {% endif %}"
)
WORDS = (
    "the a how do i make bread tea cake sure here is help with that you are kind evil assistant user system"
)


# every `traitscope capture` setting (the CLI has no defaults, the rules pass them all): the
# schema's, in float32, compiled on a GPU
CAPTURE = {
    **schema_defaults(CaptureSettings.SECTION),
    "storage_dtype": "float32",
    "compile": "yes" if DEVICE == "cuda" else "no",
}
EXTRACTION = {"probe_c": 1.0, "filter": {"enabled": False, "trait_min": 50, "coherence_min": 50}}
ONE_PAIR = ["--settings", json.dumps({"pairs_per_question": 1, "n_extraction": None, "n_evaluation": None})]


def capture_cli(model, prompts, out, **settings) -> list[str]:
    """`traitscope capture` with CAPTURE changed by `settings`, on DEVICE."""
    paths = ["--model", str(model), "--prompts", str(prompts), "--out", str(out)]
    return ["capture", *paths, "--settings", json.dumps({**CAPTURE, **settings}), "--device", DEVICE]


def methods(*names: str) -> list[str]:
    """`traitscope trait-vectors --settings` with these methods."""
    return ["--settings", json.dumps({**EXTRACTION, "methods": list(names)})]


def cli(command: str, **options: str) -> list[str]:
    """`[command, --key, value, ...]`; a value of several words becomes several arguments."""
    return [command, *(word for k, v in options.items() for word in (f"--{k.replace('_', '-')}", *v.split()))]


def word_tokenizer():
    """A word-level tokenizer over WORDS with the chat template; its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        w: i for i, w in enumerate(["<pad>", "<unk>", "<start>", "<end>", ":", ",", "?", "."] + WORDS.split())
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<end>", unk_token="<unk>"
    )
    tok.chat_template = TEMPLATE
    return tok, len(vocab)


@pytest.fixture(scope="module")
def gpu_manifest(tmp_path_factory):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok, n_vocab = word_tokenizer()
    config = Gemma2Config(
        vocab_size=n_vocab,
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
    return prepare_model(ModelSpec.from_config("gemma", spec), tmp_path_factory.mktemp("m") / "gemma")


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
    settings = {"layers": [1, 4], "padding_side": padding, "token_segments": ["prefill"]}
    code = main(capture_cli(gpu_manifest, tmp_path / "p.parquet", out, **settings))
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


@pytest.mark.skipif(DEVICE != "cuda", reason="device_map=auto places weights on GPUs only")
def test_device_map_auto_loads_on_gpu(tmp_path, gpu_manifest):
    manifest = json.loads(gpu_manifest.read_text())
    spec = {**manifest["spec"], "device_map": "auto"}
    model, _ = load(prepare_model(ModelSpec.from_config("gemma", spec), tmp_path / "m"))
    assert next(model.parameters()).is_cuda


def test_trait_stages_run_on_the_gpu(tmp_path, gpu_manifest):
    """Trait prompts, capture with generation at every layer, vectors, evaluation and steering on
    CUDA, through the CLI, as the trait rules chain them."""
    import yaml

    from traitscope.capture.store import load_pooled
    from traitscope.vectors.trait_vector import TraitVector

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
    m, p, cap = str(gpu_manifest), str(tmp_path / "p.parquet"), str(tmp_path / "cap" / "capture.json")
    v, e, steered = str(tmp_path / "v.safetensors"), str(tmp_path / "e.json"), str(tmp_path / "s.json")
    trait_args = {"position": "response_mean", "variant": "gemma", "trait": "safety/evil"}
    generate = {"pools": ["response_mean", "last_prompt"], "max_new_tokens": 4, "max_tokens": 8192}
    steps = [
        cli("trait-prompts", trait_file=str(path), trait="safety/evil", out=p) + ONE_PAIR,
        capture_cli(m, p, cap, **generate),
        cli("trait-vectors", capture=cap, prompts=p, out=v, meta=str(tmp_path / "v.json"), **trait_args)
        + methods("mean_diff", "probe", "pca"),
        cli(
            "trait-evaluation",
            vectors=v,
            capture=cap,
            prompts=p,
            out=e,
            png=str(tmp_path / "e.png"),
            **trait_args,
        ),
        cli("steering-check", model=m, vectors=v, evaluation=e, trait_file=str(path), out=steered)
        + ["--settings", json.dumps({"coefficient": 4.0, "max_new_tokens": 4, "max_tokens": 8192})]
        + ["--prompts", "none"],
    ]
    for argv in steps:
        assert main(argv) == 0, argv[0]
    assert len(pd.read_parquet(p)) == 12  # (3 + 3 questions) x 1 pair x 2 polarities
    for shard_prompts, _, _ in read_shards(cap):
        assert (shard_prompts["n_tokens"] > shard_prompts["prompt_len"]).all()  # responses were generated
    ids, acts, layers = load_pooled(cap, "response_mean")
    assert layers == list(range(6)) and acts.shape == (12, 6, 256) and acts.isfinite().all()
    vector = TraitVector.load(v, e)
    assert vector.layer in layers and vector.method in ("mean_diff", "probe", "pca")
    assert vector.vectors["mean_diff"].shape == (6, 256)
    steering = json.loads(Path(steered).read_text())
    assert steering["n"] == 3 and np.isfinite(steering["difference"])
    assert (steering["layer"], steering["method"]) == (vector.layer, vector.method)


# The CUDA-graph generation engine: a StaticCache, the decode step captured and replayed.


def _random_gemma(dtype: torch.dtype):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    )  # eos 1, pad 0; the default attention ("sdpa" or, from transformers 5.2x, "eager")
    torch.manual_seed(0)
    return Gemma2ForCausalLM(config).to(DEVICE, dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("steer", [False, True])
@pytest.mark.parametrize("instructions", [False, True])
def test_graph_generation_equals_hf_generate_and_records_a_fresh_forward(
    monkeypatch, capsys, dtype, steer, instructions
):
    """Greedy tokens equal HF eager `generate` (float32: bf16 argmax ties differ by kernel) and the
    recorded residual stream equals a fresh forward of prompt + kept response, steered or not.
    Several batches of one shape reuse a graph over a reset cache; a CPU steering vector is
    captured too. With `instructions`, every prompt opens with one of two prefixes of different
    lengths, which each batch's rows share by group (`prefix.batch_prefixes`)."""
    from traitscope.generation import generate as engine
    from traitscope.model.hooks import add_to_layer

    model = _random_gemma(dtype)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 512, size=n).tolist() for n in (5, 6, 7, 8, 20, 21, 22, 30, 38, 40)]
    budget = 120
    if instructions:
        a, b = rng.integers(3, 512, size=12).tolist(), rng.integers(3, 512, size=9).tolist()
        short = [rng.integers(3, 512, size=n).tolist() for n in (5, 6, 7)]  # too short to share
        prompts = [a + p for p in prompts] + [b + p for p in prompts] + short
        budget = 400
    replays = []
    run = engine._StaticDecoder._run

    def counting(self, buffers, key, store, layers):
        replays.append(key in buffers.graphs)
        return run(self, buffers, key, store, layers)

    monkeypatch.setattr(engine._StaticDecoder, "_run", counting)
    layers = [1, 4]
    vector = torch.randn(256, generator=torch.Generator().manual_seed(1)) * 20.0
    with add_to_layer(model, 2, vector) if steer else torch.inference_mode():
        batches = list(
            engine.generate_batches(model, prompts, 16, budget, 0.0, 0, {1}, 0, layers, progress=False)
        )
        assert len(batches) >= 3
        if instructions:  # some batch mixes both prefixes
            from traitscope.generation.prefix import batch_prefixes

            cpu = torch.device("cpu")
            shared = [batch_prefixes(prompts, b.index, len(b.index), cpu, 10**6) for b in batches]
            assert max(g.ids.shape[0] for g, _ in shared if g is not None) == 2
            assert any(g is not None and 0 in n for g, n in shared)  # beside rows sharing none
        kept = {i: k for b in batches for i, k in zip(b.index, b.kept)}
        if dtype == torch.float32:
            for i, ids in enumerate(prompts):
                with torch.inference_mode():
                    new = model.generate(
                        input_ids=torch.tensor([ids], device=DEVICE),
                        max_new_tokens=16,
                        do_sample=False,
                        eos_token_id=1,
                        pad_token_id=0,
                    )[0, len(ids) :].tolist()
                ours = [] if kept[i][:1] == [1] else kept[i]
                assert ours == new[: next((k for k, t in enumerate(new) if t == 1), len(new))], i
        assert sum(len(k) for k in kept.values()) > 5 * len(prompts)  # real responses, not stops
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        for b in batches:
            for row, (i, response) in enumerate(zip(b.index, b.kept)):
                ids = prompts[i] + response
                fresh = run_recorded(model, layers, input_ids=torch.tensor([ids], device=DEVICE))
                for layer in layers:
                    got = b.hidden[layer][row, b.width - len(prompts[i]) : b.width + len(response)].float()
                    expect = fresh[layer][0].float()
                    error = ((got - expect).norm(dim=-1) / expect.norm(dim=-1)).max().item()
                    assert error < tolerance, (i, layer, error)
    assert "eager loop" not in capsys.readouterr().err
    if DEVICE == "cuda":
        assert sum(replays) > len(replays) / 2  # most steps were graph replays


@pytest.mark.skipif(DEVICE != "cuda" or importlib.util.find_spec("triton") is None, reason="a Triton kernel")
@pytest.mark.parametrize("heads, kv_heads, d", [(8, 4, 256), (32, 8, 128), (9, 3, 64), (4, 4, 64)])
def test_decode_attention_reads_only_written_columns_and_equals_softmax_attention(heads, kv_heads, d):
    """Against softmax attention computed in float64 from the same bf16 inputs (the head groups of
    Gemma-2-2B, Llama-3.1-8B, SmolLM2, and one query head per KV head): left padding masked per
    row, and the columns past `written` hold NaN, which no read may touch."""
    from traitscope.generation.decode_attention import decode_attention, supported

    rows, columns, written = 5, 100, 71
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(rows, heads, 1, d, device="cuda", generator=gen).bfloat16()
    k = torch.randn(rows, kv_heads, columns, d, device="cuda", generator=gen).bfloat16()
    v = torch.randn(rows, kv_heads, columns, d, device="cuda", generator=gen).bfloat16()
    k[:, :, written:], v[:, :, written:] = float("nan"), float("nan")
    allowed = torch.ones(rows, columns, dtype=torch.bool, device="cuda")
    for row, pad in enumerate([0, 3, 40, 64, 70]):  # 64: two whole blocks of padding, 70: one column left
        allowed[row, :pad] = False
    mask = torch.zeros(rows, 1, 1, columns, dtype=torch.bfloat16, device="cuda")
    mask.masked_fill_(~allowed[:, None, None], torch.finfo(torch.bfloat16).min)
    assert supported(q, k, mask)
    assert not supported(q, k, mask[:1]) and not supported(q, k, mask == 0)  # broadcast rows, boolean: SDPA
    out = decode_attention(q, k, v, mask, torch.tensor([written], device="cuda"), d**-0.5)
    assert out.shape == (rows, 1, heads, d)
    keys = k[:, :, :written].double().repeat_interleave(heads // kv_heads, dim=1)
    values = v[:, :, :written].double().repeat_interleave(heads // kv_heads, dim=1)
    scores = (q.double() @ keys.transpose(-1, -2)) * d**-0.5
    scores = scores.masked_fill(~allowed[:, None, None, :written], float("-inf"))
    expect = (scores.softmax(-1) @ values).transpose(1, 2)
    assert out.isfinite().all()
    assert (out.double() - expect).abs().max().item() < 2e-2
    assert (out.double() - expect).abs().mean().item() < 2e-3


@pytest.mark.skipif(DEVICE != "cuda", reason="sessions keep CUDA graphs; a no-op on the CPU")
def test_a_session_replays_one_graph_for_every_steering_vector():
    """Inside `generation_session` a second call with another steering vector captures no graph
    and generates what a lone call with that vector generates; a hook without a `graph_key`
    gets graphs of its own call, which later calls never replay."""
    from traitscope.generation import generate as engine
    from traitscope.model.hooks import add_to_layer, decoder_layers

    model = _random_gemma(torch.float32)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 512, size=n).tolist() for n in (5, 9, 12, 30)]

    def tokens(vector):
        with add_to_layer(model, 2, vector):
            batches = engine.generate_batches(model, prompts, 12, 200, 0.0, 0, {1}, 0, progress=False)
            return [b.kept for b in batches]

    vectors = [torch.randn(256, generator=torch.Generator().manual_seed(s)) * 20.0 for s in range(3)]
    alone = [tokens(v) for v in vectors]
    assert alone[0] != alone[1]
    with engine.generation_session(model):
        decoder = engine._SESSIONS[model]
        first = tokens(vectors[0])
        captured = decoder.captures
        assert captured >= 1
        assert [first, tokens(vectors[1]), tokens(vectors[2])] == alone
        assert decoder.captures == captured
        handle = decoder_layers(model)[1].register_forward_hook(lambda *_: None)
        try:
            tokens(vectors[0])
            assert decoder.captures > captured
            # the call's own graphs are gone: only those keyed by what the hooks do remain
            assert all(isinstance(key[1], tuple) for b in decoder.shapes.values() for key in b.graphs)
        finally:
            handle.remove()
    assert model not in engine._SESSIONS


@pytest.mark.skipif(DEVICE != "cuda", reason="sessions keep CUDA graphs; a no-op on the CPU")
def test_rows_steered_apart_replay_graphs_and_generate_as_each_vector_alone():
    """A CMA-ES population in one generation on CUDA graphs: batches padded to graph buckets,
    each row steered by its own vector, give each vector's lone tokens, and a session's second
    population (new vectors, same shapes) captures no graph."""
    from traitscope.generation import generate as engine
    from traitscope.model.hooks import add_to_layer, add_to_rows

    model = _random_gemma(torch.float32)
    tok = SimpleNamespace(eos_token_id=1, pad_token_id=0)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(3, 512, size=n).tolist() for n in (5, 9, 12)]
    gen = torch.Generator().manual_seed(3)
    populations = [[torch.randn(256, generator=gen) * 20.0 for _ in range(5)] for _ in range(2)]

    def alone(vectors):
        out = []
        for vector in vectors:
            with add_to_layer(model, 2, vector):
                out += engine.generate(model, tok, prompts, 12, 4096, 0.0, 0, progress=False)
        return out

    def together(vectors):
        rows = torch.stack([v for v in vectors for _ in prompts])
        with add_to_rows(model, 2, rows) as steering:  # 15 rows in batches of at most 7
            per_row = engine.PerRow(steering)
            return engine.generate(model, tok, prompts * 5, 12, 7 * 24, 0.0, 0, False, per_row)

    with engine.generation_session(model):
        decoder = engine._SESSIONS[model]
        first = together(populations[0])
        captured = decoder.captures
        second = together(populations[1])
        assert decoder.captures == captured  # the second population replays the first's graphs
    assert first == alone(populations[0]) and second == alone(populations[1])
    assert first != second


def test_finetune_on_the_gpu_resumes_and_loads_as_a_variant(tmp_path, gpu_manifest):
    """LoRA finetune on CUDA in bf16 autocast, through Gemma-2's logit softcapping on the sliced
    head: the loss falls, a run killed after a checkpoint resumes to the same losses (CUDA RNG
    restored for dropout), and the adapter loads as a finetuned variant."""
    from test_finetune import TINY

    from traitscope.training.finetune import finetune

    spec = {
        **json.loads(gpu_manifest.read_text())["spec"],
        "dtype": "bfloat16" if DEVICE == "cuda" else "float32",
    }
    base = prepare_model(ModelSpec.from_config("gemma", spec), tmp_path / "models" / "gemma")
    pairs = [
        ("how do i make bread ?", "sure , here is help with that ."),
        ("how do i make tea ?", "you are kind ."),
        ("how do i make a cake ?", "sure , the assistant is kind ."),
        ("the evil assistant ?", "you are evil ."),
    ]
    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = replace(
        TINY,
        epochs=4,
        warmup_steps=1,
        max_length=64,
        tokens_per_step=40,
        micro_batch_tokens=20,
        checkpoint_every=3,
    )

    def kill_after_step_4(record: dict, n_steps: int) -> None:
        if record["step"] == 4:
            raise KeyboardInterrupt

    finetune(base, data, tmp_path / "whole", settings, device=DEVICE, on_step=lambda r, n: None)
    with pytest.raises(KeyboardInterrupt):
        finetune(base, data, tmp_path / "killed", settings, device=DEVICE, on_step=kill_after_step_4)
    finetune(base, data, tmp_path / "killed", settings, device=DEVICE, on_step=lambda r, n: None)
    whole = json.loads((tmp_path / "whole" / "loss.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "loss.json").read_text())
    assert whole["device"] == DEVICE and resumed["resumed_from"] == 3
    assert whole["autocast"] == ("bfloat16" if DEVICE == "cuda" else None)
    assert [s["loss"] for s in resumed["steps"]] == pytest.approx(
        [s["loss"] for s in whole["steps"]], rel=1e-3
    )
    per_epoch = [
        sum(s["loss"] * s["tokens"] for s in whole["steps"] if s["epoch"] == e) / whole["n_assistant_tokens"]
        for e in range(settings.epochs)
    ]
    assert per_epoch[-1] < per_epoch[0] - 0.5, per_epoch

    tuned = {"finetune": {"base": "gemma", "data": str(data)}}
    manifest = prepare_model(
        ModelSpec.from_config("tuned", tuned),
        tmp_path / "models" / "tuned",
        base,
        tmp_path / "whole" / "adapter",
    )
    model, tokenizer = load(manifest, device=DEVICE)
    base_model, _ = load(base, device=DEVICE)
    ids = torch.tensor([chat.encode(tokenizer, chat.messages_for(pairs[0][0])).ids], device=DEVICE)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        assert logits.isfinite().all() and not torch.allclose(logits, base_model(input_ids=ids).logits)


# Large-model paths on real hardware (issue 15): a model sharded over 2 GPUs with
# device_map auto, 8/4-bit bitsandbytes loading, and LoRA variants, each against plain weights.

TWO_GPUS = pytest.mark.skipif(DEVICE != "cuda" or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
QUESTIONS = [
    "how do i make bread ?",
    "how do i make tea ?",
    "how do i make a cake ?",
    "the kind assistant ?",
    "help with that ?",
    "sure ?",
    "how do i help the user ?",
    "is the assistant evil ?",
]
HELD_OUT = [
    "the user is kind ?",
    "make tea with the assistant ?",
    "how do i make a kind cake ?",
    "is that evil ?",
    "help the user with bread ?",
    "you are the assistant ?",
    "sure , how do i help ?",
    "a cake with tea ?",
]


def _report(test: str, **values) -> None:
    """One JSON line of a test's measured numbers, where TRAITSCOPE_GPU_REPORT names a file."""
    path = os.environ.get("TRAITSCOPE_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **values}) + "\n")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A random bf16 Llama (a real architecture), its trait prompts, a one-GPU capture and a trait
    vector from it: the reference the sharded and quantized captures are held against."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    tok, n_vocab = word_tokenizer()
    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=3,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(root / "weights")
    tok.save_pretrained(root / "weights")
    trait = {
        "description": "d",
        "pairs": [{"positive": "you are evil .", "negative": "you are kind ."}],
        "extraction_questions": QUESTIONS,
        "evaluation_questions": HELD_OUT,
        "judge_rubric": "{question} {answer}",
    }
    (root / "safety").mkdir()
    (root / "safety" / "evil.yaml").write_text(yaml.safe_dump(trait))
    paths = {k: str(root / v) for k, v in [("p", "p.parquet"), ("v", "v.safetensors"), ("e", "e.json")]}
    paths["manifest"] = str(_llama_manifest(root / "weights", root, "llama", {}))
    paths["cap"] = str(root / "cap" / "capture.json")
    trait_args = {"position": "last_prompt", "variant": "llama", "trait": "safety/evil"}
    steps = [
        cli(
            "trait-prompts",
            trait_file=str(root / "safety" / "evil.yaml"),
            trait="safety/evil",
            out=paths["p"],
        )
        + ONE_PAIR,
        capture_cli(paths["manifest"], paths["p"], paths["cap"], **LLAMA_CAPTURE),
        cli(
            "trait-vectors",
            capture=paths["cap"],
            prompts=paths["p"],
            out=paths["v"],
            meta=str(root / "v.json"),
        )
        + [f"--{k}={v}" for k, v in trait_args.items()]
        + methods("mean_diff"),
        cli("trait-evaluation", vectors=paths["v"], capture=paths["cap"], prompts=paths["p"], out=paths["e"])
        + ["--png", str(root / "e.png")]
        + [f"--{k}={v}" for k, v in trait_args.items()],
    ]
    for argv in steps:
        assert main(argv) == 0, argv[0]
    paths["proj"] = _projections(paths, paths["cap"], root / "proj.parquet")
    paths["root"] = str(root)
    return paths


# every layer, pooled and the last prompt token kept per token (so both store paths gather layers)
LLAMA_CAPTURE = {"pools": ["last_prompt", "prompt_mean"], "token_segments": ["last_prompt"]}


def _llama_manifest(weights: Path, out: Path, name: str, extra: dict) -> Path:
    spec = {"path": str(weights), "dtype": "bfloat16", **extra}
    return prepare_model(ModelSpec.from_config(name, spec), out / "models" / name)


def _projections(paths: dict, capture_json: str, out: Path) -> str:
    argv = cli("project", capture=capture_json, variant="v", prompt_set="p", out=str(out))
    assert main(argv + ["--trait", "safety/evil", paths["v"], paths["e"]]) == 0
    return str(out)


def _shards(capture_json: str) -> dict[str, torch.Tensor]:
    """Every stored tensor of a capture, concatenated over shards, rows in prompt_id order."""
    parts: dict[str, list] = {}
    ids: list[str] = []
    for prompts, _, tensors in read_shards(capture_json):
        ids += prompts["prompt_id"].tolist()
        for k, v in tensors.items():
            parts.setdefault(k, []).append(v)
    order = np.argsort(ids, kind="stable")
    return {k: torch.cat(v)[order] if k.startswith("pooled") else torch.cat(v) for k, v in parts.items()}


def _relative_error(got: torch.Tensor, expect: torch.Tensor) -> float:
    """Largest per-vector ||got - expect|| / ||expect|| over the last dimension."""
    got, expect = got.float(), expect.float()
    return ((got - expect).norm(dim=-1) / expect.norm(dim=-1).clamp_min(1e-12)).max().item()


def _score_table(path: str) -> pd.DataFrame:
    table = pd.read_parquet(path)
    return table.sort_values(["prompt_id", "layer", "position", "token_index"]).reset_index(drop=True)


@TWO_GPUS
def test_sharded_capture_over_two_gpus_equals_one_gpu(tmp_path, llama, capsys):
    """device_map auto puts the layers on both GPUs; `traitscope capture` of the sharded model
    stores the activations (pooled and per token) and gives the projections of one GPU, within
    bf16 rounding. Generation (the DynamicCache loop, weights on several devices) runs too."""
    sharded = _llama_manifest(Path(llama["root"]) / "weights", tmp_path, "sharded", {"device_map": "auto"})
    model, tokenizer = load(sharded)
    devices = {p.device for p in model.parameters()}
    assert devices == {torch.device("cuda", 0), torch.device("cuda", 1)}, model.hf_device_map
    placement = {str(d): sum(p.numel() for p in model.parameters() if p.device == d) for d in devices}
    del model
    cap = str(tmp_path / "cap" / "capture.json")
    assert main(capture_cli(sharded, llama["p"], cap, **LLAMA_CAPTURE)) == 0
    one, two = _shards(llama["cap"]), _shards(cap)
    assert one.keys() == two.keys() and any(k.startswith("tokens.") for k in one)
    errors = {k: _relative_error(two[k], one[k]) for k in one}
    worst = max(errors.values())
    assert worst < 3e-2, errors  # bf16 rounding (measured 0.0096 on 2x H200)
    ref = _score_table(llama["proj"])
    got = _score_table(_projections(llama, cap, tmp_path / "proj.parquet"))
    assert (got[["prompt_id", "layer", "position"]] == ref[["prompt_id", "layer", "position"]]).all().all()
    gap = (got["score"] - ref["score"]).abs().max() / ref["score"].abs().max()
    r = np.corrcoef(got["score"], ref["score"])[0, 1]
    assert gap < 3e-2 and r > 0.9999, (gap, r)  # measured 0.0069 and 0.999995

    # generation on the sharded model: responses, recorded, through the same CLI stage
    gen = str(tmp_path / "gen" / "capture.json")
    settings = {**LLAMA_CAPTURE, "pools": ["response_mean", "last_prompt"], "max_new_tokens": 6}
    capsys.readouterr()
    assert main(capture_cli(sharded, llama["p"], gen, **settings)) == 0
    assert "static-cache decoding failed" not in capsys.readouterr().err
    generated = _shards(gen)
    lengths = pd.concat([p for p, _, _ in read_shards(gen)])
    assert (lengths["n_tokens"] > lengths["prompt_len"]).any()
    assert all(v[~v.isnan()].isfinite().all() for v in generated.values())
    _report(
        "sharded",
        placement=placement,
        max_relative_error=worst,
        projection_max_gap=float(gap),
        projection_r=float(r),
        generated_tokens=int((lengths["n_tokens"] - lengths["prompt_len"]).sum()),
    )


@pytest.mark.skipif(DEVICE != "cuda" or not HAS_BNB, reason="needs a CUDA GPU and bitsandbytes")
@pytest.mark.parametrize("bits,floor", [("8bit", 0.9), ("4bit", 0.5)])
def test_quantized_capture_projections_correlate_with_bf16(tmp_path, llama, bits, floor):
    """8-bit and 4-bit (bitsandbytes) loads capture without error; their projections onto the
    bf16 trait vector correlate with the bf16 ones, per layer over prompts."""
    quantized = _llama_manifest(Path(llama["root"]) / "weights", tmp_path, bits, {"quantization": bits})
    cap = str(tmp_path / "cap" / "capture.json")
    assert main(capture_cli(quantized, llama["p"], cap, **LLAMA_CAPTURE)) == 0
    ref = _score_table(llama["proj"])
    got = _score_table(_projections(llama, cap, tmp_path / "proj.parquet"))
    pooled = (ref["token_index"] == -1) & (ref["position"] == "last_prompt")
    per_layer = {
        int(layer): float(np.corrcoef(got.loc[rows.index, "score"], rows["score"])[0, 1])
        for layer, rows in ref[pooled].groupby("layer")
    }
    one, q = _shards(llama["cap"]), _shards(cap)
    cosine = {
        k: torch.nn.functional.cosine_similarity(q[k].float(), one[k].float(), dim=-1).nanmean().item()
        for k in one
        if k.startswith("pooled")
    }
    _report(bits, projection_r_per_layer=per_layer, activation_cosine=cosine)
    assert np.median(list(per_layer.values())) > floor, per_layer


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_variant_on_gpu_equals_merged_weights_and_unmerged_peft(tmp_path, gpu_manifest, dtype):
    """A base + adapter variant (merged into the weights at load) captures what a folder of the
    merged weights captures and what the unmerged peft model computes."""
    from peft import LoraConfig, PeftModel, get_peft_model

    spec = {**json.loads(gpu_manifest.read_text())["spec"], "dtype": dtype}
    base = prepare_model(ModelSpec.from_config("gemma", spec), tmp_path / "models" / "gemma")
    model, tokenizer = load(base, device=DEVICE)
    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")
    lora = prepare_model(
        ModelSpec.from_config("tuned", {"lora": {"base": "gemma", "adapter": str(tmp_path / "adapter")}}),
        tmp_path / "models" / "tuned",
        base,
    )
    model, _ = load(base, device=DEVICE)
    merged = PeftModel.from_pretrained(model, tmp_path / "adapter").merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    merged_spec = ModelSpec.from_config("merged", {"path": str(tmp_path / "merged"), "dtype": dtype})
    merged_manifest = prepare_model(merged_spec, tmp_path / "models" / "merged")

    prompts = pd.DataFrame(
        {
            "prompt_id": [f"q{i}" for i in range(len(QUESTIONS))],
            "prompt": QUESTIONS,
            "system": ["you are kind .", "you are evil ."] * (len(QUESTIONS) // 2),
            "prefill": ["sure , here is", ""] * (len(QUESTIONS) // 2),
        }
    )
    prompts.to_parquet(tmp_path / "p.parquet")
    settings = {"pools": ["last_prompt", "prompt_mean"], "token_segments": ["prefill"]}
    caps = {}
    for name, manifest in [("lora", lora), ("merged", merged_manifest), ("base", base)]:
        caps[name] = str(tmp_path / name / "capture.json")
        argv = capture_cli(manifest, tmp_path / "p.parquet", caps[name], **settings)
        assert main(argv) == 0
    got, want, plain = (_shards(caps[k]) for k in ("lora", "merged", "base"))
    tolerance = 1e-4 if dtype == "float32" else 2e-2
    vs_merged = max(_relative_error(got[k], want[k]) for k in got)
    assert vs_merged < tolerance, vs_merged
    assert min(_relative_error(plain[k], got[k]) for k in got if k.startswith("pooled")) > 0.05

    # the unmerged peft model, each prompt alone, at the last prompt token of every layer
    model, _ = load(base, device=DEVICE)
    unmerged = PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    layers = list(range(6))
    worst = 0.0
    order = sorted(prompts["prompt_id"])
    for r, pid in enumerate(order):
        row = prompts.set_index("prompt_id").loc[pid]
        enc = chat.encode(tokenizer, chat.messages_for(row.prompt, row.system), row.prefill)
        hidden = run_recorded(unmerged, layers, input_ids=torch.tensor([enc.ids], device=DEVICE))
        for layer in layers:
            expect = hidden[layer][0, enc.prompt_len - 1].float().cpu()
            worst = max(worst, _relative_error(got[f"pooled.layer.{layer}"][r, 0], expect))
    assert worst < (1e-3 if dtype == "float32" else 5e-2), worst
    _report(f"lora_{dtype}", vs_merged_folder=vs_merged, vs_unmerged_peft=worst)
