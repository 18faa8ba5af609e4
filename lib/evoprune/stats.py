"""The study's statistics from records alone (no model, no torch): searches grouped over seeds and their layer
profiles, rank correlation, the claims against each rule, KL against perplexity fitness, and whole-block removal
with the exports."""
from __future__ import annotations

import json

import numpy as np

from evoprune import genes
from evoprune.records import SearchRecord


def removal_search(record: SearchRecord) -> dict:
    """A block-removal search in a few words: the removed blocks, what they cost and scored."""
    return {"removed": record.genome, "fitness": record.fitness, "evaluations": record.spent.evaluations,
            "settings": record.config, "wall_s": record.spent.wall_s, "forward_tokens": record.spent.forward_tokens,
            "test": record.test}


def removal_summary(block_removal: dict, removal_ga_exports: dict) -> dict:
    """Whole blocks removed (02's ``block_removal.json``: every single block, the best set of each depth) and the
    removal GA's best set (03), on the same windows and dtype, each as a share of the blocks and a multiple of
    dense there; and 03's exports."""
    ga = removal_search(SearchRecord.from_dict(removal_ga_exports["removal_ga"]))
    dense_ppl, n = block_removal["depths"][0]["test_ppl"], block_removal["dense_blocks"]
    chosen = [("best set", r) for r in block_removal["depths"][1:]] + [("removal GA", ga["test"])]
    points = [{"removed": r["removed"], "chosen": how, "share": len(r["removed"]) / n, "test_ppl": r["test_ppl"],
               "over_dense": r["test_ppl"] / dense_ppl} for how, r in chosen]
    return {"test_windows": block_removal["test_windows"], "dtype": block_removal["dtype"], "dense_ppl": dense_ppl,
            "dense_blocks": n, "depths": block_removal["depths"], "points": points,
            "single": block_removal["single"], "ga": ga, "exports": removal_ga_exports["exports"],
            "exported_run": removal_ga_exports.get("exported_run")}


def seed_groups(ga_rows: list[dict]) -> dict[str, list[dict]]:
    """GA runs grouped by everything in their config but the seed: one group per search repeated over seeds,
    named by its first run (and the number of seeds when there are several)."""
    groups: dict[str, list[dict]] = {}
    for row in ga_rows:
        key = json.dumps({k: v for k, v in row["config"].items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(row)
    return {(rows[0]["run"] if len(rows) == 1 else f"{rows[0]['run']} ({len(rows)} seeds)"): rows
            for rows in groups.values()}


def run_groups(ga_rows: list[dict]) -> dict[str, str]:
    """Each run's search (``seed_groups``' name): the seeds of one search share its colour in the figures."""
    return {row["run"]: name for name, rows in seed_groups(ga_rows).items() for row in rows}


def layer_profiles(summary: dict) -> dict[str, list[list[float]]]:
    """Figure 2's input: the best genome of each search, one per seed, one rate per block. A search with an
    attention and an MLP rate per block (``--genes group``, stored in turn) gives two profiles, one with a rate per
    matrix (``--genes matrix``) one per matrix of a block (``genes.profiles``). Keyed by the search's first run
    (and the kind of gene): the figure's label counts the seeds."""
    profiles, n_blocks = {}, summary["parameter_counts"]["n_blocks"]
    for rows in seed_groups(summary["ga"]).values():
        name = rows[0]["run"]
        for kind, genomes in genes.profiles([row["genome"] for row in rows], n_blocks).items():
            profiles[f"{name} {kind}".rstrip()] = genomes
    return profiles


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho: the correlation of the two profiles' ranks (tied rates share their mean rank)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        r = np.empty(len(x))
        r[np.argsort(x, kind="stable")] = np.arange(len(x))
        for value in np.unique(x):
            r[x == value] = r[x == value].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def seed_table(summary: dict) -> list[dict]:
    """Each search run over several seeds: mean and range of its test perplexity, against uniform at its target,
    and how alike its layer profiles are (Spearman's rho between every pair of seeds)."""
    rows = []
    for name, runs in seed_groups(summary["ga"]).items():
        if len(runs) < 2:
            continue
        ppl = [r["test_ppl"] for r in runs]
        rhos = [rank_correlation(a["genome"], b["genome"]) for i, a in enumerate(runs) for b in runs[i + 1:]]
        rows.append({"search": name, "seeds": [r["config"]["seed"] for r in runs], "test_ppl_mean": float(np.mean(ppl)),
                     "test_ppl_min": min(ppl), "test_ppl_max": max(ppl),
                     "mean_over_uniform": float(np.mean(ppl)) / runs[0]["uniform_at_target"]["test_ppl"],
                     "profile_rho_mean": float(np.mean(rhos)), "profile_rho_min": min(rhos)})
    return rows


def main_group(summary: dict) -> list[dict]:
    """The main search: the race (else elitist) runs repeated over the most seeds, with perplexity fitness."""
    groups = [rows for rows in seed_groups(summary["ga"]).values()
              if rows[0]["strategy"] != "published" and rows[0].get("fitness_kind", "ppl") == "ppl"]
    return max(groups, key=len, default=[])


def claim_cell(measured: float | None, bound: float, what: str, target: str) -> dict:
    return {"what": what, "measured": measured, "target": target,
            "met": None if measured is None else bool(measured <= bound)}


def claims(summary: dict) -> list[dict]:
    """Issue 16's targets as measured: the main search (mean over its seeds) against uniform and the best rule at
    its target, on test and on the second held-out text; and how much of its gain on the fitness split carried
    over to test (notebook 05 judges the criteria and allocations at other targets: ``methods.claims``)."""
    runs = main_group(summary)
    if not runs:
        return []
    names, (criterion, target) = {r["run"] for r in runs}, (runs[0]["criterion"], runs[0]["target"])
    mean = float(np.mean([r["test_ppl"] for r in runs]))
    rules = {r["method"]: r["test_ppl"] for r in summary.get("rules", [])
             if r["criterion"] == criterion and r["target"] == target}
    label = f"{target:.0%} {criterion}, GA ({f'mean of {len(runs)} seeds' if len(runs) > 1 else 'one seed'})"
    out = [claim_cell(mean / runs[0]["uniform_at_target"]["test_ppl"], 0.5, f"{label} / uniform, test", "≤ 0.5")]
    if rules:
        out.append(claim_cell(mean / min(rules.values()), 0.85,
                         f"{label} / the best no-search allocation ({min(rules, key=rules.get)}), test", "≤ 0.85"))
    held = [g for g in summary["generalization"] if g["run"] in names]
    for rule, bound in (("uniform", 0.55), ("sensitivity", 0.85)):
        ratios = [g[f"ga_over_{rule}"] for g in held if f"ga_over_{rule}" in g]
        if ratios:
            out.append(claim_cell(float(np.mean(ratios)), bound, f"{label} / {rule}, python-docs", f"≤ {bound}"))
    over = [o["fitness_split_over_test"] for o in summary.get("overfitting", []) if o["run"] in names]
    if over:
        out.append({"what": f"{label}: gain on validation / gain on test (ratios to uniform)",
                    "measured": float(np.mean(over)), "target": "reported; closer to 1 than 0.59/0.65 = 0.91",
                    "met": None})
    return out


STORED_TOP_K = 32  # a stored KL reference: the top-k log-probabilities of every position (plus the remaining mass)


def reference_tokens(config: dict, generations: int) -> int:
    """Forward tokens a race with KL fitness spends on the dense model's reference: one dense pass over every
    fresh sample (generation 0's one sample of the last stage's size, then each later generation's stages)."""
    windows = config["low_windows"] * 2 ** (config["stages"] - 1)
    windows += (generations - 1) * sum(config["low_windows"] * 2 ** k for k in range(config["stages"]))
    return windows * config["seq_len"]


def fitness_comparison(summary: dict, data: dict) -> list[dict]:
    """KL against perplexity fitness: pairs of searches alike in everything but the fitness, at the same token
    budget, by what each bought on test and on the second held-out text; with the tokens KL's reference cost
    (computed on each fresh sample) and what storing it for the whole fitness split instead would cost."""
    held = {g["run"]: g for g in summary["generalization"]}
    by_config: dict[str, dict] = {}
    for g in summary["ga"]:
        key = json.dumps({k: v for k, v in g["config"].items() if k != "fitness"}, sort_keys=True)
        by_config.setdefault(key, {})[g["config"].get("fitness", "ppl")] = g
    rows = []
    for pair in by_config.values():
        if {"ppl", "kl"} <= set(pair):
            for kind in ("ppl", "kl"):
                g = pair[kind]
                row = {"run": g["run"], "fitness": kind, "forward_tokens": g["forward_tokens"],
                       "evaluations": g["evaluations"], "wall_s": g["wall_s"], "test_ppl": g["test_ppl"],
                       "test_over_uniform": g["test_ppl"] / g["uniform_at_target"]["test_ppl"],
                       "python_docs_over_uniform": held[g["run"]]["ga_over_uniform"] if g["run"] in held else None}
                if kind == "kl" and g["strategy"] == "race":
                    stored = data[g["fitness_split"]]["n_tokens"]
                    row["reference_tokens_per_sample"] = reference_tokens(g["config"], g["generations_run"])
                    row["reference_tokens_stored"] = stored  # one dense pass over the split, kept as top-k
                    row["stored_top32_mib"] = stored * STORED_TOP_K * 6 / 2 ** 20  # bf16 log-prob + int32 id
                rows.append(row)
    return rows

