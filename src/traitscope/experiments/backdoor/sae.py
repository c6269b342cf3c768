"""A TopK sparse autoencoder over one layer's activations: train, encode, save and load.

The layout on disk is SAELens's (`cfg.json` + `sae_weights.safetensors` with W_enc
`[d_in, d_sae]`, b_enc `[d_sae]`, W_dec `[d_sae, d_in]`, b_dec `[d_in]`), so an SAE trained
here opens in SAELens and an SAELens SAE of the right model and layer loads here. Encoding
follows SAELens: subtract b_dec (apply_b_dec_to_input), multiply by W_enc, add b_enc, keep
the k largest pre-activations (ReLU on them) for "topk", or ReLU everything for "standard".

Training (`train_sae`; the pipeline stage is `sae_stages.sae_train`) fits one layer's per-
token activations: inputs are scaled to unit mean squared norm per dimension while training
and the scale is folded back into the weights, so the saved SAE works on raw activations.
The decoder rows are kept at unit norm, and an auxiliary TopK loss on dead latents (Gao et
al. 2024, "Scaling and evaluating sparse autoencoders") keeps latents from dying on small
data.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.sae_data import (
    Split,
    TokenChunks,
    moments,
    shuffled_batches,
    tensor_chunks,
)
from traitscope.experiments.backdoor.settings import SAESettings
from traitscope.io import atomic_dir

WEIGHTS = "sae_weights.safetensors"
CONFIG = "cfg.json"
ARCHITECTURES = ("topk", "standard")


class SparseAutoencoder(torch.nn.Module):
    """SAELens-compatible parameters and encode/decode."""

    def __init__(self, d_in: int, d_sae: int, k: int | None, architecture: str = "topk") -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise TraitscopeError(
                f"SAE architecture {architecture!r}: supported are {', '.join(ARCHITECTURES)}"
            )
        if architecture == "topk" and not (k and 0 < k <= d_sae):
            raise TraitscopeError(f"SAE k {k}: needs 0 < k <= width {d_sae}")
        self.d_in, self.d_sae, self.k, self.architecture = d_in, d_sae, k, architecture
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.apply_b_dec_to_input = True

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "standard":
            return torch.relu(pre)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations `[..., d_sae]` of activations `[..., d_in]`."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


def check_width(sae: SparseAutoencoder, d_model: int, where: str) -> None:
    """The SAE's input width must be the model's hidden size."""
    if sae.d_in != d_model:
        raise TraitscopeError(
            f"{where}: SAE d_in {sae.d_in} does not match the model's hidden size {d_model}; "
            "use an SAE trained on this model (or train one: set sae.path to null)"
        )


def save_sae(sae: SparseAutoencoder, folder: str | Path, metadata: dict[str, Any]) -> None:
    """Write the SAELens layout atomically (the folder appears complete or not at all)."""
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.k

    def write(tmp: Path) -> None:
        tensors = {
            name: getattr(sae, name).detach().float().contiguous()
            for name in ("W_enc", "b_enc", "W_dec", "b_dec")
        }
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")

    atomic_dir(folder, write)


def _architecture(cfg: dict, where: str) -> tuple[str, int | None]:
    """(architecture, k) from a SAELens cfg.json, new style or the older activation_fn fields."""
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "standard" and act == "topk":  # SAELens < 6 stored TopK SAEs this way
        arch = "topk"
    if arch not in ARCHITECTURES:
        raise TraitscopeError(
            f"{where}: SAE architecture {arch!r} is not supported (only {', '.join(ARCHITECTURES)})"
        )
    if arch == "standard" and act not in (None, "relu"):
        raise TraitscopeError(f"{where}: activation {act!r} is not supported for a standard SAE (relu only)")
    k = cfg.get("k", kwargs.get("k"))
    if arch == "topk" and k is None:
        raise TraitscopeError(f"{where}: a topk SAE needs k in cfg.json (k or activation_fn_kwargs.k)")
    return arch, (int(k) if k is not None else None)


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """An SAE from a SAELens-format folder; every shape is checked against cfg.json."""
    folder = Path(folder)
    where = str(folder)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        raise TraitscopeError(
            f"{where}: no readable {CONFIG}; expected a SAELens-format SAE folder"
        ) from None
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types
        raise TraitscopeError(f"{where}: cannot read {WEIGHTS} ({exc})") from None
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in tensors]
    if missing or "d_in" not in cfg or "d_sae" not in cfg:
        raise TraitscopeError(
            f"{where}: missing {', '.join(missing) or 'd_in/d_sae in cfg.json'}; not a SAELens SAE"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise TraitscopeError(f"{where}: normalize_activations {norm!r} is not supported (only none)")
    arch, k = _architecture(cfg, where)
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise TraitscopeError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)}, but cfg.json's d_in {d_in} "
                f"and d_sae {d_sae} need {shape}"
            )
    sae = SparseAutoencoder(d_in, d_sae, k, arch)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    with torch.no_grad():
        for name in expected:
            getattr(sae, name).copy_(tensors[name].float())
    return sae.eval()


@torch.no_grad()
def reconstruction_quality(
    sae: SparseAutoencoder, x: torch.Tensor | Iterable[torch.Tensor], batch: int = 4096
) -> dict[str, float]:
    """Fraction of variance explained, mean L0 and the share of latents that never fire on `x`
    (a tensor, or its parts one at a time), on the SAE's device a chunk at a time."""
    device = sae.W_enc.device
    sse, fired, l0, n = 0.0, torch.zeros(sae.d_sae, dtype=torch.bool, device=device), 0.0, 0
    total, squares = torch.zeros(sae.d_in, dtype=torch.float64), 0.0  # for the variance, in one pass
    for part in [x] if isinstance(x, torch.Tensor) else x:
        n += len(part)
        for start in range(0, len(part), batch):
            exact = part[start : start + batch].double()
            total += exact.sum(0)
            squares += float(exact.pow(2).sum())
            chunk = part[start : start + batch].float().to(device)
            f = sae.encode(chunk)
            sse += float(((sae.decode(f) - chunk) ** 2).sum())
            fired |= (f > 0).any(0)
            l0 += float((f > 0).sum())
    sst = squares - float(total.pow(2).sum()) / max(n, 1)
    return {
        "fraction_variance_explained": 1.0 - sse / sst if sst > 0 else float("nan"),
        "mean_l0": l0 / max(n, 1),
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": n,
    }


def _init(d: int, mean: torch.Tensor, settings: SAESettings, generator: torch.Generator) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, settings.width, settings.k)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(settings.width, d, generator=generator))
        sae.normalize_decoder()
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean)
    return sae


def train_sae(
    x: torch.Tensor | TokenChunks, settings: SAESettings, log_every: int | None = None, device: str = "cpu"
) -> tuple[SparseAutoencoder, list[dict[str, float]], dict[str, Any]]:
    """Train a TopK SAE on activations `[n, d_in]` (a tensor, or chunks read on demand); (sae,
    training curve, held-out quality).

    `eval_fraction` of each chunk's tokens (seeded) is held out; training cycles over the rest,
    through a shuffle buffer of `buffer_tokens` (`sae_data`), until `tokens` tokens were seen
    (training tokens that fit the buffer are loaded once; the caller loads a source that fits,
    as `sae_train` does, so the quality passes read memory too).
    `device` runs the steps and the quality passes (a GPU: the full-scale SAE, 16K latents over
    4M tokens of width 2304, is ~1e15 FLOPs, hours on a CPU); the shuffles come from one CPU
    generator, so every device sees the same batches, and the SAE returned lives on the CPU.
    """
    chunks = x if isinstance(x, TokenChunks) else tensor_chunks(x)
    if chunks.n_tokens < 10:
        raise TraitscopeError(f"SAE training needs at least 10 tokens of activations, got {chunks.n_tokens}")
    if settings.k > settings.width:
        raise TraitscopeError(f"SAE k {settings.k} exceeds width {settings.width}")
    if settings.buffer_tokens < settings.batch_size:
        raise TraitscopeError(
            f"SAE buffer_tokens {settings.buffer_tokens} is under batch_size {settings.batch_size}; raise it"
        )
    split = Split(chunks, settings.eval_fraction, settings.seed)
    n_train, mean, spread = moments(split.train(), chunks.d)
    if n_train == 0 or n_train == chunks.n_tokens:
        raise TraitscopeError(
            f"SAE eval_fraction {settings.eval_fraction} leaves {n_train} of {chunks.n_tokens} tokens to "
            "train on; it needs some on each side"
        )
    # train on unit mean squared norm per dimension; the scale is folded back at the end
    scale = math.sqrt(chunks.d / spread)
    generator = torch.Generator().manual_seed(settings.seed)
    sae = _init(chunks.d, mean.float() * scale, settings, generator).to(device)
    batch_size = min(settings.batch_size, n_train)
    batches = shuffled_batches(split, batch_size, settings.buffer_tokens, scale, generator, device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    n_steps = max(1, math.ceil(settings.tokens / batch_size))
    log_every = log_every or max(1, n_steps // 50)  # about 50 points on the training curve
    last_fired = torch.zeros(settings.width, dtype=torch.long, device=device)  # tokens seen at last firing
    seen, curve = 0, []
    variance = spread * scale**2 * n_train / max(n_train - 1, 1)  # per-dimension variances, summed
    started = time.perf_counter()
    for step in range(1, n_steps + 1):
        batch = next(batches)
        pre = sae.pre_activations(batch)
        f = sae.activate(pre)
        recon = sae.decode(f)
        mse = (recon - batch).pow(2).sum(-1).mean()
        seen += len(batch)
        last_fired[(f > 0).any(0)] = seen
        dead = (seen - last_fired) > settings.dead_after
        loss = mse
        aux = torch.zeros((), device=device)
        if settings.aux_k and dead.any():
            k_aux = min(settings.aux_k, int(dead.sum()))
            masked = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
            aux_f = torch.zeros_like(pre).scatter_(-1, masked.indices, torch.relu(masked.values))
            residual = (batch - recon).detach()  # dead latents learn what the live ones miss
            aux = (aux_f @ sae.W_dec - residual).pow(2).sum(-1).mean()
            loss = mse + settings.aux_coefficient * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalize_decoder()
        if step % log_every == 0 or step == n_steps:
            mse_value = float(mse.detach())
            curve.append(
                {
                    "step": step,
                    "tokens": seen,
                    "mse": mse_value,
                    "fraction_variance_explained": 1.0 - mse_value / (variance + 1e-12),
                    "dead_fraction": float(dead.float().mean()),
                    "aux_loss": float(aux.detach()),
                }
            )
    batches.close()  # lets its buffer (the whole training set, where it fits) go before the quality passes
    with torch.no_grad():  # fold the input scale back: the saved SAE takes raw activations
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)
    sae.eval()
    quality = {
        "held_out": reconstruction_quality(sae, split.held_out()),
        "all_tokens": reconstruction_quality(sae, chunks),
        "input_scale": scale,
        "n_steps": n_steps,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "device": str(device),
    }
    return sae.cpu(), curve, quality
