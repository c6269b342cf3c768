"""Classifier judges fitted on the project-written training set, gated on the truth set (issue 27, item 3).

Why: fitted on a run's own answers, a classifier reads only what SmolLM2-135M put into them
under the persona instructions, which is little (judge_candidates: held-out AUC 0.48-0.74).
Fitted on answers the project wrote to the trait's extraction questions
(`resources/judge_train/`, 40 + 40 per trait), it learns the trait itself; it is then scored
on the truth set (`resources/judge_truth/`: other, evaluation questions, 20 + 20 per trait),
which it never saw, and, where a finished run is given, on that run's held-out answers.

Per judge x trait: the grouped 5-fold CV AUC within the training set (folds by question),
the truth-set AUC with a stratified bootstrap 95% CI, the run's held-out AUC with CI, and the
CPU seconds per judgement (process CPU time of scoring, fit and model load excluded; for
`emb-*` the reader's forward pass per answer plus the regression). The gate of issue 27:
truth AUC >= 0.9 with CI lower bound >= 0.8.

Judges: `tfidf` (traitscope.judge.classifier), `emb-<name>` (traitscope.judge.embedding on a
reader model's pooled hidden states, `--reader name=manifest.json`), `tfidf+emb-<name>`
(the mean of the two scores: a fixed rule, nothing tuned). For a trait with reference facts
(`resources/judge_references/`): `facts` (traitscope.judge.references alone) and `<judge>+facts`
(the mean of a judge's score and the facts' score: what the classifier backend scores).

Usage: PYTHONPATH=src python benchmarks/judge_written.py --work DIR [--results RUN/results]
       [--reader gemma3=M.json] [--tag bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name  # noqa: E402
from judge_candidates import Reader  # noqa: E402

from traitscope.judge.classifier import AnswerClassifier  # noqa: E402
from traitscope.judge.classifier_agreement import answer_table  # noqa: E402
from traitscope.judge.embedding import EmbeddingClassifier  # noqa: E402
from traitscope.judge.references import ReferenceScorer, load_references  # noqa: E402
from traitscope.judge.truth_set import training_table, truth_table  # noqa: E402
from traitscope.stats import auc_with_ci  # noqa: E402

N_BOOT, SEED, FOLDS = 2000, 0, 5
ROOT = Path(__file__).parents[1]
PERSONA = ("safety/evil", "safety/harm", "safety/refusal", "alignment/deception", "alignment/sycophancy")
TARGET, TARGET_LOW = 0.9, 0.8
NOTES = """
cv: 5-fold CV within the training set (resources/judge_train, 40 + 40 per trait, extraction
questions), folds grouped by question. truth: fitted on the whole training set, scored on the
truth set (resources/judge_truth, 20 + 20 per trait, evaluation questions: none shared with
training); stratified bootstrap 95% CI (2000, seed 0). run held-out: the same fitted judge on a
finished run's positive- vs negative-instruction answers to the evaluation questions (SmolLM2-135M,
32-token answers, 60 + 60 per trait): how much of the trait that run's answers show, not only how
well the judge reads. gate: truth AUC >= 0.9 and CI low >= 0.8 (issue 27). CPU-s/j: process CPU
time per judgement (all threads), fit and model load excluded, on 2 shared cores while other
jobs ran; emb-*: the reader's forward pass (Gemma 3 270M Q4_K_M, bf16) plus the regression.
Both written sets are the project's writing by one author: the truth AUC is an easy floor (plain
answers), not a benchmark of subtle cases."""


def auc(scores: np.ndarray, labels: np.ndarray) -> dict:
    labels = np.asarray(labels)
    return auc_with_ci(scores[labels == 1], scores[labels == 0], n_boot=N_BOOT, seed=SEED)


def grouped_cv(train, fit_score) -> float:
    """AUC of out-of-fold scores within the training set, folds grouped by question."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    scores = np.zeros(len(train))
    for fit, held in GroupKFold(n_splits=FOLDS).split(train, groups=train["question"]):
        scores[held] = fit_score(train.iloc[fit], train.iloc[held], fit, held)
    return float(roc_auc_score(train["label"], scores))


def fmt(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def run_table(results: Path | None, name: str):
    """The run's held-out (evaluation-split) answers of a trait, or None without a run."""
    if results is None:
        return None
    table = answer_table(
        results / "prompts" / "traits" / f"{name}.parquet",
        results / "capture" / "smollm2" / "traits" / name / "capture.json",
    )
    return table


def trait_rows(name: str, results: Path | None, tag: str, readers: list[Reader]) -> list[dict]:
    trait_file = ROOT / "resources" / "traits" / f"{name}.yaml"
    train = training_table(ROOT / "resources" / "judge_train" / f"{name}.yaml", trait_file)
    truth = truth_table(ROOT / "resources" / "judge_truth" / f"{name}.yaml", trait_file)
    run = run_table(results, name)
    held = None if run is None else run[run["split"] == "evaluation"].reset_index(drop=True)
    rows = []

    def tfidf_fit(rows_):
        return AnswerClassifier.fit(
            rows_["response"], rows_["label"], rows_["split"], rows_["prompt_id"], rows_["question"]
        )

    t0 = time.process_time()
    tfidf = tfidf_fit(train)
    t1 = time.process_time()
    s_truth = tfidf.score_rows(truth["response"], truth["prompt_id"], truth["question"])
    cost = (time.process_time() - t1) / len(truth)
    s_held = None if held is None else tfidf.score(held["response"])
    cv = grouped_cv(train, lambda a, b, *_: tfidf_fit(a).score(b["response"]))
    rows.append(
        {
            "judge": "tfidf",
            "cv": cv,
            "truth": auc(s_truth, truth["label"]),
            "held": None if held is None else auc(s_held, held["label"]),
            "cpu": cost,
            "fit_cpu": t1 - t0,
            "note": f"fit {t1 - t0:.2f} CPU-s on {len(train)}",
            "scores": (s_truth, s_held),
        }
    )
    key = name.replace("/", "_")
    for reader in readers:
        x_train = reader.states(f"train_{key}", train["question"].tolist(), train["response"].tolist(), False)
        x_truth = reader.states(f"truth_{key}", truth["question"].tolist(), truth["response"].tolist(), False)
        x_run = (
            None
            if run is None
            else reader.states(f"{tag}_{key}", run["question"].tolist(), run["response"].tolist())
        )
        t0 = time.process_time()
        emb = EmbeddingClassifier.fit(
            x_train[0], train["label"], train["split"], train["prompt_id"], train["question"]
        )
        t1 = time.process_time()
        e_truth = emb.score_rows(x_truth[0], truth["prompt_id"], truth["question"])
        per = x_truth[1] + (time.process_time() - t1) / len(truth)
        e_held = None
        if x_run is not None:
            e_held = (
                emb.model.predict_proba(x_run[0][(run["split"] == "evaluation").to_numpy(), emb.layer])[:, 1]
                * 100
            )
        rows.append(
            {
                "judge": f"emb-{reader.name}",
                "cv": emb.cv_auc,
                "truth": auc(e_truth, truth["label"]),
                "held": None if e_held is None else auc(e_held, held["label"]),
                "cpu": per,
                "fit_cpu": t1 - t0,
                "note": f"layer {emb.layer}, C {emb.C} (chosen by the grouped CV); fit {t1 - t0:.1f} CPU-s",
                "scores": (e_truth, e_held),
            }
        )
        both_truth = (s_truth + e_truth) / 2
        both_held = None if e_held is None else (s_held + e_held) / 2
        rows.append(
            {
                "judge": f"tfidf+emb-{reader.name}",
                "cv": None,
                "truth": auc(both_truth, truth["label"]),
                "held": None if both_held is None else auc(both_held, held["label"]),
                "cpu": per + cost,
                "fit_cpu": None,
                "note": "mean of the two scores",
            }
        )
    rows += facts_rows(name, trait_file, train, truth, held, rows)
    for row in rows:
        row.pop("scores", None)
        t = row["truth"]
        row["passes"] = bool(t["auc"] >= TARGET and t["ci_low"] >= TARGET_LOW)
        row["n"] = {"train": len(train), "truth": len(truth), "held": 0 if held is None else len(held)}
    return rows


def facts_rows(name: str, trait_file: Path, train, truth, held, judges: list[dict]) -> list[dict]:
    """The reference-facts scorer alone and averaged with each single judge, where the trait has facts."""
    path = ROOT / "resources" / "judge_references" / f"{name}.yaml"
    if not path.is_file():
        return []
    facts = load_references(path, trait_file)

    def fit(rows_):
        return ReferenceScorer.fit(
            facts, path, rows_["question"].tolist(), rows_["response"].tolist(), rows_["label"]
        )

    scorer = fit(train)
    t0 = time.process_time()
    f_truth = scorer.score(truth["question"].tolist(), truth["response"].tolist())
    cost = (time.process_time() - t0) / len(truth)
    f_held = None if held is None else scorer.score(held["question"].tolist(), held["response"].tolist())
    cv = grouped_cv(train, lambda a, b, *_: fit(a).score(b["question"].tolist(), b["response"].tolist()))
    out = [
        {
            "judge": "facts",
            "cv": cv,
            "truth": auc(f_truth, truth["label"]),
            "held": None if held is None else auc(f_held, held["label"]),
            "cpu": cost,
            "fit_cpu": None,
            "note": "reference facts alone",
        }
    ]
    for row in judges:
        if "+" in row["judge"]:
            continue
        j_truth, j_held = row["scores"]
        both_held = None if f_held is None or j_held is None else (j_held + f_held) / 2
        out.append(
            {
                "judge": f"{row['judge']}+facts",
                "cv": None,
                "truth": auc((j_truth + f_truth) / 2, truth["label"]),
                "held": None if both_held is None else auc(both_held, held["label"]),
                "cpu": row["cpu"] + cost,
                "fit_cpu": None,
                "note": "mean with the facts' score (the classifier backend's score)",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="cache of hidden states")
    parser.add_argument("--results", type=Path, default=None, help="a finished run's results folder")
    parser.add_argument("--tag", default="bf16", help="the run's name in the work folder's cache files")
    parser.add_argument("--reader", action="append", default=[], help="name=manifest.json of a reader model")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    readers = [Reader(*r.split("=", 1), args.work, False) for r in args.reader]
    cpu, slug = cpu_name()
    columns = (
        ("judge", 18),
        ("trait", 21),
        ("cv", 6),
        ("truth AUC [95% CI]", 24),
        ("run held-out AUC [95% CI]", 26),
        ("CPU-s/j", 8),
        ("gate", 5),
    )
    head = " ".join(f"{c:<{w}}" for c, w in columns) + " note"
    run = "none" if args.results is None else f"{args.results} ({args.tag})"
    lines = [
        f"classifier judges fitted on the written training set; CPU: {cpu}; run: {run}",
        "",
        head,
        "-" * len(head),
    ]
    record = {"cpu": cpu, "run": None if args.results is None else str(args.results), "rows": []}
    for name in PERSONA:
        for row in trait_rows(name, args.results, args.tag, readers):
            cv = "" if row["cv"] is None else f"{row['cv']:.3f}"
            lines.append(
                f"{row['judge']:<18} {name:<21} {cv:<6} {fmt(row['truth']):<24} {fmt(row['held']):<26} "
                f"{row['cpu']:<8.2g} {'pass' if row['passes'] else 'fail':<5} {row['note']}"
            )
            print(lines[-1], flush=True)
            record["rows"].append({"trait": name, **row})
    text = "\n".join(lines) + "\n" + NOTES
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"judge_written_{slug}.txt").write_text(text + "\n")
    (args.out_dir / f"judge_written_{slug}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
