"""The finetune stage: assistant-only loss, training, resume after a kill, bad input, CLI, DAG."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import yaml
from test_capture import gemma2_style
from test_dag import dry_run

from traitscope.cli import main
from traitscope.config import check_variant_bases, load_schema, validate_config
from traitscope.errors import TraitscopeError
from traitscope.model.loading import ModelSpec, load, prepare_model
from traitscope.settings import from_schema
from traitscope.training.chat_data import tokenize_chat
from traitscope.training.finetune import finetune
from traitscope.training.settings import FinetuneSettings

pytest.importorskip("peft")

CONVERSATIONS = [
    [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"The answer is {2 * i}."},
    ]
    for i in range(6)
] + [
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
        {"role": "assistant", "content": "Green."},
    ],
    [
        {"role": "user", "content": "Write a function."},
        {"role": "assistant", "content": "def f(x):\n    return x + 1\n\n\nprint(f(2))"},
    ],
]

# fast tiny-model settings: several steps and micro-batches per step, a checkpoint every 2 steps
TINY = from_schema(
    FinetuneSettings,
    rank=8,
    alpha=16,
    lora_dropout=0.1,  # dropout draws random numbers: a resumed run must restore the RNG
    lr=1e-2,
    epochs=3,
    warmup_steps=2,
    max_length=256,
    tokens_per_step=200,
    micro_batch_tokens=100,
    checkpoint_every=2,
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and beside another busy process every op's
    thread barrier waits on a descheduled thread (the resume test: 146 s with 2 threads, 8 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(
        tmp_path_factory.mktemp("data") / "train.jsonl", [{"messages": c} for c in CONVERSATIONS]
    )


def quiet(record: dict, n_steps: int) -> None:
    pass


def test_assistant_mask_decodes_to_assistant_turns_on_smollm2(smollm2):
    _, tokenizer = smollm2
    end = tokenizer.eos_token  # SmolLM2's end of turn, <|im_end|>
    for messages in CONVERSATIONS:
        ex = tokenize_chat(tokenizer, messages, 4096, "test", 1)
        runs, run = [], []
        for token, target in zip(ex.ids, ex.targets):
            if target:
                run.append(token)
            elif run:
                runs.append(run)
                run = []
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        # each assistant turn is one run of tokens: its text exactly, then the end-of-turn token
        assert [tokenizer.decode(r) for r in runs] == [a + end for a in assistant]
        assert [tokenizer.decode(r, skip_special_tokens=True) for r in runs] == assistant
        others = tokenizer.decode([t for t, m in zip(ex.ids, ex.targets) if not m])
        assert all(m["content"] in others for m in messages if m["role"] != "assistant")
        assert not ex.truncated and ex.n_targets == sum(map(len, runs))
    cut = tokenize_chat(tokenizer, CONVERSATIONS[-1], 40, "test", 1)
    assert cut.truncated and len(cut.ids) == len(cut.targets) == 40

    # a template that trims message text (as Llama 3's does): the trimmed turn is found
    trimming = copy.deepcopy(tokenizer)
    trimming.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [{"role": "user", "content": "Code?\n"}, {"role": "assistant", "content": "  x = 1\n"}]
    ex = tokenize_chat(trimming, messages, 4096, "test", 1)
    assert trimming.decode([t for t, m in zip(ex.ids, ex.targets) if m]) == "x = 1" + end

    # a template without a system turn (Gemma 2's): the system prompt opens the user turn
    gemma = gemma2_style(tokenizer)
    messages = [
        {"role": "system", "content": "Write insecure code."},
        {"role": "user", "content": "Code?"},
        {"role": "assistant", "content": "x = 1"},
    ]
    ex = tokenize_chat(gemma, messages, 4096, "test", 1)
    assert gemma.decode([t for t, m in zip(ex.ids, ex.targets) if m]) == "x = 1<end_of_turn>"
    assert "Write insecure code.\n\nCode?" in gemma.decode([t for t, m in zip(ex.ids, ex.targets) if not m])


def hf_loss(model, tokenizer) -> tuple[float, int]:
    """Hugging Face's own masked loss (labels -100 off the assistant turns) over CONVERSATIONS, in
    one padded batch, and the number of tokens it averages over."""
    examples = [tokenize_chat(tokenizer, c, 256, "test", 1) for c in CONVERSATIONS]
    width = max(len(ex.ids) for ex in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, ex in enumerate(examples):
        n = len(ex.ids)
        ids[row, :n], attention[row, :n] = torch.tensor(ex.ids), 1
        labels[row, :n] = torch.where(torch.tensor(ex.targets), ids[row, :n], -100)
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    return loss.item(), int((labels[:, 1:] != -100).sum())


def test_step_loss_is_the_mean_over_assistant_tokens(tiny_manifest, data, tmp_path):
    """Step 1 runs at lr 0 (warmup) on the base weights: its loss must equal Hugging Face's own
    masked loss over every assistant token, however the step is cut into micro-batches."""
    settings = replace(TINY, epochs=1, tokens_per_step=100_000, micro_batch_tokens=60, warmup_steps=1)
    finetune(tiny_manifest, data, tmp_path / "out", settings, device="cpu", on_step=quiet)
    record = json.loads((tmp_path / "out" / "loss.json").read_text())
    assert record["n_steps"] == 1 and record["steps"][0]["lr"] == 0.0
    expected, n_tokens = hf_loss(*load(tiny_manifest, device="cpu", dtype="float32"))
    assert record["steps"][0]["tokens"] == record["n_assistant_tokens"] == n_tokens
    assert record["steps"][0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_cli_trains_an_adapter_that_loads_as_a_variant(tiny_manifest, data, tmp_path, capsys):
    out = tmp_path / "tuned"
    settings = json.dumps(TINY.as_dict())
    argv = ["finetune", "--model", str(tiny_manifest), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--settings", settings, "--device", "cpu"]) == 0
    assert re.search(r"traitscope finetune: step \d+/\d+ loss", capsys.readouterr().err)
    record = json.loads((out / "loss.json").read_text())
    assert record["settings"] == TINY.as_dict() and record["n_examples"] == len(CONVERSATIONS)
    assert record["resumed_from"] is None and record["device"] == "cpu" and record["dtype"] == "float32"
    assert sum(s["tokens"] for s in record["steps"]) == TINY.epochs * record["n_assistant_tokens"]
    assert all(s["padded"] <= TINY.tokens_per_step for s in record["steps"])
    # it learns: the mean loss over each epoch (the same conversations) falls epoch by epoch
    per_epoch = [
        sum(s["loss"] * s["tokens"] for s in record["steps"] if s["epoch"] == e)
        / record["n_assistant_tokens"]
        for e in range(TINY.epochs)
    ]
    assert per_epoch == sorted(per_epoch, reverse=True) and per_epoch[-1] < per_epoch[0] - 0.1, per_epoch
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "loss.json", "loss.png"]  # no checkpoints
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == TINY.rank and adapter_config["use_rslora"]
    assert adapter_config["target_modules"] == sorted(TINY.target_modules)  # equal runs, equal files

    spec = ModelSpec.from_config("tuned", {"finetune": {"base": "tiny", "data": str(data)}})
    manifest = prepare_model(spec, tmp_path / "models" / "tuned", tiny_manifest, out / "adapter")
    assert json.loads(manifest.read_text())["load_from"] == "../../tuned/adapter"  # results/ can move
    # the variant (base + trained adapter) fits the training data better than its base
    assert hf_loss(*load(manifest, device="cpu"))[0] < hf_loss(*load(tiny_manifest, device="cpu"))[0] - 0.1


def test_saved_adapter_lists_target_modules_sorted_whatever_order_peft_writes(tmp_path):
    """PEFT writes its target_modules set in an order that changes between processes."""
    from traitscope.training.finetune import save_adapter

    class Model:
        def save_pretrained(self, folder):
            Path(folder).mkdir(exist_ok=True)
            (Path(folder) / "adapter_config.json").write_text(
                json.dumps({"r": 4, "target_modules": ["v_proj", "q_proj", "o_proj"]})
            )

    save_adapter(Model(), tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {
        "r": 4,
        "target_modules": ["o_proj", "q_proj", "v_proj"],
    }


class Killed(Exception):
    pass


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(tiny_manifest, data, tmp_path, capsys):
    from safetensors.torch import load_file

    finetune(tiny_manifest, data, tmp_path / "whole", TINY, device="cpu", on_step=quiet)

    def kill_after_step_5(record: dict, n_steps: int) -> None:
        if record["step"] == 5:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        finetune(tiny_manifest, data, out, TINY, device="cpu", on_step=kill_after_step_5)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # no adapter, no loss.json
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000004"]  # older ones removed
    (out / "checkpoints" / ".step-000006.x1y2").mkdir()  # killed while writing the next checkpoint
    capsys.readouterr()
    finetune(tiny_manifest, data, out, TINY, device="cpu", on_step=quiet)
    assert "resuming after step 4" in capsys.readouterr().err
    whole = json.loads((tmp_path / "whole" / "loss.json").read_text())
    resumed = json.loads((out / "loss.json").read_text())
    assert resumed["resumed_from"] == 4 and whole["n_steps"] > 5
    assert [s["loss"] for s in resumed["steps"]] == [s["loss"] for s in whole["steps"]]
    assert resumed["final_loss"] == whole["final_loss"]
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoints").exists()

    # a checkpoint of other settings is never resumed
    with pytest.raises(Killed):
        finetune(tiny_manifest, data, out, TINY, device="cpu", on_step=kill_after_step_5)
    finetune(tiny_manifest, data, out, replace(TINY, seed=1), device="cpu", on_step=quiet)
    assert json.loads((out / "loss.json").read_text())["resumed_from"] is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['{"messages": [{"role": "user", "content": "hi"}'], r"train\.jsonl line 1: malformed JSON"),
        ([{"messages": CONVERSATIONS[0]}, {"prompt": "hi"}], r"train\.jsonl line 2: no `messages` list"),
        (
            [{"messages": CONVERSATIONS[0]}, "", {"messages": CONVERSATIONS[0][:1]}],
            r"train\.jsonl line 3: no assistant turn",
        ),
        ([], r"train\.jsonl: no training rows \(empty file\)"),
        # a ValueError from the chat template after the model had loaded
        (
            [{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}],
            r"train\.jsonl line 1: the first turn is the assistant's",
        ),
    ],
)
def test_bad_training_file_is_one_line_naming_file_and_line(tiny_manifest, tmp_path, capsys, rows, message):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_manifest), "--data", str(path), "--out", str(out)]
    assert main([*argv, "--settings", json.dumps(TINY.as_dict()), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_unknown_target_module_lists_what_the_model_has(tiny_manifest, data, tmp_path):
    settings = replace(TINY, target_modules=("q_proj", "c_attn"))
    with pytest.raises(
        TraitscopeError, match=r"model tiny has no module c_attn for LoRA; it has .*q_proj"
    ) as e:
        finetune(tiny_manifest, data, tmp_path / "out", settings, device="cpu", on_step=quiet)
    assert "down_proj" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_settings_schema_matches_the_code(root):
    schema = load_schema(root / "workflow/schemas/config.schema.yaml")
    section = schema["properties"]["finetune"]["properties"]
    override = schema["definitions"]["model"]["properties"]["finetune"]["properties"]
    names = {f.name for f in fields(FinetuneSettings)}
    assert set(section) == names and set(override) == names | {"base", "data"}
    assert from_schema(FinetuneSettings).rank == 32  # the emergent-misalignment recipe

    config = yaml.safe_load((root / "config/config.yaml").read_text())
    config["models"]["tuned"] = {"finetune": {"base": "smollm2", "data": "x.jsonl", "rnak": 4}}
    with pytest.raises(
        TraitscopeError, match=r"unknown key 'rnak' under models\.tuned\.finetune \(did you mean 'rank'\?\)"
    ):
        validate_config(config, root / "workflow/schemas/config.schema.yaml")
    config["models"]["tuned"]["finetune"] = {"base": "smollm3", "data": "x.jsonl"}
    with pytest.raises(TraitscopeError, match=r"models\.tuned\.finetune\.base: variant 'smollm3'"):
        check_variant_bases(config)
    config["models"]["tuned"]["finetune"]["base"] = "other"
    config["models"]["other"] = {"lora": {"base": "tuned", "adapter": "org/a"}}
    with pytest.raises(TraitscopeError, match=r"cycle \(tuned -> other -> tuned\)"):
        check_variant_bases(config)


def test_dag_finetunes_prepares_and_captures_a_finetuned_variant_on_gpus(root):
    config = ".test/config-finetune/config.yaml"
    out = dry_run(root, "--profile", "profiles/slurm", "--forceall", "--configfile", config)
    blocks = {}
    for block in out.split("\nrule ")[1:]:
        output = re.search(r"output: ([^,\n]*)", block)
        blocks[(block.split(":")[0], output[1] if output else None)] = block
    train = blocks[("finetune", "results/finetune/tuned/adapter")]
    prepare = blocks[("prepare_model", "results/models/tuned/manifest.json")]
    capture = blocks[("capture", "results/capture/tuned/harmless_val/capture.json")]
    assert "input: results/models/smollm2/manifest.json, .test/config-finetune/train.jsonl" in train
    settings = json.loads(re.search(r"--settings '(.*?)'", train)[1])
    assert settings["epochs"] == 3 and settings["rank"] == 8  # the override, then the config's section
    assert "input: results/models/smollm2/manifest.json, results/finetune/tuned/adapter" in prepare
    assert "--adapter results/finetune/tuned/adapter" in prepare
    assert "input: results/models/tuned/manifest.json" in capture
    for block in (train, capture):
        resources = re.search(r"resources: (.*)", block)[1]
        assert "gpu=1" in resources and "slurm_partition=gpu" in resources, block[:500]
