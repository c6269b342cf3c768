"""Resumable training state: atomic checkpoints of everything the next optimizer step depends on.

A checkpoint folder holds the adapter (peft), the optimizer and scheduler states, the RNG
states (dropout draws from them) and the step and loss history. It appears under its final
name only when complete, so a job killed at any moment leaves either the previous checkpoint
or the new one. A checkpoint is resumed only if its fingerprint (data, settings, base model)
matches the run's; any other is discarded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from traitscope.io import atomic_dir, write_json


def save_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any, state: dict) -> None:
    """`<folder>/step-<n>/` from `state` ({step, history, fingerprint, ...}); older checkpoints go."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}
        torch.save(trainer, tmp / "trainer.pt")
        write_json(tmp / "state.json", state)

    name = f"step-{state['step']:06d}"
    atomic_dir(folder / name, write)
    for old in folder.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old)


def resume(folder: Path, model: Any, optimizer: Any, scheduler: Any, fingerprint: str) -> dict | None:
    """Restore the latest checkpoint into the objects and return its state; None if none matches."""
    from peft import set_peft_model_state_dict

    for tmp in folder.glob(".step-*"):  # a checkpoint being written when the job was killed
        shutil.rmtree(tmp)
    found = sorted(folder.glob("step-*"))
    if not found:
        return None
    latest = found[-1]
    state = json.loads((latest / "state.json").read_text())
    if state["fingerprint"] != fingerprint:
        print(f"traitscope finetune: {folder} is from other data or settings; starting over", file=sys.stderr)
        shutil.rmtree(folder)
        return None
    device = str(next(p for p in model.parameters() if p.requires_grad).device)
    set_peft_model_state_dict(model, load_file(latest / "adapter_model.safetensors", device=device))
    trainer = torch.load(latest / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["rng"]["cpu"])
    if "cuda" in trainer["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
    print(f"traitscope finetune: resuming after step {state['step']} from {latest}", file=sys.stderr)
    return state
