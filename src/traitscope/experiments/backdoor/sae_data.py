"""The SAE's tokens as chunks read on demand, so that training and its quality passes hold a few
copies of `buffer_tokens` activations (a buffer is filled to at least that, one shard at a time),
however many prompts the capture has (issue 29).

A source is a list of chunks: a capture's shards at one layer (only that layer's tensor is read),
or one tensor. Training draws its batches from a shuffle buffer: each pass over the data takes the
chunks in a fresh random order, as many as fit in `buffer_tokens` at a time, and shuffles their
tokens together. When every token fits, the source is loaded once (`resident`) and each pass is a
full shuffle. Which tokens are held out is drawn per chunk from the seed, so it is never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from traitscope.errors import TraitscopeError


@dataclass(frozen=True)
class TokenChunks:
    """`load(i)`: chunk i's float32 `[sizes[i], d]` activations; `names`: each chunk's shard
    (path stem), where it comes from a capture."""

    sizes: tuple[int, ...]
    d: int
    load: Callable[[int], torch.Tensor]
    names: tuple[str, ...] = ()

    @property
    def n_tokens(self) -> int:
        return sum(self.sizes)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.load(i) for i in range(len(self.sizes)))


def tensor_chunks(x: torch.Tensor) -> TokenChunks:
    """One chunk: activations already in memory."""
    if x.ndim != 2:
        raise TraitscopeError(f"SAE activations must be [n, d], got shape {tuple(x.shape)}")
    x = x.float()
    return TokenChunks((len(x),), x.shape[1], lambda i: x)


def capture_chunks(capture_json: str | Path, layer: int) -> TokenChunks:
    """A capture's per-token activations at `layer`, one chunk per shard that holds any; sizes are
    read from the files' headers, each chunk's tensor when it is loaded."""
    from safetensors import safe_open

    from traitscope.capture.store import read_manifest

    manifest = read_manifest(capture_json)
    if layer not in manifest["layers"]:
        raise TraitscopeError(
            f"{capture_json}: layer {layer} was not captured (layers {manifest['layers']}); recapture with it"
        )
    key, folder = f"tokens.layer.{layer}", Path(capture_json).parent / manifest["shard_dir"]
    stems, sizes, d = [], [], int(manifest["d_model"])
    for name in manifest["shards"]:
        with safe_open(str(folder / f"{name}.safetensors"), "pt") as f:
            if key in f.keys():
                stems.append(str(folder / name))
                sizes.append(int(f.get_slice(key).get_shape()[0]))
    if not stems:
        raise TraitscopeError(
            f"{capture_json}: no per-token activations; capture the set with token_segments"
        )

    def load(i: int) -> torch.Tensor:
        with safe_open(f"{stems[i]}.safetensors", "pt") as f:
            return f.get_tensor(key).float()

    return TokenChunks(tuple(sizes), d, load, tuple(stems))


def resident(chunks: TokenChunks) -> TokenChunks:
    """The same tokens loaded once into one chunk (a tensor's single chunk is kept as it is; a
    capture's chunks, named by their shards, are read from disk on every load)."""
    if len(chunks.sizes) == 1 and not chunks.names:
        return chunks
    return tensor_chunks(torch.cat(list(chunks)) if chunks.n_tokens else torch.zeros(0, chunks.d))


def held_out_mask(chunk: int, n: int, fraction: float, seed: int) -> torch.Tensor:
    """Chunk `chunk`'s held-out rows: round(n x fraction) of its n, drawn from (seed, chunk)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + chunk) % 2**63)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: round(n * fraction)]] = True
    return mask


@dataclass(frozen=True)
class Split:
    """The tokens of a source split by `held_out_mask` into training and held-out rows."""

    chunks: TokenChunks
    fraction: float
    seed: int

    def part(self, i: int, held_out: bool) -> torch.Tensor:
        x = self.chunks.load(i)
        mask = held_out_mask(i, len(x), self.fraction, self.seed)
        return x[mask if held_out else ~mask]

    def held_out(self) -> Iterator[torch.Tensor]:
        return (self.part(i, True) for i in range(len(self.chunks.sizes)))

    def train(self) -> Iterator[torch.Tensor]:
        return (self.part(i, False) for i in range(len(self.chunks.sizes)))

    @property
    def n_train(self) -> int:
        return sum(n - round(n * self.fraction) for n in self.chunks.sizes)


def moments(parts: Iterator[torch.Tensor], d: int) -> tuple[int, torch.Tensor, float]:
    """(n, mean `[d]`, mean squared distance to the mean) in float64, one part at a time."""
    n, total, squares = 0, torch.zeros(d, dtype=torch.float64), 0.0
    for part in parts:
        n += len(part)
        for start in range(0, len(part), 65_536):  # float64 copies of a slice, not of the part
            x = part[start : start + 65_536].double()
            total += x.sum(0)
            squares += float(x.pow(2).sum())
    mean = total / max(n, 1)
    return n, mean, squares / max(n, 1) - float(mean.pow(2).sum())


def shuffled_batches(
    split: Split,
    batch_size: int,
    buffer_tokens: int,
    scale: float,
    generator: torch.Generator,
    device: str,
) -> Iterator[torch.Tensor]:
    """Endless training batches of `scale` x activations on `device`: per pass, the chunks in a
    random order (one CPU generator: every device sees the same batches), gathered into buffers
    of at least `buffer_tokens` (or what is left), each shuffled and cut into whole batches (a
    buffer's last, partial batch is dropped, as a new shuffle follows)."""
    if batch_size > min(buffer_tokens, split.n_train):
        raise TraitscopeError(
            f"SAE batch_size {batch_size} exceeds buffer_tokens {buffer_tokens} or the "
            f"{split.n_train} training tokens; lower it"
        )

    def buffers() -> Iterator[torch.Tensor]:
        """Scaled buffers on `device`; only the one in use is held (its parts are let go first)."""
        parts: list[torch.Tensor] = []
        order = torch.randperm(len(split.chunks.sizes), generator=generator).tolist()
        for k, i in enumerate(order):
            parts.append(split.part(i, held_out=False))
            if sum(map(len, parts)) >= buffer_tokens or k == len(order) - 1:
                buffer = torch.cat(parts).mul_(scale).to(device)
                parts.clear()
                yield buffer
                del buffer

    whole = None
    if split.chunks.n_tokens <= buffer_tokens:  # every training token fits: loaded once
        whole = torch.cat(list(split.train())).mul_(scale).to(device)
    while True:
        for data in [whole] if whole is not None else buffers():
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield data[order[start : start + batch_size].to(device)]
            del data
