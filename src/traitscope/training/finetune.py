"""LoRA finetune of a prepared variant on chat JSONL: an adapter folder that becomes a new variant.

The loss covers assistant tokens only, and the LM head runs only where the next token is an
assistant token (with a 49k vocabulary the head is a large share of the work on a CPU). A step
takes examples up to a padded-token budget, split into micro-batches whose gradients add up;
the loss is the mean over the step's assistant tokens, so how a step is split never reweights
a token. Checkpoints are atomic and hold every state the next step depends on (adapter,
optimizer, scheduler, RNG) and the data order is a function of the seed alone, so a killed run,
rerun, resumes and ends where an uninterrupted run ends (training/checkpoints.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch

from traitscope.errors import TraitscopeError
from traitscope.io import atomic_dir, save_figure, write_json
from traitscope.model.batching import token_budget_batches
from traitscope.model.loading import default_device, load
from traitscope.training.chat_data import Example, read_chat_jsonl, tokenize_rows
from traitscope.training.checkpoints import resume, save_checkpoint
from traitscope.training.settings import FinetuneSettings


class Batch(NamedTuple):
    """A padded micro-batch: ids, attention and assistant mask `[rows, width]` (the mask on the
    CPU); the (row, column) of each position that predicts an assistant token, and that token."""

    ids: torch.Tensor
    attention: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    labels: torch.Tensor


class Step(NamedTuple):
    epoch: int
    micro_batches: list[list[int]]  # example indices


def plan_steps(lengths: Sequence[int], settings: FinetuneSettings) -> list[Step]:
    """Every optimizer step of every epoch, fixed by the seed (so a resumed run sees the same batches).

    Each epoch is a seeded shuffle cut into steps of at most `tokens_per_step` padded tokens,
    each step split into length-sorted micro-batches of at most `micro_batch_tokens`.
    """

    def split(step: list[int]) -> list[list[int]]:
        batches = token_budget_batches([lengths[i] for i in step], settings.micro_batch_tokens)
        return [[step[j] for j in batch] for batch in batches]

    def padded(step: list[int]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in split(step))

    generator = torch.Generator().manual_seed(settings.seed)
    steps = []
    for epoch in range(settings.epochs):
        step: list[int] = []
        for i in torch.randperm(len(lengths), generator=generator).tolist():
            if step and padded([*step, i]) > settings.tokens_per_step:
                steps.append(Step(epoch, split(step)))
                step = []
            step.append(i)
        steps.append(Step(epoch, split(step)))
    return steps


def add_lora(model: Any, settings: FinetuneSettings) -> Any:
    """The model with fresh LoRA layers, seeded (the adapter's initial weights are the seed's)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.lora_dropout,
        use_rslora=settings.rslora,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_adapter(model: Any, folder: Path) -> None:
    """PEFT's save_pretrained, with target_modules sorted: PEFT keeps them as a set and writes it
    in an order that changes between processes, so two runs' equal adapters differed as files."""
    model.save_pretrained(folder)
    config = Path(folder) / "adapter_config.json"
    data = json.loads(config.read_text())
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True))


def check_target_modules(model: Any, targets: Sequence[str], name: str) -> None:
    """Each LoRA target must name a module of the model (peft's own error lists nothing)."""
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise TraitscopeError(
            f"model {name} has no module {', '.join(missing)} for LoRA; it has {', '.join(linear)}; "
            "fix finetune.target_modules"
        )


def log_progress(record: dict[str, Any], n_steps: int) -> None:
    """The default per-step report: one line on stderr (the job log)."""
    print(
        f"traitscope finetune: step {record['step']}/{n_steps} loss {record['loss']:.4f} "
        f"lr {record['lr']:.3g} tokens {record['tokens']}",
        file=sys.stderr,
    )


def finetune(
    model_manifest: str | Path,
    data: str | Path,
    out: str | Path,
    settings: FinetuneSettings,
    device: str | None = None,
    on_step: Callable[[dict[str, Any], int], None] = log_progress,
) -> Path:
    """Train a LoRA adapter into `<out>/adapter`, with `loss.json` and `loss.png` beside it."""
    from peft import PeftModel
    from transformers import get_linear_schedule_with_warmup

    from traitscope.plotting import finetune_loss_figure

    out = Path(out)
    rows = read_chat_jsonl(data)  # bad rows fail before a large model is loaded
    device = device or default_device()
    # fp32 off CUDA (a CPU trains in fp32 even where it computes bf16 natively); CUDA: bf16 autocast
    dtype = None if device.startswith("cuda") else "float32"
    model, tokenizer = load(model_manifest, device=device, dtype=dtype)
    base_manifest = json.loads(Path(model_manifest).read_text())
    if isinstance(model, PeftModel):  # a finetune of a LoRA variant trains on its merged weights
        model = model.merge_and_unload()
    examples, dropped = tokenize_rows(data, rows, tokenizer, settings.max_length)
    check_target_modules(model, settings.target_modules, base_manifest["name"])

    model = add_lora(model, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = plan_steps([len(ex.ids) for ex in examples], settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, settings.warmup_steps, len(steps))
    forward = SlicedForward(model, tokenizer.pad_token_id)
    forward.check(examples[0])

    data_sha256 = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    fingerprint = _fingerprint(data_sha256, settings, base_manifest, len(steps))
    checkpoints = out / "checkpoints"
    state = resume(checkpoints, model, optimizer, scheduler, fingerprint)
    state = state or {"step": 0, "history": [], "wall_time_s": 0.0}
    history, previous_wall = state["history"], state["wall_time_s"]
    model.train()
    started = time.perf_counter()
    for k in range(state["step"], len(steps)):
        lr = scheduler.get_last_lr()[0]
        loss, tokens, padded = forward.step([[examples[i] for i in b] for b in steps[k].micro_batches])
        if not math.isfinite(loss):
            raise TraitscopeError(f"{data}: the loss diverged at step {k + 1} ({loss}); lower finetune.lr")
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(
            {
                "step": k + 1,
                "epoch": steps[k].epoch,
                "loss": loss,
                "lr": lr,
                "tokens": tokens,
                "padded": padded,
            }
        )
        if (k + 1) % settings.checkpoint_every == 0 and k + 1 < len(steps):
            wall = previous_wall + time.perf_counter() - started
            step_state = {"step": k + 1, "history": history, "fingerprint": fingerprint, "wall_time_s": wall}
            save_checkpoint(checkpoints, model, optimizer, scheduler, step_state)
        on_step(history[-1], len(steps))

    record = {
        "base_model": base_manifest["name"],
        "base_manifest": str(model_manifest),
        "data": str(data),
        "data_sha256": data_sha256,
        "n_examples": len(examples),
        "n_truncated": sum(ex.truncated for ex in examples),
        "n_dropped": dropped,
        "n_assistant_tokens": sum(ex.n_targets for ex in examples),
        "settings": settings.as_dict(),
        "seed": settings.seed,
        "n_steps": len(steps),
        "final_loss": history[-1]["loss"],
        "steps": history,
        "resumed_from": state["step"] or None,
        "wall_time_s": round(previous_wall + time.perf_counter() - started, 2),
        "device": device,
        "dtype": model.get_base_model().traitscope_dtype["dtype"],
        "autocast": str(forward.autocast_dtype).removeprefix("torch.") if forward.autocast_dtype else None,
        "trainable_parameters": sum(p.numel() for p in params),
    }
    atomic_dir(out / "adapter", lambda tmp: save_adapter(model, tmp))
    save_figure(out / "loss.png", finetune_loss_figure(record))
    write_json(out / "loss.json", record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out / "adapter"


class SlicedForward:
    """Forward and backward of micro-batches with the LM head only at trained positions."""

    def __init__(self, model: Any, pad_id: int) -> None:
        inner = model.get_base_model()
        self.model, self.pad_id = model, pad_id
        self.decoder, self.head = inner.get_decoder(), inner.get_output_embeddings()
        self.softcap = getattr(inner.config, "final_logit_softcapping", None)
        self.device = inner.get_input_embeddings().weight.device
        dtype = next(inner.parameters()).dtype
        cuda_bf16 = self.device.type == "cuda" and dtype == torch.bfloat16
        self.autocast_dtype = torch.bfloat16 if cuda_bf16 else None

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _collate(self, batch: list[Example]) -> Batch:
        """The padded batch on the model's device (the mask stays on the CPU). The trained
        positions and their labels are found here, on the CPU: a boolean mask applied on a GPU
        makes the host wait for the device in the middle of the forward pass, an index does not;
        and a GPU gets the tensors through pinned memory without waiting, so the host queues
        this micro-batch while the last one still runs."""
        width = max(len(ex.ids) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        targets = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, ex in enumerate(batch):
            ids[row, : len(ex.ids)] = torch.tensor(ex.ids)
            attention[row, : len(ex.ids)] = 1
            targets[row, : len(ex.ids)] = torch.tensor(ex.targets)
        trained = targets[:, 1:]  # position t predicts token t + 1
        rows, cols = trained.nonzero(as_tuple=True)  # row-major, as the mask would order them
        labels = ids[:, 1:][trained]
        cuda = self.device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(self.device, non_blocking=True) if cuda else t.to(self.device)

        return Batch(move(ids), move(attention), targets, move(rows), move(cols), move(labels))

    def logits(self, batch: Batch) -> torch.Tensor:
        """Logits predicting each assistant token (from the position before it), in fp32."""
        hidden = self.decoder(
            input_ids=batch.ids, attention_mask=batch.attention, use_cache=False
        ).last_hidden_state
        at = hidden[batch.rows.to(hidden.device), batch.cols.to(hidden.device)]
        logits = self.head(at).float()
        return self.softcap * torch.tanh(logits / self.softcap) if self.softcap else logits

    def step(self, micro_batches: list[list[Example]]) -> tuple[float, int, int]:
        """Accumulate the gradient of the step's mean assistant-token loss; (loss, tokens, padded tokens)."""
        n_tokens = sum(ex.n_targets for batch in micro_batches for ex in batch)
        total, padded = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for examples in micro_batches:
            batch = self._collate(examples)
            with self._autocast():
                logits = self.logits(batch)
            labels = batch.labels.to(logits.device)  # device_map: the head may sit elsewhere
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            (loss / n_tokens).backward()
            total += loss.detach().to(total.device, torch.float64)  # read once, at the step's end
            padded += batch.ids.numel()
        return total.item() / n_tokens, n_tokens, padded

    @torch.no_grad()
    def check(self, example: Example) -> None:
        """The sliced head must give the model's own logits (it would not for a model that rescales them)."""
        self.model.eval()
        batch = self._collate([example])
        with self._autocast():
            full = self.model(input_ids=batch.ids, attention_mask=batch.attention).logits
            full = full[:, :-1][batch.targets[:, 1:].to(full.device)]
            sliced = self.logits(batch)
        if not torch.allclose(full.float(), sliced, atol=1e-2, rtol=1e-2):
            raise TraitscopeError(
                f"{type(self.model.get_base_model()).__name__}: its logits are not the LM head of the last "
                "hidden state (rescaled?); finetune does not support this architecture"
            )


def _fingerprint(data_sha256: str, settings: FinetuneSettings, base: dict, n_steps: int) -> str:
    """What a checkpoint must match to be resumed: same data, settings, base model and plan."""
    run = {
        "data": data_sha256,
        "settings": settings.as_dict(),
        "base": {k: base.get(k) for k in ("name", "spec", "load_from")},
        "n_steps": n_steps,
    }
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()
