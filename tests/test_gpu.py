"""The CUDA path of `traitscope capture`: compiled blocks, device transfers, device_map.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_gpu.py`.
Self-contained: a word-level tokenizer and a small random Gemma-2 are built in the test.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from traitscope.capture.store import read_shards
from traitscope.cli import main
from traitscope.model import chat
from traitscope.model.hooks import run_recorded
from traitscope.model.loading import ModelSpec, load, prepare_model

DEVICE = os.environ.get("TRAITSCOPE_TEST_DEVICE", "cuda")  # "cpu" checks this file's logic locally
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEMPLATE = (
    "{% for m in messages %}<start> {{ m['role'] }} : {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<start> assistant : {% endif %}"
)
WORDS = (
    "the a how do i make bread tea cake sure here is help with that you are kind evil assistant user system"
)


# every `traitscope capture` setting: the CLI has no defaults, the rules pass them all
CAPTURE = {
    "layers": "all",
    "pools": "last_prompt prompt_mean prefill_mean response_mean",
    "token_segments": "none",
    "keep_all_tokens": "no",
    "max_new_tokens": "0",
    "temperature": "0.0",
    "seed": "0",
    "max_tokens": "16384",
    "padding_side": "right",
    "shard_size": "512",
    "storage_dtype": "float32",
    "compile": "yes" if DEVICE == "cuda" else "no",
    "device": DEVICE,
}


def cli(command: str, **options: str) -> list[str]:
    """`[command, --key, value, ...]`; a value of several words becomes several arguments."""
    return [command, *(word for k, v in options.items() for word in (f"--{k.replace('_', '-')}", *v.split()))]


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
    settings = {**CAPTURE, "layers": "1 4", "padding_side": padding, "token_segments": "prefill"}
    code = main(
        cli("capture", model=str(gpu_manifest), prompts=str(tmp_path / "p.parquet"), out=str(out), **settings)
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
    from traitscope.vectors.record import TraitVector

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
    generate = {**CAPTURE, "pools": "response_mean last_prompt", "max_new_tokens": "4", "max_tokens": "8192"}
    steps = [
        cli("trait-prompts", trait_file=str(path), trait="safety/evil", out=p, pairs_per_question="1")
        + ["--n-extraction", "none", "--n-evaluation", "none"],
        cli("capture", model=m, prompts=p, out=cap, **generate),
        cli("trait-vectors", capture=cap, prompts=p, out=v, meta=str(tmp_path / "v.json"), **trait_args)
        + ["--methods", "mean_diff", "probe", "pca", "--probe-c", "1.0"],
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
        + ["--coefficient", "4.0", "--max-new-tokens", "4", "--max-tokens", "8192"],
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
def test_graph_generation_equals_hf_generate_and_records_a_fresh_forward(monkeypatch, capsys, dtype, steer):
    """Greedy tokens equal HF eager `generate` (float32: bf16 argmax ties differ by kernel) and the
    recorded residual stream equals a fresh forward of prompt + kept response, steered or not.
    Several batches of one shape reuse a graph over a reset cache; a CPU steering vector is
    captured too."""
    from traitscope.model import generate as engine
    from traitscope.model.hooks import add_to_layer

    model = _random_gemma(dtype)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 512, size=n).tolist() for n in (5, 6, 7, 8, 20, 21, 22, 30, 38, 40)]
    replays = []
    run = engine._StaticDecoder._run

    def counting(self, store, layers):
        replays.append(self.graph is not None)
        return run(self, store, layers)

    monkeypatch.setattr(engine._StaticDecoder, "_run", counting)
    layers = [1, 4]
    vector = torch.randn(256, generator=torch.Generator().manual_seed(1)) * 20.0
    with add_to_layer(model, 2, vector) if steer else torch.inference_mode():
        batches = list(
            engine.generate_batches(model, prompts, 16, 120, 0.0, 0, {1}, 0, layers, progress=False)
        )
        assert len(batches) >= 3
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


def test_finetune_on_the_gpu_resumes_and_loads_as_a_variant(tmp_path, gpu_manifest):
    """LoRA finetune on CUDA in bf16 autocast, through Gemma-2's logit softcapping on the sliced
    head: the loss falls, a run killed after a checkpoint resumes to the same losses (CUDA RNG
    restored for dropout), and the adapter loads as a finetuned variant."""
    from test_finetune import TINY

    from traitscope.model.finetune import finetune

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
