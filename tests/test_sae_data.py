"""The SAE's training tokens streamed from a capture's shards (`sae_data`): every training token
once per pass through a bounded shuffle buffer, held-out rows never trained on, quality sums
that do not depend on how the tokens are split, and one layer read per shard."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_sae_device import planted

from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.sae import SparseAutoencoder, reconstruction_quality, train_sae
from traitscope.experiments.backdoor.sae_data import (
    Split,
    TokenChunks,
    capture_chunks,
    held_out_mask,
    resident,
    shuffled_batches,
    tensor_chunks,
)
from traitscope.experiments.backdoor.settings import SAESettings
from traitscope.settings import from_schema


def counted_chunks(sizes: list[int], d: int = 2) -> tuple[TokenChunks, list[int]]:
    """Chunks whose first column is each token's global index; `loads` lists every chunk read."""
    loads: list[int] = []
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def load(i: int) -> torch.Tensor:
        loads.append(i)
        x = torch.zeros(sizes[i], d)
        x[:, 0] = torch.arange(starts[i], starts[i] + sizes[i], dtype=torch.float32)
        return x

    return TokenChunks(tuple(sizes), d, load), loads


def test_reconstruction_quality_by_hand_over_any_split_of_the_tokens():
    """Identity weights, k = 1: each token keeps its larger coordinate. Rows (3, 1), (0, 2),
    (1, 0.5): squared errors 1, 0, 0.25; mean (4/3, 7/6), squared deviations summed 14/3 + 7/6 =
    35/6; FVE 1 - 1.25 / (35/6) = 11/14; L0 1; both latents fire."""
    sae = SparseAutoencoder(2, 2, 1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
    x = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 0.5]])
    expected = {"fraction_variance_explained": 11 / 14, "mean_l0": 1.0, "dead_fraction": 0.0, "n_tokens": 3}
    for parts in (x, [x[:1], x[1:]], iter([x[:2], x[2:]])):
        assert reconstruction_quality(sae, parts, batch=2) == pytest.approx(expected)


def test_held_out_rows_are_drawn_per_chunk_from_the_seed():
    masks = [held_out_mask(chunk, 50, 0.1, seed=3) for chunk in (0, 0, 1)]
    assert [int(m.sum()) for m in masks] == [5, 5, 5]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert not torch.equal(masks[0], held_out_mask(0, 50, 0.1, seed=4))
    assert int(held_out_mask(0, 7, 0.5, seed=0).sum()) == round(3.5)


def test_a_pass_streams_every_training_token_once_and_reads_each_chunk_once():
    """Chunks of 7, 5, 9 and 6 tokens through a buffer of 8, batches of 3: within a pass no token
    repeats, no held-out token appears, each buffer drops under a batch, each chunk is read once."""
    chunks, loads = counted_chunks([7, 5, 9, 6])
    split = Split(chunks, 0.2, seed=0)
    held_out = {int(v) for part in split.held_out() for v in part[:, 0]}
    train = set(range(27)) - held_out
    loads.clear()
    batches, seen = shuffled_batches(split, 3, 8, 1.0, torch.Generator().manual_seed(0), "cpu"), []
    while True:
        batch = next(batches)
        if len(loads) > 4:  # a second pass began
            break
        assert batch.shape == (3, 2)
        seen += [int(v) for v in batch[:, 0]]
    assert sorted(loads[:4]) == [0, 1, 2, 3]
    assert len(seen) == len(set(seen)) and set(seen) <= train
    assert len(train) - len(seen) <= 2 * 4  # each buffer (at most one per chunk) drops < 3


def test_a_source_that_fits_the_buffer_is_read_once_and_scaled():
    chunks, loads = counted_chunks([7, 5])
    split = Split(chunks, 0.2, seed=0)
    loads.clear()
    batches = shuffled_batches(split, 2, 12, 10.0, torch.Generator().manual_seed(0), "cpu")
    drawn = torch.cat([next(batches) for _ in range(20)])  # four passes over 10 training tokens
    assert sorted(loads) == [0, 1]
    train = sorted(int(v) * 10 for part in split.train() for v in part[:, 0])
    assert sorted(drawn[:10, 0].tolist()) == train and drawn[:, 1].abs().sum() == 0


def test_an_sae_trained_from_streamed_chunks_finds_the_planted_directions():
    """Six chunks of 1,000 tokens through a buffer of 2,500: the same recovery as from one tensor."""
    x, directions = planted()
    chunks = TokenChunks((1000,) * 6, 32, lambda i: x[i * 1000 : (i + 1) * 1000])
    settings = from_schema(
        SAESettings, width=96, k=4, tokens=40_000, lr=5e-3, batch_size=256, aux_k=16, buffer_tokens=2500
    )
    sae, curve, quality = train_sae(chunks, settings)
    decoder = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    assert (directions @ decoder.T).max(dim=1).values.mean() > 0.9
    assert quality["held_out"]["n_tokens"] == 600 and quality["all_tokens"]["n_tokens"] == 6000
    assert quality["held_out"]["fraction_variance_explained"] > 0.8
    assert curve[-1]["tokens"] == 157 * 256  # ceil(40,000 / 256) steps of whole batches
    held_out = torch.cat(list(Split(chunks, settings.eval_fraction, settings.seed).held_out()))
    assert reconstruction_quality(sae, held_out) == pytest.approx(quality["held_out"])


def test_train_sae_refuses_a_buffer_under_a_batch_and_an_empty_side():
    x, _ = planted(n=200)
    with pytest.raises(TraitscopeError, match="buffer_tokens 100 is under batch_size 256"):
        train_sae(x, from_schema(SAESettings, width=8, k=2, batch_size=256, buffer_tokens=100))
    chunks, _ = counted_chunks([7, 5])  # 10 training tokens: a batch of 11 would never come
    with pytest.raises(TraitscopeError, match="batch_size 11 exceeds buffer_tokens 64 or the 10 training"):
        next(shuffled_batches(Split(chunks, 0.2, 0), 11, 64, 1.0, torch.Generator(), "cpu"))
    with pytest.raises(TraitscopeError, match="leaves 12 of 12 tokens to train on"):
        train_sae(x[:12], from_schema(SAESettings, width=8, k=2, eval_fraction=0.01))


def write_capture(folder, shards: list[dict[str, torch.Tensor]], layers=(0, 1), d: int = 4) -> str:
    """A capture's manifest and shard files, as the store lays them out."""
    (folder / "shards").mkdir(parents=True)
    for i, tensors in enumerate(shards):
        save_file(tensors, str(folder / "shards" / f"s{i}.safetensors"))
    manifest = {
        "layers": list(layers),
        "d_model": d,
        "shard_dir": "shards",
        "shards": [f"s{i}" for i in range(3)],
    }
    (folder / "capture.json").write_text(json.dumps(manifest))
    return str(folder / "capture.json")


def test_capture_chunks_read_one_layer_of_the_shards_that_hold_tokens(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    shards = [
        {"tokens.layer.1": a, "tokens.layer.0": -a},
        {"pooled.layer.1": torch.randn(2, 1, 4, generator=g)},  # a shard without per-token rows
        {"tokens.layer.1": b.bfloat16(), "tokens.layer.0": -b},
    ]
    path = write_capture(tmp_path / "c", shards)
    chunks = capture_chunks(path, 1)
    assert (
        chunks.sizes == (5, 3)
        and chunks.d == 4
        and [n.rsplit("/", 1)[1] for n in chunks.names] == ["s0", "s2"]
    )
    assert torch.equal(chunks.load(0), a) and torch.equal(chunks.load(1), b.bfloat16().float())
    assert chunks.load(1).dtype == torch.float32
    single = capture_chunks(write_capture(tmp_path / "one", [shards[0]] * 3), 1)
    held = resident(single)  # three shards, or one: in memory after one read each
    assert held.sizes == (15,) and not held.names and torch.equal(held.load(0), torch.cat([a, a, a]))
    one = TokenChunks((5,), 4, single.load, single.names[:1])
    assert resident(one).names == () and torch.equal(resident(one).load(0), a)
    with pytest.raises(TraitscopeError, match="layer 5 was not captured"):
        capture_chunks(path, 5)
    empty = write_capture(tmp_path / "e", [{"pooled.layer.0": torch.zeros(1, 1, 4)}] * 3)
    with pytest.raises(TraitscopeError, match="no per-token activations"):
        capture_chunks(empty, 0)
    with pytest.raises(TraitscopeError, match=r"must be \[n, d\]"):
        tensor_chunks(torch.zeros(3))
