"""Directions that pass the hard negatives (issue #28): which extraction contrast, pool, layer
and method separate harmful from harmless requests that share their key word, beyond a bag of
words fitted on the same training rows?

One capture (every layer, the three prompt-contrast pools, no generation) of: the
safety/harmful_request trait set (refusal-direction harmful_train vs length-matched Alpaca), the
hard-negative pairs (resources/prompts/hard_negatives, both splits) and the four held-out set
pairs of the transfer table. Then, per extraction contrast

- `rd`: harmful_request's extraction rows (80 + 80), the default trait;
- `rd+hn`: safety/harmful_intent's: those plus 89 of the hard negatives' 133 extraction pairs;
- `hn`: those 89 hard-negative pairs alone;

and per pool, method (mean_diff, probe) and layer: the AUC on the held-out hard negatives (91
pairs) and on each held-out set, the bag of words' (fitted on the contrast's own training rows)
and the paired-bootstrap difference trait - bag of words. The (method, layer) each contrast
would choose is picked on its validation rows (harmful_request's evaluation split, plus the other
44 hard-negative extraction pairs where the contrast uses them), never on scored rows.

Usage (after `snakemake results/models/smollm2/manifest.json` and the transfer target's prompt
sets): python benchmarks/hard_negatives.py results/models/smollm2/manifest.json \
    ../shared/data results/benchmarks/hard_negatives benchmarks/results/hard_negatives_epyc_avx512bf16.json
(a fifth argument names another folder holding the held-out sets' prompt Parquets, built by
`traitscope prep-prompts` with the config's specs)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from traitscope import baselines
from traitscope.capture.settings import CaptureSettings
from traitscope.capture.store import capture, load_pooled
from traitscope.data.pairs import load_pairs
from traitscope.data.prompts import text_key
from traitscope.data.traits import CONTRAST_POOLS, contrast_prompts, read_trait
from traitscope.settings import from_schema
from traitscope.stats import auc, auc_difference_same_rows, auc_with_ci
from traitscope.vectors.methods import mean_diff, probe, project

PAIRS = "resources/prompts/hard_negatives/pairs.yaml"
INTENT = "resources/traits/safety/harmful_intent.yaml"
HELD_OUT = {
    "harmbench_val": "harmless_val",
    "harmbench_test": "harmless_hb_test",
    "advbench_heldout": "harmless_advbench",
    "rd_harmful_test": "harmless_rd_test",
}
N_BOOT, SEED = 2000, 0
METHODS = {"mean_diff": mean_diff, "probe": lambda p, n: probe(p, n, 1.0, SEED)}


def prompt_table(data_mirror: str, prompts_dir: str) -> pd.DataFrame:
    """Every prompt, once: id, text, label, role (what it is used for) and category.

    The safety/harmful_intent trait set holds harmful_request's rows exactly (same sources, seed
    and length matching) plus the hard negatives' extraction pairs, so its splits give every
    contrast's training and validation rows."""
    trait = contrast_prompts(read_trait(INTENT), data_mirror, "results/cache")
    category = dict(zip(*load_pairs(PAIRS)[["prompt_id", "category"]].T.to_numpy()))
    hn = trait["source_id"].str.startswith("hard_negatives-").to_numpy()
    role = np.where(hn, "hn_", "rd_") + np.where(trait["split"] == "extraction", "train", "val")
    parts = [
        pd.DataFrame(
            {
                "prompt": trait["prompt"],
                "label": trait["label"],
                "role": role,
                "category": trait["source_id"].map(category),
            }
        )
    ]
    held = load_pairs(PAIRS, split="heldout")
    parts.append(held[["prompt", "label", "category"]].assign(role="hn_heldout"))
    for harmful, harmless in HELD_OUT.items():
        for name, label in ((harmful, 1), (harmless, 0)):
            rows = pd.read_parquet(Path(prompts_dir) / f"{name}.parquet")
            parts.append(
                pd.DataFrame({"prompt": rows["prompt"], "label": label, "role": harmful, "category": None})
            )
    table = pd.concat(parts, ignore_index=True)
    return table.assign(prompt_id=[f"p{i}" for i in range(len(table))])


def activations(table: pd.DataFrame, manifest: str, out: Path) -> tuple[dict[str, torch.Tensor], float]:
    """{pool: [n, n_layers, d]} in the table's row order, and the capture's wall seconds."""
    out.mkdir(parents=True, exist_ok=True)
    table[["prompt_id", "prompt"]].to_parquet(out / "prompts.parquet")
    settings = from_schema(
        CaptureSettings, pools=CONTRAST_POOLS, max_tokens=8192, shard_size=1024, storage_dtype="float32"
    )
    t0 = time.perf_counter()
    capture(manifest, out / "prompts.parquet", out / "capture.json", settings, device="cpu")
    wall = time.perf_counter() - t0
    acts = {}
    for pool in CONTRAST_POOLS:
        ids, x, _ = load_pooled(out / "capture.json", pool)
        order = {pid: i for i, pid in enumerate(ids)}
        acts[pool] = x[[order[p] for p in table["prompt_id"]]]
    return acts, wall


CONTRASTS = {"rd": ("rd_train",), "rd+hn": ("rd_train", "hn_train"), "hn": ("hn_train",)}
VALIDATION = {"rd": ("rd_val",), "rd+hn": ("rd_val", "hn_val"), "hn": ("rd_val", "hn_val")}


def scored_sets(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row masks of every held-out comparison: the hard negatives, then the transfer sets."""
    return {"hard_negatives": (table["role"] == "hn_heldout").to_numpy()} | {
        s: (table["role"] == s).to_numpy() for s in HELD_OUT
    }


def evaluate(table: pd.DataFrame, acts: dict[str, torch.Tensor]) -> dict:
    """Every contrast x pool x method x layer on every scored set, beside its own bag of words."""
    label = table["label"].to_numpy()
    texts = table["prompt"].tolist()
    sets = scored_sets(table)
    result: dict = {}
    for contrast, roles in CONTRASTS.items():
        train = table["role"].isin(roles).to_numpy()
        val = table["role"].isin(VALIDATION[contrast]).to_numpy()
        seen = {contrast: {text_key(texts[i]) for i in np.flatnonzero(train)}}
        baselines.check_unseen(seen, {s: [texts[i] for i in np.flatnonzero(m)] for s, m in sets.items()})
        bow = baselines.bag_of_words([texts[i] for i in np.flatnonzero(train)], label[train], SEED)
        bow_scores = bow(texts)
        entry: dict = {"n_train": int(train.sum()), "n_validation": int(val.sum()), "bag_of_words": {}}
        for s, m in sets.items():
            pos, neg = m & (label == 1), m & (label == 0)
            entry["bag_of_words"][s] = auc_with_ci(bow_scores[pos], bow_scores[neg], n_boot=N_BOOT, seed=SEED)
        entry["pools"] = {}
        for pool, x in acts.items():
            entry["pools"][pool] = {}
            for method, fit in METHODS.items():
                vectors = fit(x[torch.tensor(train & (label == 1))], x[torch.tensor(train & (label == 0))])
                scores = project(x, vectors).numpy()  # [n, n_layers]
                entry["pools"][pool][method] = [
                    layer_row(scores[:, k], bow_scores, label, val, sets) for k in range(scores.shape[1])
                ]
        result[contrast] = entry
    return result


def layer_row(score: np.ndarray, bow: np.ndarray, label: np.ndarray, val: np.ndarray, sets: dict) -> dict:
    """One layer: validation AUC (what chooses it), and per scored set the AUC; on the hard
    negatives also the paired-bootstrap difference to the bag of words."""
    row = {"validation_auc": auc(score[val & (label == 1)], score[val & (label == 0)])}
    for s, m in sets.items():
        pos, neg = m & (label == 1), m & (label == 0)
        row[s] = auc(score[pos], score[neg])
    hn = sets["hard_negatives"]
    pos, neg = hn & (label == 1), hn & (label == 0)
    row["hn_vs_bow"] = auc_difference_same_rows(
        score[pos], score[neg], bow[pos], bow[neg], n_boot=N_BOOT, seed=SEED
    )
    return row


def chosen(entry: dict) -> tuple[str, str, int]:
    """(pool, method, layer) with the best validation AUC: what the contrast would ship."""
    return max(
        (
            (p, m, k)
            for p, methods in entry["pools"].items()
            for m, rows in methods.items()
            for k in range(len(rows))
        ),
        key=lambda pmk: entry["pools"][pmk[0]][pmk[1]][pmk[2]]["validation_auc"],
    )


def details(table: pd.DataFrame, acts: dict, contrast: str, pool: str, method: str, layer: int) -> dict:
    """CIs on every scored set, differences to the bag of words and length, and per category."""
    label, texts = table["label"].to_numpy(), table["prompt"].tolist()
    train = table["role"].isin(CONTRASTS[contrast]).to_numpy()
    x = acts[pool]
    vectors = METHODS[method](x[torch.tensor(train & (label == 1))], x[torch.tensor(train & (label == 0))])
    score = project(x, vectors).numpy()[:, layer]
    bow = baselines.bag_of_words([texts[i] for i in np.flatnonzero(train)], label[train], SEED)(texts)
    length = baselines.lengths(texts)
    out: dict = {"contrast": contrast, "pool": pool, "method": method, "layer": layer, "sets": {}}
    for s, m in scored_sets(table).items():
        pos, neg = m & (label == 1), m & (label == 0)
        surface = {"length": (length[pos], length[neg]), "bag_of_words": (bow[pos], bow[neg])}
        out["sets"][s] = baselines.against_baselines(
            score[pos], score[neg], surface, n_boot=N_BOOT, seed=SEED
        )
        out["sets"][s]["baselines"] = baselines.baseline_aucs(surface, N_BOOT, SEED)
    hn = (table["role"] == "hn_heldout").to_numpy()
    cats = table["category"].to_numpy(dtype=object)
    surface = {"length": (length[hn & (label == 1)], length[hn & (label == 0)])}
    surface["bag_of_words"] = (bow[hn & (label == 1)], bow[hn & (label == 0)])
    frame = pd.DataFrame({"trait": score})
    out["by_category"] = baselines.by_category(
        frame[hn & (label == 1)].reset_index(drop=True),
        frame[hn & (label == 0)].reset_index(drop=True),
        (cats[hn & (label == 1)], cats[hn & (label == 0)]),
        surface,
        N_BOOT,
        SEED,
    )
    return out


def ci(a: dict) -> str:
    return f"{a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def diff(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def report(result: dict, picks: dict) -> str:
    """The tables: per contrast and pool, per layer; then each contrast's chosen direction."""
    lines = []
    for contrast, entry in result["contrasts"].items():
        hn_bow = entry["bag_of_words"]["hard_negatives"]
        lines.append(
            f"\n== contrast {contrast}: {entry['n_train']} training rows, "
            f"{entry['n_validation']} validation rows; bag of words (same training rows) "
            f"on held-out hard negatives: {ci(hn_bow)}"
        )
        for pool, methods in entry["pools"].items():
            lines.append(
                f"-- pool {pool}: layer, then per method: val AUC | hard-neg AUC | minus BoW [95% CI] | "
                "HB val, HB test, AdvB, RD test"
            )
            for k in range(len(next(iter(methods.values())))):
                cells = []
                for method, rows in methods.items():
                    r = rows[k]
                    cells.append(
                        f"{method} {r['validation_auc']:.3f} | {r['hard_negatives']:.3f} | "
                        f"{diff(r['hn_vs_bow'])} | " + " ".join(f"{r[s]:.3f}" for s in HELD_OUT)
                    )
                lines.append(f"L{k:02d}  " + "  ||  ".join(cells))
    lines.append("\n== chosen on validation rows, scored on held-out rows (n harmful + n harmless; 95% CIs)")
    for contrast, pick in picks.items():
        lines.append(f"-- {contrast}: {pick['pool']} {pick['method']} layer {pick['layer']}")
        for s, r in pick["sets"].items():
            b = r["baselines"]
            lines.append(
                f"   {s:17s} n={b['length']['n_pos']}+{b['length']['n_neg']}  trait {ci(r['auc'])}  "
                f"BoW {ci(b['bag_of_words'])}  length {ci(b['length'])}  "
                f"trait-BoW {diff(r['vs_bag_of_words'])}  trait-length {diff(r['vs_length'])}"
            )
        for c, e in pick["by_category"].items():
            lines.append(
                f"   hard negatives / {c:16s} n={e['n_harmful']}+{e['n_harmless']}  "
                f"trait {ci(e['traits']['trait'])}  BoW {ci(e['baselines']['bag_of_words'])}  "
                f"length {ci(e['baselines']['length'])}"
            )
    return "\n".join(lines)


def main(
    manifest: str, data_mirror: str, work_dir: str, out_json: str, prompts_dir: str = "results/prompts"
) -> None:
    table = prompt_table(data_mirror, prompts_dir)
    acts, wall = activations(table, manifest, Path(work_dir))
    result = {"n_prompts": len(table), "capture_wall_s": round(wall, 1), "contrasts": evaluate(table, acts)}
    picks = {c: details(table, acts, c, *chosen(e)) for c, e in result["contrasts"].items()}
    result["chosen"] = picks
    text = report(result, picks)
    print(f"capture of {len(table)} prompts x 3 pools: {wall:.1f} s wall" + text)
    Path(out_json).write_text(json.dumps(result, indent=1))
    Path(out_json).with_suffix(".txt").write_text(
        f"# python benchmarks/hard_negatives.py {manifest} {data_mirror} {work_dir} {out_json}\n"
        "# AMD EPYC with AVX512-BF16 (model dtype auto: bf16), 2 cores shared, nice 10; "
        f"capture of {len(table)} prompts: {wall:.1f} s\n" + text + "\n"
    )


if __name__ == "__main__":
    main(*sys.argv[1:6])
