"""The backdoor SAE trains on a GPU when one is present (sae_train asks for one): the same
batches as on the CPU, so the same SAE up to float rounding. On a machine without CUDA this
file is skipped; TRAITSCOPE_TEST_DEVICE=cpu runs its logic on the CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from traitscope.experiments.backdoor.sae import reconstruction_quality, train_sae
from traitscope.experiments.backdoor.settings import SAESettings
from traitscope.settings import from_schema

DEVICE = os.environ.get("TRAITSCOPE_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


def planted(n: int = 6000, d: int = 32, m: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations made of 3-sparse codes over `m` unit directions, plus noise and an offset."""
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(m, d, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, m, generator=g) < 3 / m) * (torch.rand(n, m, generator=g) * 2 + 0.5)
    return codes @ directions + 0.01 * torch.randn(n, d, generator=g) + 5.0, directions


def test_sae_trained_on_the_device_matches_the_cpu_run():
    x, directions = planted()
    settings = from_schema(SAESettings, width=96, k=4, tokens=40_000, lr=5e-3, batch_size=256, aux_k=16)
    on_cpu, cpu_curve, cpu_quality = train_sae(x, settings)
    on_device, curve, quality = train_sae(x, settings, device=DEVICE)
    assert quality["device"] == DEVICE and cpu_quality["device"] == "cpu"
    assert on_device.W_enc.device.type == "cpu"  # returned ready to save
    held_out = quality["held_out"]["fraction_variance_explained"]
    assert held_out == pytest.approx(cpu_quality["held_out"]["fraction_variance_explained"], abs=0.01)
    assert held_out > 0.8
    assert len(curve) == len(cpu_curve) and [p["tokens"] for p in curve] == [p["tokens"] for p in cpu_curve]
    # the same planted directions are found (TopK ties may break differently in the last bits)
    for sae in (on_cpu, on_device):
        decoder = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
        assert (directions @ decoder.T).max(dim=1).values.mean() > 0.9
    # the quality pass runs where the SAE lives, a chunk at a time
    assert reconstruction_quality(on_device, x, batch=1000)["fraction_variance_explained"] == pytest.approx(
        quality["all_tokens"]["fraction_variance_explained"], abs=1e-4
    )


def test_sae_features_encode_on_the_device_as_on_the_cpu():
    """backdoor_sae_features encodes where the SAE lives: the chosen latents and the per-prompt
    means come back to the CPU equal to the CPU's, chunk boundaries included."""
    from traitscope.experiments.backdoor.sae import SparseAutoencoder
    from traitscope.experiments.backdoor.sae_features import _feature_scores
    from traitscope.experiments.backdoor.sae_stages import encode_columns

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 32, generator=g)
    sae = SparseAutoencoder(32, 96, 8)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    groups = {"p": torch.randint(-1, 40, (1000,), generator=g).numpy()}
    on_cpu = encode_columns(sae, x, [5, 1, 70], batch=300), _feature_scores(sae, x, groups, batch=300)["p"]
    sae.to(DEVICE)
    on_device = encode_columns(sae, x, [5, 1, 70], batch=300), _feature_scores(sae, x, groups, batch=300)["p"]
    assert (on_cpu[0] > 0).mean() > 0.01 and on_cpu[1].shape == (40, 96)
    for a, b in zip(on_cpu, on_device):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
