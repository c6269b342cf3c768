"""Model sources: resolve a config entry to weights, prepare them once, load them fast.

A variant in `models:` names exactly one source: a hub id, a local folder, a GGUF file
inside an installed package (found without importing the package), a GGUF path, a
base variant plus a LoRA adapter, or a base variant plus the adapter the `finetune` stage
trains. `prepare` turns a GGUF into a safetensors folder once, so every later job loads
in well under a second instead of de-quantizing again.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.io import write_json
from traitscope.model.dtype import cpu_bf16_probe, resolve_dtype
from traitscope.model.gguf_files import gguf_location, gguf_parsed_once

SOURCE_KEYS = ("hub", "path", "gguf_package", "gguf_path", "lora", "finetune")


@dataclass(frozen=True)
class ModelSpec:
    """One `models:` entry; exactly one of SOURCE_KEYS is set."""

    name: str
    hub: str | None = None
    revision: str | None = None
    path: str | None = None
    gguf_package: str | None = None
    gguf_path: str | None = None
    gguf_file: str | None = None
    lora: dict | None = None  # {"base": variant, "adapter": hub id or folder}
    finetune: dict | None = None  # {"base": variant, "data": chat JSONL, setting overrides}
    chat_template: str | None = None  # Jinja text, or a path to a file of it
    trust_remote_code: bool = False
    dtype: str | None = None  # None or "auto": chosen per machine at load time (resolve_dtype)
    device_map: str | None = None  # "auto": shard over every visible GPU (models too large for one)
    quantization: str | None = None  # "8bit" or "4bit", where bitsandbytes is installed

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(entry) - known
        if unknown:
            raise TraitscopeError(f"models.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        sources = [k for k in SOURCE_KEYS if entry.get(k)]
        if len(sources) != 1:
            raise TraitscopeError(
                f"models.{name}: set exactly one of {', '.join(SOURCE_KEYS)} (found {len(sources)})"
            )
        return cls(name=name, **entry)

    @property
    def source(self) -> str:
        return next(k for k in SOURCE_KEYS if getattr(self, k))


def load_source(spec: ModelSpec, dtype: Any, device_map: Any = None) -> tuple[Any, Any]:
    """Load model and tokenizer straight from the spec's source (slow for GGUF)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.hub:
        where, extra = spec.hub, {"revision": spec.revision}
    elif spec.path:
        where, extra = str(check_model_folder(spec)), {}
    else:
        folder, file = gguf_location(spec)
        where, extra = str(folder), {"gguf_file": file}
    try:
        with gguf_parsed_once() if extra.get("gguf_file") else nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(where, **common, **extra)
            model = AutoModelForCausalLM.from_pretrained(
                where,
                dtype=dtype,
                device_map=device_map,
                use_safetensors=None if extra.get("gguf_file") else True,
                **common,
                **extra,
            )
    except (ValueError, OSError, struct.error) as exc:
        if not extra.get("gguf_file"):
            raise
        file = Path(where) / extra["gguf_file"]
        with open(file, "rb") as f:
            is_gguf = f.read(4) == b"GGUF"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        what = f"transformers cannot read {file}" if is_gguf else f"{file} is not a GGUF file"
        raise TraitscopeError(f"models.{spec.name}: {what} ({reason}); fix {spec.source}") from exc
    return model, tokenizer


# What a `path:` folder needs, as save_pretrained writes it (weights: this loader reads safetensors)
MODEL_FOLDER_FILES = {
    "config.json": ("config.json",),
    "*.safetensors weights": ("*.safetensors",),
    "tokenizer (tokenizer.json or tokenizer_config.json)": ("tokenizer.json", "tokenizer_config.json"),
}


def check_model_folder(spec: ModelSpec) -> Path:
    """A `path:` source's folder, once it holds a model: the first job names what is missing,
    where the first capture would stop on a tokenizer's or loader's traceback."""
    folder = Path(spec.path)
    if not folder.is_dir():
        raise TraitscopeError(f"models.{spec.name}: model folder {folder} not found; fix path")
    missing = [
        what for what, names in MODEL_FOLDER_FILES.items() if not any(any(folder.glob(n)) for n in names)
    ]
    if missing:
        raise TraitscopeError(
            f"models.{spec.name}: model folder {folder} has no {'; no '.join(missing)} "
            "(a Hugging Face model folder, as save_pretrained writes it); fix path"
        )
    return folder


def prepare_model(
    spec: ModelSpec,
    out_dir: str | Path,
    base_manifest: str | Path | None = None,
    adapter: str | Path | None = None,
) -> Path:
    """Write `<out_dir>/manifest.json`, converting GGUF weights to safetensors once.

    Hub ids and local folders are not copied (a 70B model must not be duplicated);
    the manifest just records where to load them from. A LoRA variant points at its
    base's manifest and its adapter; a finetuned variant likewise, at the adapter that
    the finetune stage wrote (`adapter`).
    """
    import torch

    if spec.chat_template:  # a mistyped template path fails the first job, not the first capture
        template_text(spec)
    out_dir = Path(out_dir)
    manifest: dict[str, Any] = {"name": spec.name, "source": spec.source, "spec": _spec_dict(spec)}
    if spec.source in ("gguf_package", "gguf_path"):
        model, tokenizer = load_source(spec, dtype=torch.float32)
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None  # weights are de-quantized in memory; allow plain save
        weights = out_dir / "weights"
        tmp = Path(tempfile.mkdtemp(prefix=".weights.", dir=_mkdir(out_dir)))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if weights.exists():
                shutil.rmtree(weights)
            tmp.rename(weights)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest["load_from"] = "weights"  # relative to the manifest: results/ can move
    elif spec.source == "path":
        manifest["load_from"] = str(check_model_folder(spec).resolve())
    elif spec.source == "hub":
        manifest["load_from"] = spec.hub
    else:
        if base_manifest is None or not Path(base_manifest).is_file():
            raise TraitscopeError(
                f"models.{spec.name}: base manifest {base_manifest} not found; prepare the base variant first"
            )
        manifest["base_manifest"] = os.path.relpath(Path(base_manifest).resolve(), out_dir.resolve())
        if spec.source == "finetune":
            if adapter is None or not (Path(adapter) / "adapter_config.json").is_file():
                raise TraitscopeError(
                    f"models.{spec.name}: trained adapter {adapter} not found; run the finetune stage first"
                )
            # relative to the manifest, like the base: results/ can move
            manifest["load_from"] = os.path.relpath(Path(adapter).resolve(), out_dir.resolve())
        else:
            lora = Path(spec.lora["adapter"]).expanduser()
            if spec.lora["adapter"].startswith(("/", "./", "../", "~")) and not lora.exists():
                raise TraitscopeError(
                    f"models.{spec.name}: adapter folder {lora} not found; fix lora.adapter"
                )
            if lora.exists() and not (lora / "adapter_config.json").is_file():
                raise TraitscopeError(
                    f"models.{spec.name}: {lora} has no adapter_config.json; fix lora.adapter"
                )
            manifest["load_from"] = str(lora.resolve()) if lora.exists() else spec.lora["adapter"]
    # What dtype `auto` (or the config) gives on the preparing machine, for the record only:
    # a job on another node (other CPU, or a GPU) decides again when it loads the model.
    device = default_device()
    choice = resolve_dtype(spec.dtype, device)
    cpu = cpu_bf16_probe()
    manifest["dtype_auto"] = {
        "device": device,
        "dtype": str(choice.dtype).removeprefix("torch."),
        "reason": choice.reason,
        "cpu_capability": cpu["capability"],
        "cpu_native_bf16": [flag for flag in ("avx512_bf16", "amx_bf16") if cpu[flag]],
    }
    write_json(out_dir / "manifest.json", manifest)
    return out_dir / "manifest.json"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spec_dict(spec: ModelSpec) -> dict[str, Any]:
    return {
        f.name: getattr(spec, f.name)
        for f in fields(spec)
        if f.name != "name" and getattr(spec, f.name) not in (None, False)
    }


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_manifest(manifest_path: Path) -> tuple[dict, ModelSpec]:
    """A prepared variant's manifest and its spec; one line naming the manifest if it is unreadable."""
    try:
        manifest = json.loads(manifest_path.read_text())
        return manifest, ModelSpec.from_config(manifest["name"], manifest["spec"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):  # KeyError: another stage's JSON
        raise TraitscopeError(
            f"{manifest_path}: missing or unreadable model manifest; rerun prepare-model"
        ) from None


def load(manifest_path: str | Path, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Load a prepared model for inference: eval mode, chat template checked, padding set.

    The dtype decision is printed to stderr (the job log) and kept on the model as
    `model.traitscope_dtype` ({"dtype", "reason"}) for callers to record.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest_path = Path(manifest_path)
    manifest, spec = read_manifest(manifest_path)
    device = device or default_device()
    if spec.source in ("lora", "finetune"):
        return _load_lora(manifest_path, manifest, spec, device, dtype)
    torch_dtype, reason = resolve_dtype(dtype or spec.dtype, device)
    reason = "set by the caller" if dtype not in (None, "auto") else reason
    dtype_name = str(torch_dtype).removeprefix("torch.")
    print(f"traitscope: model {spec.name} on {device}, dtype {dtype_name}: {reason}", file=sys.stderr)
    where = manifest["load_from"]
    if spec.source in ("gguf_package", "gguf_path"):
        where = str(manifest_path.parent / where)
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    if spec.source == "hub":
        kwargs["revision"] = spec.revision
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    if spec.quantization:
        kwargs["quantization_config"] = _bnb_config(spec, torch_dtype)
    device_map = spec.device_map or ("auto" if spec.quantization else None)
    model = AutoModelForCausalLM.from_pretrained(
        where, dtype=torch_dtype, use_safetensors=True, device_map=device_map, **kwargs
    )
    if device_map is None:
        model.to(device)
    model.eval()
    _contiguous_head_input(model)
    model.traitscope_dtype = {"dtype": dtype_name, "reason": reason}
    set_chat_template(tokenizer, spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _contiguous_head_input(model: Any) -> None:
    """Give the output head a contiguous input. A prefill keeps the last position's logits only,
    so the head reads a `[batch, 1, d]` slice of the hidden states, and where the head's weight
    does not require grad (a merged LoRA variant's, say), PyTorch's matmul cannot fold that slice
    into a matrix: it copies the whole `[vocab, d]` weight once per batch row and runs a batched
    matmul. SmolLM2's finetuned variants captured 3-5x slower than their base for that alone."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)


def _contiguous_input(_module: Any, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


# it changes no value: a CUDA graph captured under it may serve later calls (`hooks_key`)
_contiguous_input.graph_key = "contiguous_input"


def load_tokenizer(manifest_path: str | Path) -> Any:
    """A prepared variant's tokenizer alone, with the chat template `load` would set (no weights
    are read: a data stage that only tokenizes must not load a 70B model)."""
    from transformers import AutoTokenizer

    manifest_path = Path(manifest_path)
    manifest, spec = read_manifest(manifest_path)
    if spec.source in ("lora", "finetune"):
        tokenizer = load_tokenizer(manifest_path.parent / manifest["base_manifest"])
        if spec.chat_template:
            set_chat_template(tokenizer, spec)
        return tokenizer
    where = manifest["load_from"]
    if spec.source in ("gguf_package", "gguf_path"):
        where = str(manifest_path.parent / where)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.source == "hub":
        kwargs["revision"] = spec.revision
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    set_chat_template(tokenizer, spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_lora(manifest_path: Path, manifest: dict, spec: ModelSpec, device: str, dtype: str | None):
    """Base model from its own manifest, with the adapter applied on top (peft) and merged
    into the weights: the same function, without the adapter's extra matmuls at every
    projection (unmerged, captures ran 1.2x slower). A quantized base keeps the adapter
    unmerged, since merging would re-quantize the weights.

    A finetuned variant's adapter path is relative to its manifest (both live under results/).
    """
    try:
        from peft import PeftModel
    except ImportError:
        raise TraitscopeError(f"models.{spec.name}: LoRA variants need peft; pip install peft") from None
    model, tokenizer = load(manifest_path.parent / manifest["base_manifest"], device, dtype)
    adapter = manifest["load_from"]
    if spec.source == "finetune":
        adapter = str(manifest_path.parent / adapter)
    model = PeftModel.from_pretrained(model, adapter).eval()
    if not read_manifest(manifest_path.parent / manifest["base_manifest"])[1].quantization:
        model = model.merge_and_unload()
    if spec.chat_template:
        set_chat_template(tokenizer, spec)
    return model, tokenizer


def _bnb_config(spec: ModelSpec, compute_dtype: Any) -> Any:
    """8/4-bit loading config; a clear error where bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise TraitscopeError(
            f"models.{spec.name}: quantization {spec.quantization!r} needs bitsandbytes (and a GPU); "
            "pip install bitsandbytes or remove quantization"
        ) from None
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype)


def template_file(value: str | None) -> str | None:
    """The file a `chat_template` value names, or None for Jinja text (or no value). Jinja text
    always holds `{{` or `{%`, so anything else is a path, and a mistyped one must not become
    the template (every prompt would render as the path's characters)."""
    return None if not value or "{{" in value or "{%" in value else value


def template_text(spec: ModelSpec) -> str:
    """The config's chat template: Jinja text as given, else the file it names (which must exist)."""
    value = spec.chat_template or ""
    if template_file(value) is None:
        return value
    try:
        is_file = Path(value).is_file()
    except OSError:  # a name too long for the file system is not a file either
        is_file = False
    if not is_file:
        raise TraitscopeError(
            f"models.{spec.name}.chat_template: {value!r} is neither Jinja text nor a file "
            f"(from {Path.cwd()}); fix the path"
        )
    return Path(value).read_text()


def set_chat_template(tokenizer: Any, spec: ModelSpec) -> None:
    """Use the config's template if given, else the tokenizer's; neither is a clear error."""
    if spec.chat_template:
        tokenizer.chat_template = template_text(spec)
    if not getattr(tokenizer, "chat_template", None):
        raise TraitscopeError(
            f"model {spec.name!r} has no chat template; set models.{spec.name}.chat_template in the config "
            "(Jinja text or a .jinja file)"
        )
