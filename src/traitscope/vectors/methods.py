"""Vector methods: contrastive activations -> one direction per layer.

Activations are `[n, n_layers, d_model]`, positives and negatives row-paired (row i of
each answers the same question under the same instruction pair). Methods are pluggable
like the steering-vectors library's aggregators: `METHODS` maps a config name to a
function `(pos, neg) -> [n_layers, d_model]`. `mean_diff` keeps its norm (the natural
steering scale); `probe` and `pca` are unit length. Projections always use the unit
vector so scores are comparable across methods and layers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Difference of class means per layer: [n_layers, d_model]."""
    return pos.float().mean(0) - neg.float().mean(0)


def probe(pos: torch.Tensor, neg: torch.Tensor, c: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Unit-norm logistic-regression weight per layer, oriented so positives score higher.

    Features are centred and scaled per layer for the solver, and the weights mapped back
    to activation space, so the direction applies to raw activations.
    """
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).float().numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    out = np.zeros(x.shape[1:], dtype=np.float32)
    for layer in range(x.shape[1]):
        feats = x[:, layer]
        scale = feats.std(0) + 1e-6
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit((feats - feats.mean(0)) / scale, y)
        w = clf.coef_[0] / scale
        out[layer] = w / (np.linalg.norm(w) + 1e-12)
    return torch.from_numpy(out)


def pca(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal direction of the paired differences per layer, oriented toward positives.

    Uncentred, as in the steering-vectors PCA aggregator: the direction that explains the
    most of the per-pair shifts, robust to a few pairs that move far.
    """
    deltas = (pos.float() - neg.float()).transpose(0, 1)  # [n_layers, n_pairs, d]
    _, _, vh = torch.linalg.svd(deltas, full_matrices=False)
    first = vh[:, 0]  # [n_layers, d], unit rows
    sign = torch.sign(torch.einsum("lnd,ld->l", deltas, first)).clamp_min(0) * 2 - 1
    return first * sign[:, None]


def unit(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero)."""
    norms = vectors.float().norm(dim=-1, keepdim=True)
    return vectors.float() / norms.clamp_min(1e-12)


def project(acts: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Scalar projection of each activation onto its layer's unit vector: [n, n_layers]."""
    return torch.einsum("nld,ld->nl", acts.float(), unit(vectors))


METHODS: dict[str, Callable[..., torch.Tensor]] = {"mean_diff": mean_diff, "probe": probe, "pca": pca}
