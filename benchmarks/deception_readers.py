"""Can a small offline reader tell a deceptive answer from an honest one? (issue 27, item 3)

Why: the classifier judge reads evil, harm, refusal and sycophancy on the truth set at AUC
0.98-1.0 but deception at 0.74-0.85 (`judge_written.py`). A deceptive answer there is a false
fact stated plainly, so a reader must know the fact. This benchmark asks whether any signal of
that knowledge is in the readers at all, beside the mean-pooled states the judge uses, with
evil as the control (a trait the judge does read):

- `mean` / `last`: a logistic regression on one layer's answer states, mean-pooled (the
  judge's features) or the answer's last token (where truth probes usually read); layer and C
  by 5-fold CV grouped by question on the training set (`resources/judge_train`), scored on
  the truth set (`resources/judge_truth`), which shares no question with it;
- `surprisal`: nothing fitted; the answer tokens' mean negative log-probability given the
  question (a false fact should surprise a reader that knows the true one);
- `persona_ratio`: nothing fitted; the answer's mean log-probability under the trait's
  eliciting instruction minus under its suppressing one, averaged over the trait's first
  two instruction pairs (style cancels out; what is left is what the reader expects each
  persona to say).

Prints one table (AUC with a stratified bootstrap 95% CI per reader x trait x feature, on the
training set and the truth set) and writes it to --out. A `layer` is an index into the reader's
hidden states (0: the embeddings, so decoder layer N - 1); the fitted features' train column is
the best grouped-CV AUC over every (layer, C), so it flatters them.

Usage: PYTHONPATH=src python benchmarks/deception_readers.py --reader smollm2=M.json
       [--reader gemma3=M.json] --out benchmarks/results/deception_readers_<cpu>.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name  # noqa: E402

from traitscope.data.traits import load_trait  # noqa: E402
from traitscope.judge.truth_set import training_table, truth_table  # noqa: E402
from traitscope.model import chat, loading  # noqa: E402
from traitscope.stats import auc_with_ci  # noqa: E402

ROOT = Path(__file__).parents[1]
TRAITS = ("alignment/deception", "safety/evil")
PAIRS, N_BOOT, SEED, FOLDS, CS = 2, 2000, 0, 5, (0.01, 0.1, 1.0)


def answer_logprobs(model, tokenizer, question: str, answer: str, system: str | None, states: bool):
    """(log p of each answer token, [layers + 1, answer tokens, hidden] states or None)."""
    import torch

    e = chat.encode(tokenizer, chat.messages_for(question, system), response=answer)
    ids = torch.tensor([e.ids])
    at = np.flatnonzero(np.asarray(e.segments) == chat.SEGMENT_CODE["response"])
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=states)
    logp = torch.log_softmax(out.logits[0, at - 1].float(), -1)[torch.arange(len(at)), ids[0, at]]
    h = torch.stack(out.hidden_states, 1)[0][:, at].float().numpy() if states else None
    return logp.numpy(), h


def features(model, tokenizer, table, trait) -> dict[str, np.ndarray]:
    """Per answer: mean and last-token states per layer, surprisal, persona log-ratio."""
    mean, last, surprisal, ratio = [], [], [], []
    for q, a in zip(table.question, table.response):
        lp, h = answer_logprobs(model, tokenizer, q, a, None, True)
        mean.append(h.mean(1))
        last.append(h[:, -1])
        surprisal.append(-lp.mean())
        diffs = [
            answer_logprobs(model, tokenizer, q, a, p.positive, False)[0].mean()
            - answer_logprobs(model, tokenizer, q, a, p.negative, False)[0].mean()
            for p in trait.pairs[:PAIRS]
        ]
        ratio.append(float(np.mean(diffs)))
    return {
        "mean": np.stack(mean),
        "last": np.stack(last),
        "surprisal": np.array(surprisal),
        "ratio": np.array(ratio),
    }


def probe_scores(
    train: np.ndarray, y: np.ndarray, groups: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, int, float]:
    """(truth-set scores, layer, CV AUC) of a logistic regression; grouped CV on `train` picks layer and C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def pipe(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=SEED))

    best = (-1.0, 1, CS[0])
    for layer in range(1, train.shape[1]):
        for c in CS:
            p = cross_val_predict(
                pipe(c), train[:, layer], y, groups=groups, cv=GroupKFold(FOLDS), method="predict_proba"
            )
            best = max(best, (float(roc_auc_score(y, p[:, 1])), layer, c))
    cv_auc, layer, c = best
    return pipe(c).fit(train[:, layer], y).predict_proba(test[:, layer])[:, 1], layer, cv_auc


def auc_cell(scores: np.ndarray, labels: np.ndarray) -> str:
    r = auc_with_ci(scores[labels == 1], scores[labels == 0], n_boot=N_BOOT, seed=SEED)
    return f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reader", action="append", required=True, help="name=manifest.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cpu, _ = cpu_name()
    lines = [
        f"# deception_readers.py (CPU: {cpu}); AUC [stratified bootstrap 95% CI, {N_BOOT}]",
        "# train: resources/judge_train (40 + 40, extraction questions); truth: resources/judge_truth",
        "# (20 + 20, evaluation questions). mean/last: fitted on train, layer and C by grouped CV;",
        "# their train column is the best CV AUC over (layer, C): optimistic. layer: hidden-state index",
        "# (0 = embeddings). surprisal, ratio: nothing fitted.",
        "reader\ttrait\tfeature\ttrain AUC\ttruth AUC [95% CI]",
    ]
    for spec in args.reader:
        name, manifest = spec.split("=", 1)
        model, tokenizer = loading.load(manifest)
        for t in TRAITS:
            trait_file = ROOT / "resources/traits" / f"{t}.yaml"
            trait = load_trait(trait_file)
            train = training_table(ROOT / "resources/judge_train" / f"{t}.yaml", trait_file)
            truth = truth_table(ROOT / "resources/judge_truth" / f"{t}.yaml", trait_file)
            ftr, fte = features(model, tokenizer, train, trait), features(model, tokenizer, truth, trait)
            ytr, yte = train.label.to_numpy(), truth.label.to_numpy()
            groups = train.question.to_numpy()
            for kind in ("mean", "last"):
                scores, layer, cv_auc = probe_scores(ftr[kind], ytr, groups, fte[kind])
                lines.append(f"{name}\t{t}\t{kind} (layer {layer})\t{cv_auc:.3f}\t{auc_cell(scores, yte)}")
            for kind in ("surprisal", "ratio"):
                lines.append(f"{name}\t{t}\t{kind}\t{auc_cell(ftr[kind], ytr)}\t{auc_cell(fte[kind], yte)}")
            print("\n".join(lines[-4:]), flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
