"""scripts/results_tables.py: the guide's tables come from results files, not from hand edits."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results_tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _summary() -> dict:
    row = {"measured": None, "ci_low": None, "ci_high": None, "n": None, "detail": ""}
    return {
        "what": "the plan's success criteria",
        "statuses": {"met": "CI above", "not run": "off"},
        "sections": [
            {
                "name": "external",
                "title": "External datasets",
                "sources": ["results/external_datasets/harmbench_results.json"],
                "status": "met",
                "criteria": [
                    {
                        **row,
                        "criterion": "HarmBench vs harmless: ROC-AUC > 0.7",
                        "status": "met",
                        "measured": 0.9412,
                        "ci_low": 0.8903,
                        "ci_high": 0.9791,
                        "n": "40+40",
                        "detail": "safety/harmful_request",
                    }
                ],
            },
            {
                "name": "backdoor",
                "title": "Backdoor detection",
                "sources": [],
                "status": "not run",
                "criteria": [{**row, "criterion": "trigger vs control ROC-AUC > 0.7", "status": "not run"}],
            },
        ],
    }


def _render(tables, folder, region: str) -> str:
    """A page holding only `region`, rewritten from the benchmark files in `folder`."""
    page = folder / "page.md"
    page.write_text(f"<!-- generated: {region} -->\n<!-- end generated: {region} -->\n")
    assert tables.main([str(page), "--benchmarks", str(folder)]) == 0
    return page.read_text()


def test_generated_region_is_rewritten_from_summary_json(tables, tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(_summary()))
    page = tmp_path / "page.md"
    before, after = "# Results\n\nkept above\n\n", "\nkept below\n"
    page.write_text(
        before
        + "<!-- generated: headline -->\n| stale | 0.123 |\n<!-- end generated: headline -->\n"
        + "<!-- generated: summary -->\nold\n<!-- end generated: summary -->"
        + after
    )
    assert tables.main([str(page), "--summary", str(summary), "--benchmarks", str(tmp_path)]) == 0
    text = page.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "stale" not in text and "\nold\n" not in text
    headline = re.search(r"generated: headline -->\n(.*?)<!-- end generated: headline", text, re.S)[1]
    # half-width (.979 - .890) / 2 = .0445, which float arithmetic leaves a hair under, so .044
    row = "| External datasets | HarmBench vs harmless: ROC-AUC > 0.7 | 0.941 [0.890, 0.979] ±0.044 "
    row += "| 40+40 | met |"
    assert row in headline
    assert "| Backdoor detection | trigger vs control ROC-AUC > 0.7 | - | - | not run |" in headline
    full = re.search(r"generated: summary -->\n(.*?)<!-- end generated: summary", text, re.S)[1]
    assert "safety/harmful_request" in full and "- **inconclusive**: the 95% CI straddles" in full  # legend
    # a second run changes nothing, and --check agrees
    assert tables.main([str(page), "--summary", str(summary), "--check"]) == 0
    # without the summary file, the region says how to make it instead of keeping numbers
    assert tables.main([str(page), "--summary", str(tmp_path / "absent.json")]) == 0
    assert "0.941" not in page.read_text() and "make run" in page.read_text()


def test_page_without_markers_is_an_error_naming_it(tables, tmp_path):
    page = tmp_path / "plain.md"
    page.write_text("# no generated region here\n")
    with pytest.raises(tables.RegionError, match=re.escape(str(page))):
        tables.main([str(page), "--summary", str(tmp_path / "summary.json")])
    page.write_text("<!-- generated: nonesuch -->\n<!-- end generated: nonesuch -->\n")
    with pytest.raises(tables.RegionError, match="nonesuch"):
        tables.main([str(page)])


def test_precision_region_shows_each_comparison_file(tables, tmp_path):
    (tmp_path / "precision_cpuA.txt").write_text(
        "# benchmarks/precision.sh at 1234567\ncpu: CPU A\nfp32 main job: 10 s\n"
        "| section | criterion | fp32 | bf16 | same status | each inside the other's CI |\n"
        "|---|---|---|---|---|---|\n| traits | x | met: 0.95 | met: 0.96 | yes | yes |\n"
        "\nrobust (1 criteria)\n\nA first note\nover two lines.\n\nA second note.\n"
    )
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: precision -->\nold\n<!-- end generated: precision -->\n")
    assert tables.main([str(page), "--benchmarks", str(tmp_path)]) == 0
    text = page.read_text()
    # the notes keep the file's paragraphs (they were run together into one)
    assert "\n\nrobust (1 criteria)\n\nA first note over two lines.\n\nA second note.\n" in text
    assert "[precision_cpuA.txt](precision_cpuA.txt)" in text and "cpu: CPU A" in text
    assert "| traits | x | met: 0.95 | met: 0.96 | yes | yes |" in text and "old" not in text
    assert "1234567" not in text and "robust (1 criteria)" in text


def test_times_region_names_the_cpu_and_mode_of_every_time(tables, tmp_path):
    (tmp_path / "precision_cpuA.txt").write_text(
        "# benchmarks/precision.sh at 1234567\ncpu: CPU A; flags: avx2\ncores: 2\n"
        "fp32 main job: 871 s; dtype float32\nbf16 main job: 486 s; dtype bfloat16\n"
    )
    (tmp_path / "suite_times_cpuA.txt").write_text(
        "cpu: CPU A; flags: avx2\ncores: 2\nsuite native: 333 s; 466 passed, 19 skipped in 332.1s\n"
    )
    text = _render(tables, tmp_path, "times")
    rows = [line for line in text.splitlines() if line.startswith("| the") or line.startswith("| `")]
    assert rows == [
        "| the main job, every experiment | CPU A; flags: avx2, 2 cores | fp32: dtype float32 "
        "| 871 s (14 min 31 s) | [precision_cpuA.txt](precision_cpuA.txt) |",
        "| the main job, every experiment | CPU A; flags: avx2, 2 cores | bf16: dtype bfloat16 "
        "| 486 s (8 min 6 s) | [precision_cpuA.txt](precision_cpuA.txt) |",
        "| `make test`'s pytest | CPU A; flags: avx2, 2 cores | native: 466 passed, 19 skipped in 332.1s "
        "| 333 s (5 min 33 s) | [suite_times_cpuA.txt](suite_times_cpuA.txt) |",
    ]


def test_hard_negatives_region_reads_the_snapshots(tables, tmp_path):
    """Each trait and pool's held-out hard-negative AUC beside its bag of words and length, and
    the per-category AUCs at each trait's pool, from the run's snapshots."""

    def auc(value, low, high):
        return {"auc": value, "ci_low": low, "ci_high": high, "n_pos": 4, "n_neg": 4}

    row = {
        "auc": auc(0.9, 0.8, 0.95),
        "vs_bag_of_words": {"difference": 0.2, "auc_b": 0.7, "ci_low": 0.05, "ci_high": 0.3},
        "vs_length": {"difference": 0.3, "auc_b": 0.6, "ci_low": 0.1, "ci_high": 0.4},
    }
    transfer = {"traits": ["t/a"], "sets": {"hardneg_harmful": {"pools": {"last_prompt": {"t/a": row}}}}}
    (tmp_path / "transfer_default_x.json").write_text(json.dumps(transfer))
    categories = {"homonym": auc(0.75, 0.5, 0.9), "records": auc(1.0, 1.0, 1.0)}
    external = {"n_harmful": 4, "position_of": {"t/a": "prompt_mean"}}
    external["traits"] = {"t/a": {"by_category": categories}}
    (tmp_path / "hard_negatives_default_x.json").write_text(json.dumps(external))
    text = _render(tables, tmp_path, "hard-negatives")
    assert "| `t/a` | last_prompt | 0.900 [0.800, 0.950] | 0.700 | +0.200 [+0.050, +0.300] | 0.600 |" in text
    assert "| trait | homonym | records |" in text and "| `t/a` (prompt_mean) | 0.75 | 1.00 |" in text
    assert "n = 4 + 4" in text and "2 pairs each" in text


def test_transfer_region_marks_the_cells_that_beat_both_baselines(tables, tmp_path):
    """Each trait's AUC per set and pool, starred only where it beats both baselines, with each
    baseline a trait is compared with (a contrast trait's own bag of words) beneath."""

    def cell(value, beats):
        return {"auc": {"auc": value}, "beats_baselines": beats}

    def baseline(value):
        return {"auc": value, "ci_low": 0.0, "ci_high": 1.0}

    sets = {
        name: {
            "n_harmful": n,
            "n_harmless": n,
            "pools": {
                "last_prompt": {"t/p": cell(0.61, False), "t/c": cell(0.94, True)},
                "prompt_mean": {"t/p": cell(0.55, False), "t/c": cell(0.99, beats)},
            },
            "baselines": {
                "length": baseline(0.5),
                "bag_of_words": baseline(bow),
                "bag_of_words[t/c]": baseline(0.9),
            },
        }
        for name, n, bow, beats in (("s1", 40, 0.95, False), ("s2", 91, 0.71, True))
    }
    transfer = {
        "pools": ["last_prompt", "prompt_mean"],
        "traits": ["t/p", "t/c"],
        "bag_of_words_of": {"t/p": "bag_of_words", "t/c": "bag_of_words[t/c]"},
        "sets": sets,
    }
    (tmp_path / "transfer_default_x.json").write_text(json.dumps(transfer))
    text = _render(tables, tmp_path, "transfer")
    assert "| trait | `s1` | `s2` |" in text
    assert "| `t/p` | 0.61 / 0.55 | 0.61 / 0.55 |" in text
    assert "| `t/c` | 0.94* / 0.99 | 0.94* / 0.99* |" in text
    assert "| length | 0.50 | 0.50 |" in text and "| bag of words | 0.95 | 0.71 |" in text
    assert "| bag of words (`t/c`, its own) | 0.90 | 0.90 |" in text and "40 + 40, 91 + 91" in text


def test_cmaes_region_shows_both_scorers_of_the_held_out_check(tables, tmp_path):
    """The held-out scorer's deltas and gain, each with its truth-set agreement, above the fitness
    judge's on the same answers: a gap between the two rows is what gaming looks like."""

    def delta(mean, low, high):
        return {"trait": {"mean_diff": mean, "ci_low": low, "ci_high": high}}

    def agreement(value, low, high):
        return {"auc": value, "ci_low": low, "ci_high": high, "split": "truth set"}

    fitness = {
        "judge": {"backend": "classifier", "classifier": {"features": "embedding"}},
        "steering_delta": {"mean_diff": delta(29.8, 0.56, 1.98), "optimised": delta(40.7, 0.95, 2.67)},
        "gain_vs_mean_diff": {"gain": 0.367, "ci_low": -0.003, "ci_high": 1.12},
    }
    held = {
        "scorer": "independent",
        "n_questions": 14,
        "judge": {"backend": "classifier", "classifier": {"features": "tfidf"}},
        "judge_truth_agreement": agreement(0.94, 0.85, 1.0),
        "steering_delta": {"mean_diff": delta(-3.0, -1.22, 0.11), "optimised": delta(0.2, -0.53, 0.67)},
        "gain_vs_mean_diff": {"gain": 1.06, "ci_low": None, "ci_high": None}
        | {"margin": 3.8, "margin_ci_low": 0.64, "margin_ci_high": 7.25},
        "fitness_judge": fitness,
    }
    trait = {
        "heldout": held,
        "judge_truth_agreement": agreement(1.0, 1.0, 1.0),
        "training": {"questions": 2, "start_fitness": 29.66, "best_fitness": 71.43, "best_generation": 0},
        "cosines": {"optimised_vs_mean_diff": 0.718},
    }

    def rendered() -> str:  # the region from a snapshot of `trait` as it stands
        (tmp_path / "cmaes_default_x.json").write_text(json.dumps({"traits": {"safety/evil": trait}}))
        return _render(tables, tmp_path, "cmaes")

    text = rendered()
    lines = text.splitlines()
    held_row = "| `safety/evil` | held-out scorer (tfidf) | 0.940 [0.850, 1.000] | -3.0 (d_z [-1.22, +0.11]) "
    held_row += "| +0.2 (d_z [-0.53, +0.67]) | 1.06 (no CI) | +3.8 [+0.6, +7.2] |"
    fit_row = (
        "| `safety/evil` | fitness judge (embedding) | 1.000 [1.000, 1.000] | +29.8 (d_z [+0.56, +1.98]) "
    )
    fit_row += "| +40.7 (d_z [+0.95, +2.67]) | 0.37 [-0.00, 1.12] | n/a |"  # a snapshot without it
    assert lines.index(held_row) + 1 == lines.index(fit_row)
    assert (
        "start 29.7, best 71.4 (generation 0); cosine(optimised, mean_diff) 0.72 (one optimiser run)." in text
    )
    runs = {"values": [0.72, 0.70, 0.77], "mean": 0.73, "ci_low": 0.637, "ci_high": 0.824, "n": 3}
    trait["cosines"]["restarts_vs_mean_diff"] = runs
    assert (
        "cosine(optimised, mean_diff) 0.72, the best of 3 optimiser runs whose best vectors give "
        "0.72, 0.70, 0.77: mean 0.73 [0.64, 0.82] (t interval over runs)."
    ) in rendered()
    null = {"n_sim": 1000, "runs": 3, "mean": 0.644, "low": 0.434, "high": 0.792, "p_two_sided": 0.36}
    trait["cosines"]["noise_null"] = null
    assert (
        "(t interval over runs); the same search on a noise fitness ends at 0.64 (95% of 1000 simulated "
        "searches in [0.43, 0.79]; two-sided p 0.36)."
    ) in rendered()


def test_backdoor_region_shows_behaviour_and_both_cis_of_each_auc(tables, tmp_path):
    """Each model's backdoor and accuracy counts per prefix, then per trait and position both
    models' AUCs, the backdoored model's CI over refits beside its CI over pairs, and the
    difference: the refit CI is what the criterion reads, so it must not be left out."""

    def rate(k, n=100):
        return {"rate": k / n, "ci_low": 0.0, "ci_high": 1.0, "k": k, "n": n}

    def cell(backdoor, accuracy):
        return {"backdoor_rate": rate(backdoor), "accuracy": rate(accuracy)}

    def auc(value, low, high):
        return {"auc": value, "ci_low": low, "ci_high": high, "n_pos": 100, "n_neg": 100}

    backdoored = {**auc(0.976, 0.955, 0.99), "over_vector_draws": {"ci_low": 0.544, "ci_high": 1.0}}
    sep = {"base": auc(0.485, 0.40, 0.56), "backdoored": backdoored}
    sep["difference"] = {"difference": 0.491, "ci_low": 0.456, "ci_high": 0.526}
    result = {
        "n_pairs": 100,
        "behaviour": {
            "base": {"trigger": cell(0, 4), "control": cell(0, 2), "backdoor_rate_difference": 0.0},
            "backdoored": {"trigger": cell(100, 30), "control": cell(0, 29), "backdoor_rate_difference": 1.0},
        },
        "traits": {"safety/evil": {"positions": {"last_prompt": {"chosen_layer": sep}}}},
    }
    (tmp_path / "backdoor_default_x.json").write_text(json.dumps(result))
    text = _render(tables, tmp_path, "backdoor")
    assert "| base | 0/100 | 0/100 | 4/100 | 2/100 |" in text
    assert "| backdoored | 100/100 | 0/100 | 30/100 | 29/100 |" in text
    row = "| `safety/evil` | last_prompt | 0.485 [0.400, 0.560] | 0.976 [0.955, 0.990] | [0.544, 1.000] "
    assert row + "| +0.491 [+0.456, +0.526] |" in text
    assert "100 held-out pairs" in text


def test_deception_facts_region_marks_the_default_judge(tables, tmp_path):
    """Each judge's confirmation- and truth-set AUC with CI; the default judge named as such."""

    def auc(value, low, high):
        return {"auc": value, "ci_low": low, "ci_high": high, "n_pos": 3, "n_neg": 3}

    rows = [
        {"judge": "facts", "confirmation": auc(0.97, 0.92, 1.0), "truth": auc(0.9219, 0.8251, 0.988)},
        {"judge": "emb+facts", "confirmation": auc(0.979, 0.932, 1.0), "truth": auc(0.93, 0.83, 0.998)},
    ]
    record = {"cpu": "cpu X", "default": "emb+facts", "rows": rows}
    (tmp_path / "deception_facts_x.json").write_text(json.dumps(record))
    text = _render(tables, tmp_path, "deception-facts")
    assert "| facts | 0.970 [0.920, 1.000] | 0.922 [0.825, 0.988] |" in text
    assert "| emb+facts (the default) | 0.979 [0.932, 1.000] | 0.930 [0.830, 0.998] |" in text
    assert "(CPU: cpu X)" in text


def _paired(dz: float, low: float, high: float, **extra) -> dict:
    return {"cohens_dz": dz, "ci_low": low, "ci_high": high, "p_value": 0.03, **extra}


def test_steering_region_reads_steered_higher_off_the_ci(tables, tmp_path):
    """The steering check's paired d_z with its CI; "steered higher" is what the file decided from
    the CI, and a check whose differences were all equal says so instead of a d_z."""
    steering = {
        "trait": "safety/evil",
        "coefficient": 4.0,
        "layer": 16,
        "n": 80,
        "prompts": "the trait's held-out evaluation questions",
        "mean_projection_unsteered": 0.65,
        "mean_projection_steered": 0.9,
        "difference": 0.25,
        "paired": _paired(0.12, -0.1, 0.35),
        "steered_higher": False,
        "refusal_rate": {"unsteered": {"k": 8, "n": 80}, "steered": {"k": 1, "n": 80}},
        "refusal_rate_difference": {"difference": -0.0876, "ci_low": -0.173, "ci_high": -0.014},
    }
    (tmp_path / "steering_default_x.json").write_text(json.dumps(steering))
    text = _render(tables, tmp_path, "steering")
    assert "d_z 0.12 [-0.10, 0.35] (paired t p 0.03); steered higher (CI above 0): no" in text
    assert "unsteered 8/80, steered 1/80; steered - unsteered -0.088 [-0.173, -0.014]" in text
    steering["paired"] = {"n_pairs": 80, "undefined": "every paired difference is the same"}
    steering["steered_higher"] = None
    (tmp_path / "steering_default_x.json").write_text(json.dumps(steering))
    text = _render(tables, tmp_path, "steering")
    undecided = "every paired difference is the same; steered higher (CI above 0): undecided, no CI"
    assert f"difference +0.25, {undecided}" in text


def test_prefill_region_shows_each_comparison_with_holm_p_and_the_baselines(tables, tmp_path):
    def group(d, low, high, p):
        return {"cohens_d": d, "ci_low": low, "ci_high": high, "p_holm": p}

    def auc(value, beats):
        diff = {"difference": value - 0.7, "ci_low": -0.1, "ci_high": 0.3, "auc_b": 0.7}
        return {
            "auc": {"auc": value},
            "vs_length": diff,
            "vs_bag_of_words": {**diff, "auc_b": 0.95},
            "beats_baselines": beats,
        }

    names = {"C2_vs_C4": "prefill_mean", "C1_vs_C2": "response_mean", "C1_vs_C3": "last_prompt"}
    comparisons = {n: {"t/a": group(1.5, 1.0, 2.0, 1e-7)} for n in names}
    comparisons["C1_vs_C2"] = {"t/a": _paired(0.5, 0.17, 0.9, p_holm=0.087)}  # the same requests, d_z
    data = {
        "design": {n: {"position": pos, "paired": n == "C1_vs_C2"} for n, pos in names.items()},
        "n_prompts": {c: 30 for c in ("C1", "C2", "C3", "C4")},
        "comparisons": comparisons,
        "correction": "Holm across traits and comparisons",
        "interaction": {"t/a": {"difference": 0.327, "ci_low": -0.92, "ci_high": 1.57, "p_value": 0.6}},
        "trajectory_divergence": {"t/a": {"first_step": 3}},
        "baselines": {
            "bag_of_words_fitted_on": "prompts.parquet",
            "bag_of_words_of": {"t/a": "bag_of_words"},
            "C1_vs_C3": {"traits": {"t/a": auc(0.84, False)}},
            "C2_vs_C4": {"traits": {"t/a": auc(0.97, True)}},
        },
    }
    (tmp_path / "prefill_default_x.json").write_text(json.dumps(data))
    text = _render(tables, tmp_path, "prefill")
    heads = "| trait | C2 vs C4 (prefill_mean) | C1 vs C2 (response_mean, paired) | C1 vs C3 (last_prompt) |"
    cells = "| +1.50 [+1.00, +2.00], Holm p 1e-07 | +0.50 [+0.17, +0.90], Holm p 0.087 | +1.50"
    assert heads in text and f"| `t/a` {cells}" in text and "| +0.33 [-0.92, +1.57], p 0.6 |" in text
    assert "| `t/a` | 0.840 | +0.140 [-0.100, +0.300] |" in text and "| 0.970* |" in text
    assert "| shared, 0.950 | 3 |" in text and "prompt length alone (AUC 0.700)" in text


def test_em_region_shows_every_comparison_and_the_ci_over_vector_refits(tables, tmp_path):
    """Each trait and position: the three comparisons' d_z with CI and Holm p, and beside them
    misaligned vs control's CI over refits of the vector (n/a where the run drew none)."""
    refits = {"ci_low": 0.51, "ci_high": 1.1, "n_draws": 200}
    comparisons = {
        name: {
            pos: {
                "t/a": _paired(
                    dz,
                    dz - 0.2,
                    dz + 0.2,
                    p_holm=0.001,
                    **({"over_vector_draws": refits} if pos == "answers" else {}),
                )
            }
            for pos in ("answers", "last")
        }
        for name, dz in (
            ("misaligned_vs_control", 0.8),
            ("misaligned_vs_base", 0.9),
            ("control_vs_base", -0.7),
        )
    }
    data = {
        "positions": {"answers": "...", "last": "..."},
        "comparisons": comparisons,
        "n_questions": 24,
        "n_samples_per_question": 4,
        "n_pairs": 96,
        "correction": "Holm",
        "mean_response_words": {"base": 23.09},
    }
    (tmp_path / "em_default_x.json").write_text(json.dumps(data))
    text = _render(tables, tmp_path, "emergent-misalignment")
    row = (
        "| `t/a` | answers | +0.80 [+0.60, +1.00], Holm p 0.001 | +0.90 [+0.70, +1.10], Holm p 0.001 "
        "| -0.70 [-0.90, -0.50], Holm p 0.001 | [+0.51, +1.10] (200 refits) |"
    )
    assert row in text and "| `t/a` | last |" in text and text.count("| n/a |") == 1
    assert (
        "24 benign questions x 4 samples = 96 pairs" in text and "The judge did not read the answers" in text
    )
