"""Model variants: local folders, LoRA adapters on a base, chat templates, quantization errors."""

from __future__ import annotations

import json

import pytest
import torch

from traitscope.errors import TraitscopeError
from traitscope.models import ModelSpec, load, prepare


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

    base_manifest = prepare(ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny")
    spec = ModelSpec.from_config("tiny_lora", {"lora": {"base": "tiny", "adapter": str(adapter_folder)}})
    manifest = prepare(spec, tmp_path / "tiny_lora", base_manifest)
    assert json.loads(manifest.read_text())["base_manifest"] == "../tiny/manifest.json"
    ids = torch.tensor([[5, 6, 7, 8]])
    base, _ = load(base_manifest, device="cpu")
    variant, tokenizer = load(manifest, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(tiny_folder)
    expected = PeftModel.from_pretrained(plain, adapter_folder).eval()
    with torch.inference_mode():
        out_variant = variant(input_ids=ids).logits
        assert not torch.allclose(out_variant, base(input_ids=ids).logits)
        assert torch.allclose(out_variant, expected(input_ids=ids).logits, atol=1e-5)
    assert tokenizer.chat_template  # the base's template carries over


def test_lora_needs_prepared_base(tmp_path, adapter_folder):
    spec = ModelSpec.from_config("v", {"lora": {"base": "b", "adapter": str(adapter_folder)}})
    with pytest.raises(TraitscopeError, match="prepare the base variant first"):
        prepare(spec, tmp_path / "v", tmp_path / "missing.json")


def test_lora_folder_without_adapter_config(tmp_path, tiny_folder):
    base_manifest = prepare(ModelSpec.from_config("tiny", {"path": str(tiny_folder)}), tmp_path / "tiny")
    spec = ModelSpec.from_config("v", {"lora": {"base": "tiny", "adapter": str(tmp_path)}})
    with pytest.raises(TraitscopeError, match="adapter_config.json"):
        prepare(spec, tmp_path / "v", base_manifest)


def test_model_without_chat_template_needs_config(tmp_path, tiny_folder):
    config = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_folder.iterdir():
        if f.name not in ("chat_template.jinja", "tokenizer_config.json"):
            (bare / f.name).write_bytes(f.read_bytes())
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    manifest = prepare(ModelSpec.from_config("bare", {"path": str(bare)}), tmp_path / "m")
    with pytest.raises(TraitscopeError, match=r"no chat template; set models\.bare\.chat_template"):
        load(manifest, device="cpu")
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    )
    spec = {"path": str(bare), "chat_template": str(template)}
    _, tokenizer = load(prepare(ModelSpec.from_config("bare", spec), tmp_path / "m2"), device="cpu")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("[user] hi")


def test_quantization_without_bitsandbytes_is_a_clear_error(tmp_path, tiny_folder):
    pytest.importorskip("transformers")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    spec = ModelSpec.from_config("q", {"path": str(tiny_folder), "quantization": "4bit"})
    with pytest.raises(TraitscopeError, match="needs bitsandbytes"):
        load(prepare(spec, tmp_path / "q"), device="cpu")


def test_dtype_from_config(tmp_path, tiny_folder):
    spec = ModelSpec.from_config("t", {"path": str(tiny_folder), "dtype": "bfloat16"})
    model, _ = load(prepare(spec, tmp_path / "t"), device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(TraitscopeError, match="unknown key"):
        ModelSpec.from_config("t", {"path": "x", "dtpye": "bf16"})
