"""An answer classifier on a language model's hidden states instead of words.

Why: TF-IDF sees only the words an answer shares with the fitted ones; a model's mean-pooled
hidden states also carry tone and meaning. The reading model is given the question and the
answer as a plain user/assistant exchange, never the persona system prompt the answer was
written under, so it can only read what the answer itself shows.

What: the hidden states of every layer, averaged over the answer's tokens; per trait, a
standardised L2 logistic regression on one layer. Layer and C are chosen by 5-fold
cross-validation grouped by question within the fitted (extraction) rows only, then the model
is refitted on all of them. Leak discipline is `AnswerClassifier`'s: only extraction rows are
fitted, and scoring refuses a fitted row or question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from traitscope.errors import TraitscopeError
from traitscope.judge.classifier import check_fit_rows, check_held_out
from traitscope.model import chat

CS = (0.01, 0.1)  # L2 strengths tried (standardised features, a few hundred rows)
FOLDS = 5
BATCH = 16


def answer_states(model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """[n, layers + 1, hidden] mean hidden state over each answer's tokens (no system prompt).

    Runs the model's body only (no LM head: for Gemma 3 270M the 262k-entry head costs more
    than the layers).
    """
    import torch

    response = chat.SEGMENT_CODE["response"]
    encoded = [chat.encode(tokenizer, chat.messages_for(q), response=a) for q, a in zip(questions, answers)]
    body = getattr(model, "model", model)
    device = next(model.parameters()).device
    out = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        width = max(len(encoded[i].ids) for i in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention = torch.zeros_like(ids)
        keep = torch.zeros((len(rows), width))
        for r, i in enumerate(rows):
            e = encoded[i]
            ids[r, : len(e.ids)] = torch.tensor(e.ids)
            attention[r, : len(e.ids)] = 1
            keep[r, : len(e.ids)] = torch.tensor([float(s == response) for s in e.segments])
        if (keep.sum(1) == 0).any():
            raise TraitscopeError("embedding judge: an answer with no tokens; nothing to read")
        with torch.inference_mode():
            states = body(
                input_ids=ids.to(device), attention_mask=attention.to(device), output_hidden_states=True
            ).hidden_states
        h = torch.stack(states, 1).float().cpu()  # [b, layers + 1, width, hidden]
        w = keep[:, None, :, None]
        pooled = ((h * w).sum(2) / w.sum(2)).numpy()
        for r, i in enumerate(rows):
            out[i] = pooled[r]
    return np.stack(out).astype(np.float32)


@dataclass
class EmbeddingClassifier:
    """A fitted logistic regression on one layer's pooled states, and what it was fitted on."""

    layer: int
    model: Any  # sklearn Pipeline (StandardScaler, LogisticRegression)
    cv_auc: float  # the grouped CV AUC within the fitted rows that chose layer and C
    C: float
    fitted_ids: frozenset[str] = field(default_factory=frozenset)
    fitted_questions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def fit(
        cls,
        states: np.ndarray,
        labels: Sequence[int],
        splits: Sequence[str],
        prompt_ids: Sequence[str],
        questions: Sequence[str],
        seed: int = 0,
    ) -> EmbeddingClassifier:
        """Fit on extraction-split rows only; layer and C by grouped CV within them."""
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import GroupKFold, cross_val_predict

        y = check_fit_rows(len(states), labels, splits, prompt_ids)
        groups = np.asarray(list(questions))
        folds = min(FOLDS, len(set(groups)))
        if folds < 2:
            raise TraitscopeError("embedding judge: needs at least 2 fitted questions to choose a layer")
        best = (-1.0, 1, CS[0])
        for layer in range(1, states.shape[1]):  # 0 is the token embeddings: no context
            for c in CS:
                p = cross_val_predict(
                    _pipeline(c, seed),
                    states[:, layer],
                    y,
                    groups=groups,
                    cv=GroupKFold(folds),
                    method="predict_proba",
                )[:, 1]
                score = float(roc_auc_score(y, p))
                if score > best[0]:
                    best = (score, layer, c)
        cv_auc, layer, c = best
        model = _pipeline(c, seed).fit(states[:, layer], y)
        return cls(layer, model, cv_auc, c, frozenset(prompt_ids), frozenset(questions))

    def score_rows(
        self, states: np.ndarray, prompt_ids: Sequence[str], questions: Sequence[str]
    ) -> np.ndarray:
        """P(positive instruction) x 100 per row, after refusing any row or question it was fitted on."""
        check_held_out("embedding judge", self.fitted_ids, self.fitted_questions, prompt_ids, questions)
        if len(states) == 0:
            return np.zeros(0)
        return self.model.predict_proba(states[:, self.layer])[:, 1] * 100.0


def _pipeline(c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
