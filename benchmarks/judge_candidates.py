"""Offline judge candidates side by side: which one reads a persona trait? (issue 27, item 3)

Per persona trait of a finished run, each judge is scored two ways:
- held-out: AUC separating the run's positive- from negative-instruction answers to the
  evaluation-split questions (what `trait_agreement` measures);
- truth: AUC on the project-written truth set (resources/judge_truth/: per evaluation
  question one answer that shows the trait and one that does not).

Judges:
- `llm-<name>`: a local LLM judge (the project's local backend: trait rubric, "Score: "
  prefill, digit tree) on a prepared model variant (`--llm name=manifest.json`);
- `tfidf`: traitscope.judge.classifier, fitted on the run's extraction-split answers;
- `emb-<name>`: traitscope.judge.embedding on a reader model's mean-pooled hidden states of
  question + answer with no system prompt (`--reader name=manifest.json`), fitted likewise;
- `tfidf+emb-<name>`: the mean of the two classifiers' scores (a fixed rule, nothing tuned).
Classifiers are fitted only on the extraction split and refuse held-out rows; their cv AUC
(5-fold grouped by question within the extraction split) is the ceiling diagnostic: how much
the answers carry the instruction at all.

CPU-s per judgement: process CPU time (time.process_time, all threads), model load excluded;
for `emb-*` the reader's forward pass per answer plus the regression. Hidden states and LLM
scores are cached under --work, so reruns only add what is missing.

Usage: PYTHONPATH=src python benchmarks/judge_candidates.py RESULTS --work DIR
       [--reader gemma3=M.json ...] [--llm gemma3=M.json ...] [--llm-held-out] [--tag bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name, extraction_cv_auc, persona_traits  # noqa: E402

from traitscope.data.traits import load_trait  # noqa: E402
from traitscope.judge.classifier import AnswerClassifier  # noqa: E402
from traitscope.judge.classifier_agreement import answer_table  # noqa: E402
from traitscope.judge.embedding import EmbeddingClassifier, answer_states  # noqa: E402
from traitscope.judge.truth_set import truth_table  # noqa: E402
from traitscope.stats import auc_with_ci  # noqa: E402

N_BOOT, SEED = 2000, 0
ROOT = Path(__file__).parents[1]


def auc(scores: np.ndarray, labels: np.ndarray) -> dict:
    ok = ~np.isnan(scores)
    return auc_with_ci(scores[ok & (labels == 1)], scores[ok & (labels == 0)], n_boot=N_BOOT, seed=SEED)


class Reader:
    """A reader model loaded once, its pooled states cached per answer set."""

    def __init__(self, name: str, manifest: str, work: Path, cached_only: bool) -> None:
        self.name, self.manifest, self.work, self._model = name, manifest, work, None
        self.cached_only = cached_only

    def states(
        self, key: str, questions: list[str], answers: list[str], may_skip: bool = True
    ) -> tuple[np.ndarray, float] | None:
        """([n, layers + 1, hidden], CPU-s per answer), from the cache when there; None when
        not cached, `cached_only` and `may_skip` (the truth set's 40 answers are always read)."""
        path = self.work / "feats" / f"{self.name}_{key}.npz"
        if path.is_file():
            found = np.load(path)
            return found["x"], float(found["cpu"]) / len(found["x"])
        if self.cached_only and may_skip:
            return None
        if self._model is None:
            from traitscope.model import loading

            self._model = loading.load(self.manifest)
        t0 = time.process_time()
        x = answer_states(*self._model, questions, answers)
        cpu = time.process_time() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, cpu=cpu)
        return x, cpu / len(x)


class LlmJudge:
    """A local LLM judge (the project's backend), its scores cached per answer set."""

    def __init__(self, name: str, manifest: str, work: Path) -> None:
        self.name, self.manifest, self.work, self._judge = name, manifest, work, None

    def scores(
        self, key: str, rubric: str, questions: list[str], answers: list[str]
    ) -> tuple[np.ndarray, float]:
        path = self.work / f"{key.replace('{name}', self.name)}.json"
        if not path.is_file():
            from traitscope.judge import Item, Judge, JudgeSettings

            if self._judge is None:
                local = {
                    "variant": self.name,
                    "prefill": "Score: ",
                    "max_tokens": 4096,
                    "manifest": self.manifest,
                }
                self._judge = Judge(
                    JudgeSettings.from_dict(
                        {
                            "backend": "local",
                            "min_number_mass": 0.25,
                            "coherence_rubric": None,
                            "cache": str(self.work / f"cache_{self.name}.sqlite"),
                            "local": local,
                        }
                    )
                )
                self._judge.backend.load()
            t0 = time.process_time()
            found = self._judge.score([Item(rubric, q, a) for q, a in zip(questions, answers)])
            cpu = time.process_time() - t0
            path.write_text(json.dumps({"score": [j.score for j in found], "cpu": cpu}))
        data = json.loads(path.read_text())
        return np.array([np.nan if s is None else s for s in data["score"]], float), data["cpu"] / len(
            data["score"]
        )


def truth_cv(truth, fit_score) -> float:
    """AUC of out-of-fold scores within the truth set, 5 folds grouped by question: what a
    classifier fitted on project-written answers (to other questions) would read. Each fold's
    rows are handed over as the fitted split; the scored ones are never among them."""
    from sklearn.model_selection import GroupKFold

    from traitscope.stats import auc as plain_auc

    scores = np.zeros(len(truth))
    for fit, held in GroupKFold(n_splits=5).split(truth, groups=truth["question"]):
        a, b = truth.iloc[fit].assign(split="extraction"), truth.iloc[held]
        scores[held] = fit_score(a, b, fit, held)
    y = truth["label"].to_numpy()
    return plain_auc(scores[y == 1], scores[y == 0])


def fmt(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def trait_rows(
    name: str, results: Path, tag: str, readers: list[Reader], llms: list[LlmJudge], held_llm: bool
) -> list[dict]:
    prompts = results / "prompts" / "traits" / f"{name}.parquet"
    capture = results / "capture" / "smollm2" / "traits" / name / "capture.json"
    trait_file = ROOT / "resources" / "traits" / f"{name}.yaml"
    table = answer_table(prompts, capture)
    truth = truth_table(ROOT / "resources" / "judge_truth" / f"{name}.yaml", trait_file)
    fit, held = table[table["split"] == "extraction"], table[table["split"] == "evaluation"]
    y_held, y_truth = held["label"].to_numpy(), truth["label"].to_numpy()
    rows = []

    t0 = time.process_time()
    tfidf = AnswerClassifier.fit(
        fit["response"], fit["label"], fit["split"], fit["prompt_id"], fit["question"]
    )
    t1 = time.process_time()
    s_held = tfidf.score_rows(held["response"], held["prompt_id"], held["question"])
    cost = (time.process_time() - t1) / len(held)
    s_truth = tfidf.score_rows(truth["response"], truth["prompt_id"], truth["question"])
    cv = extraction_cv_auc(prompts, capture)

    def tfidf_fold(a, b, *_):
        clf = AnswerClassifier.fit(a["response"], a["label"], a["split"], a["prompt_id"], a["question"])
        return clf.score_rows(b["response"], b["prompt_id"], b["question"])

    tcv = truth_cv(truth, tfidf_fold)
    rows.append(
        {
            "judge": "tfidf",
            "held": auc(s_held, y_held),
            "truth": auc(s_truth, y_truth),
            "cpu": cost,
            "note": f"cv {cv:.3f}; truth cv {tcv:.3f}; fit {t1 - t0:.2f} CPU-s on {len(fit)}",
        }
    )
    tfidf_scores = (s_held, s_truth)

    key = name.replace("/", "_")
    for reader in readers:
        found = reader.states(f"{tag}_{key}", table["question"].tolist(), table["response"].tolist())
        if found is None:
            print(
                f"emb-{reader.name} {name}: hidden states not cached, skipped (--cached-only)",
                file=sys.stderr,
            )
            continue
        x_all, per = found
        truth_states = reader.states(
            f"truth_{key}", truth["question"].tolist(), truth["response"].tolist(), False
        )
        x_truth = truth_states[0]  # type: ignore[index]  (never None: may_skip is False)
        ex, ho = (table["split"] == "extraction").to_numpy(), (table["split"] == "evaluation").to_numpy()
        t0 = time.process_time()
        emb = EmbeddingClassifier.fit(
            x_all[ex], fit["label"], fit["split"], fit["prompt_id"], fit["question"]
        )
        t1 = time.process_time()
        e_held = emb.score_rows(x_all[ho], held["prompt_id"], held["question"])
        lr = (time.process_time() - t1) / len(held)
        e_truth = emb.score_rows(x_truth, truth["prompt_id"], truth["question"])

        def emb_fold(a, b, fit_rows, held_rows, x=x_truth):
            clf = EmbeddingClassifier.fit(x[fit_rows], a["label"], a["split"], a["prompt_id"], a["question"])
            return clf.score_rows(x[held_rows], b["prompt_id"], b["question"])

        note = (
            f"cv {emb.cv_auc:.3f} (layer {emb.layer}, C {emb.C}); truth cv {truth_cv(truth, emb_fold):.3f}; "
        )
        note += f"fit {t1 - t0:.1f} CPU-s"
        rows.append(
            {
                "judge": f"emb-{reader.name}",
                "held": auc(e_held, y_held),
                "truth": auc(e_truth, y_truth),
                "cpu": per + lr,
                "note": note,
            }
        )
        both_held, both_truth = (tfidf_scores[0] + e_held) / 2, (tfidf_scores[1] + e_truth) / 2
        rows.append(
            {
                "judge": f"tfidf+emb-{reader.name}",
                "held": auc(both_held, y_held),
                "truth": auc(both_truth, y_truth),
                "cpu": per + lr + cost,
                "note": "mean of the two scores",
            }
        )

    rubric = load_trait(trait_file).judge_rubric
    for llm in llms:
        t_scores, t_cost = llm.scores(
            f"truth_llm_{{name}}_{key}", rubric, truth["question"].tolist(), truth["response"].tolist()
        )
        row = {
            "judge": f"llm-{llm.name}",
            "held": None,
            "truth": auc(t_scores, y_truth),
            "cpu": t_cost,
            "note": f"no score {int(np.isnan(t_scores).sum())}/{len(t_scores)} truth",
        }
        if held_llm:
            h_scores, h_cost = llm.scores(
                f"llm_{{name}}_{tag}_{key}", rubric, held["question"].tolist(), held["response"].tolist()
            )
            row["held"], row["cpu"] = auc(h_scores, y_held), h_cost
            row["note"] += f", {int(np.isnan(h_scores).sum())}/{len(h_scores)} held-out"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a finished run's results folder")
    parser.add_argument("--work", type=Path, required=True, help="cache of hidden states and LLM scores")
    parser.add_argument(
        "--tag", default=None, help="the run's name in cache files (default: its parent folder)"
    )
    parser.add_argument("--reader", action="append", default=[], help="name=manifest.json of a reader model")
    parser.add_argument("--llm", action="append", default=[], help="name=manifest.json of a local LLM judge")
    parser.add_argument("--llm-held-out", action="store_true", help="LLM judges on held-out answers too")
    parser.add_argument("--traits", nargs="*", default=None)
    parser.add_argument("--cached-only", action="store_true", help="readers: skip what is not cached")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = args.results.resolve()
    tag = args.tag or results.parent.name
    args.work.mkdir(parents=True, exist_ok=True)
    readers = [Reader(*r.split("=", 1), args.work, args.cached_only) for r in args.reader]
    llms = [LlmJudge(*r.split("=", 1), args.work) for r in args.llm]
    cpu, slug = cpu_name()
    columns = (
        ("judge", 18),
        ("trait", 21),
        ("held-out AUC [95% CI]", 24),
        ("truth AUC [95% CI]", 24),
        ("CPU-s/j", 8),
    )
    head = " ".join(f"{c:<{w}}" for c, w in columns) + " note"
    lines = [f"judge candidates; CPU: {cpu}; run: {results} ({tag})", "", head, "-" * len(head)]
    record = {"cpu": cpu, "run": str(results), "rows": []}
    names = args.traits or [n for n, _ in persona_traits(results)]
    for name in names:
        for row in trait_rows(name, results, tag, readers, llms, args.llm_held_out):
            n = "" if row["held"] is None else f" n {row['held']['n_pos']}+{row['held']['n_neg']};"
            n += f" truth n {row['truth']['n_pos']}+{row['truth']['n_neg']}"
            lines.append(
                f"{row['judge']:<18} {name:<21} {fmt(row['held']):<24} {fmt(row['truth']):<24} "
                f"{row['cpu']:<8.2g} {row['note']};{n}"
            )
            print(lines[-1], flush=True)
            record["rows"].append({"trait": name, **row})
    text = "\n".join(lines)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"judge_candidates_{slug}.txt").write_text(text + "\n")
    (args.out_dir / f"judge_candidates_{slug}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
