"""The study's second half (notebook 05): criteria x allocations x targets, at the sparsities people use.

A cell is one model: a criterion (magnitude, wanda, sparsegpt) pruned to a target's block sparsity by an allocation
that needs no search (uniform, OWL, AlphaPruning, the sensitivity ranking: one rate per block, snapped to the level
grid for sparsegpt) or by the race (one search per seed, all at one token budget). Every cell is measured alike:
float32, primary protocol, the first ``windows`` test windows and the first ``docs_windows`` windows of
``python-docs``, with its true block sparsity and the attention and MLP rates of each block. ``claims`` sets the
race's mean over seeds against the best rule of the same criterion and target on each text, and the best model at
a target against dense.
"""
from __future__ import annotations

import math
from itertools import combinations
from statistics import mean

from evoprune import EvopruneError
from evoprune.data import PYTHON_DOCS
from evoprune.experiments import accuracy_table, criterion_budget
from evoprune.records import ReportPaths, report_paths
from evoprune.search_runs import on_grid, rule_allocations, run_search, search_settings
from evoprune.session import Session
from evoprune.stats import claim_cell, rank_correlation

RULES = ("uniform", "OWL", "AlphaPruning", "sensitivity")
RACE = "race"
RACE_OVER_BEST_RULE = {0.5: 0.92, 0.6: 0.8, 0.7: 0.6}  # the race's mean over seeds / the best rule, at most
BEST_OVER_DENSE = {0.5: 1.6, 0.7: 5.0}  # the best model at a target / dense, at most (test)
TEXTS = {"test": "test_ppl", PYTHON_DOCS: "docs_ppl"}


def group_rates(pruner) -> dict[str, list[float]]:
    """Each block's attention and MLP rate as pruned now: removed weights over weights, per group."""
    removed = [[0, 0] for _ in range(pruner.n_blocks)]
    total = [[0, 0] for _ in range(pruner.n_blocks)]
    for m, k in zip(pruner.matrices, pruner.removed):
        removed[m.block][m.group] += k
        total[m.block][m.group] += m.numel
    return {group: [r[g] / t[g] for r, t in zip(removed, total)] for g, group in enumerate(("attention", "mlp"))}


def measure(session: Session, criterion: str, genome, windows: int | None, docs_windows: int | None) -> dict:
    """One cell's numbers: float32 test and python-docs perplexity (primary protocol), its true block sparsity,
    its genome and per-block attention and MLP rates."""
    pruner = session.apply(genome, criterion)
    test = session.measure(pruner, "primary", windows)
    docs = session.measure(pruner, "primary", docs_windows, split=PYTHON_DOCS)
    return {"block_sparsity": pruner.block_sparsity(), "test_ppl": test.ppl, "test_windows": test.n_windows,
            "docs_ppl": docs.ppl, "docs_windows": docs.n_windows, "genome": list(pruner.genome),
            **group_rates(pruner)}


def dense_row(session: Session, windows: int | None, docs_windows: int | None) -> dict:
    session.restore()
    return {"criterion": "dense", "target": 0.0, "method": "dense", "seed": None,
            **measure(session, "magnitude", 0.0, windows, docs_windows)}


def rule_cells(session: Session, criterion: str, target: float, sensitivity: list[float], windows: int | None,
               docs_windows: int | None, dtype: str) -> list[dict]:
    """Uniform, OWL, AlphaPruning (its epsilon chosen on validation) and the sensitivity ranking at ``target``."""
    rules = rule_allocations(session, target, "block", sensitivity, criterion, dtype)
    pruner = session.pruner(criterion)
    genomes = {"uniform": [target] * session.n_blocks, **rules}
    rows = [{"criterion": criterion, "target": target, "method": method, "seed": None,
             **measure(session, criterion, on_grid(pruner, genomes[method], target), windows, docs_windows)}
            for method in RULES if method in genomes]
    session.restore()
    return rows


def race_dir(paths: ReportPaths, criterion: str, target: float, seed: int):
    return paths.search("methods") / f"{criterion}-{round(target * 100)}-s{seed}"


def race_cells(session: Session, paths: ReportPaths, criterion: str, target: float, race: dict, seeds: list[int],
               sensitivity: list[float], windows: int | None, docs_windows: int | None, dtype: str) -> list[dict]:
    """One race per seed (``race``: its settings, a criterion's own under its name), each written to
    ``search/methods/<criterion>-<target%>-s<seed>/`` and read back when finished, then measured as a rule is."""
    rows = []
    for seed in seeds:
        settings, spec = search_settings(session, criterion_budget(race, criterion), criterion=criterion,
                                         target=target, seed=seed, test_windows=windows, study_windows=0, dtype=dtype)
        found = run_search(session, settings, spec, race_dir(paths, criterion, target, seed), sensitivity=sensitivity)
        rows.append({"criterion": criterion, "target": target, "method": RACE, "seed": seed,
                     **measure(session, criterion, found.genome, windows, docs_windows), "genes": spec.genes,
                     "fitness": found.fitness, "forward_tokens": found.spent.forward_tokens,
                     "generations": len(found.history), "wall_s": found.spent.wall_s})
    session.restore()
    return rows


def other_profiles_rows(profiles: list[str], own: list[dict], root=None) -> list[dict]:
    """The cells another profile's 05 measured (its ``methods.json``), to show beside this profile's: refused
    unless it measured the same model on the same windows (the dense rows must agree)."""
    dense = next(r for r in own if r["method"] == "dense")
    rows = []
    for profile in profiles:
        other = report_paths(profile, root)
        saved = other.read("methods", "05_methods")
        theirs = next(r for r in saved["rows"] if r["method"] == "dense")
        # the same windows, and dense alike up to the last digits another CPU's float32 kernels may change
        same = all(theirs[k] == dense[k] for k in ("test_windows", "docs_windows")) and all(
            math.isclose(theirs[k], dense[k], rel_tol=1e-4) for k in ("test_ppl", "docs_ppl"))
        if not same:
            raise EvopruneError(f"{other.record('methods')} measured dense as {theirs['test_ppl']:.4g} on "
                                f"{theirs['test_windows']} test windows, this profile {dense['test_ppl']:.4g} on "
                                f"{dense['test_windows']}: combine profiles of the same model, data and windows.")
        rows += [{**r, "profile": profile} for r in saved["rows"] if r["method"] != "dense"]
    return rows


# --- what the cells show (no model) ---------------------------------------------------------------------------


def cell_groups(rows: list[dict]) -> dict[tuple[str, float], list[dict]]:
    """The rows of each (criterion, target), in the order they come."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        if r["method"] != "dense":
            groups.setdefault((r["criterion"], r["target"]), []).append(r)
    return groups


def best_rule(cell: list[dict], key: str = "test_ppl") -> dict:
    """The rule with the lowest ``key`` among a cell's rules."""
    return min((r for r in cell if r["method"] != RACE), key=lambda r: r[key])


def races(cell: list[dict]) -> list[dict]:
    return [r for r in cell if r["method"] == RACE]


def table(rows: list[dict]) -> list[dict]:
    """One row per criterion and target: each rule's test perplexity, the race's mean and range over its seeds,
    and the race's mean over the best rule on test and on python-docs."""
    out = []
    for (criterion, target), cell in cell_groups(rows).items():
        row = {"criterion": criterion, "target": target}
        row.update({r["method"]: r["test_ppl"] for r in cell if r["method"] != RACE})
        raced = races(cell)
        if raced:
            ppl = [r["test_ppl"] for r in raced]
            row.update({"race": mean(ppl), "race_min": min(ppl), "race_max": max(ppl), "seeds": len(raced)})
            for text, key in TEXTS.items():
                row[f"race/best rule ({text})"] = mean(r[key] for r in raced) / best_rule(cell, key)[key]
        out.append(row)
    return out


def claims(rows: list[dict]) -> list[dict]:
    """The targets as measured (rows like ``stats.claims``'): at each bounded target, the race's mean over seeds
    against the best rule of its criterion (on test and on python-docs; with at least two seeds), and the best
    model at a target against dense (test)."""
    dense = next(r for r in rows if r["method"] == "dense")
    out = []
    for (criterion, target), cell in cell_groups(rows).items():
        raced, bound = races(cell), RACE_OVER_BEST_RULE.get(target)
        if bound is not None and len(raced) > 1:
            for text, key in TEXTS.items():
                rule = best_rule(cell, key)
                out.append(claim_cell(mean(r[key] for r in raced) / rule[key], bound,
                                      f"{criterion} {target:.0%}: race (mean of {len(raced)} seeds) / the best rule "
                                      f"({rule['method']}), {text}", f"≤ {bound}"))
    for target, bound in BEST_OVER_DENSE.items():
        best = best_model(rows, target)
        if best:
            out.append(claim_cell(best["test_ppl"] / dense["test_ppl"], bound,
                                  f"the best model at {target:.0%} ({best['criterion']}, {best['method']}) / dense, "
                                  "test", f"≤ {bound}"))
    return out


def best_model(rows: list[dict], target: float) -> dict | None:
    """The lowest test perplexity at ``target``: a rule, or a race's mean over its seeds (never its best seed)."""
    candidates = []
    for (criterion, t), cell in cell_groups(rows).items():
        if t == target:
            candidates += [r for r in cell if r["method"] != RACE]
            raced = races(cell)
            if raced:
                candidates.append({"criterion": criterion, "target": t, "method": f"race (mean of {len(raced)})",
                                   "test_ppl": mean(r["test_ppl"] for r in raced)})
    return min(candidates, key=lambda r: r["test_ppl"]) if candidates else None


def frontier(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """Per criterion, the points of its best rule and of its race over the targets: true block sparsity (the
    seeds' mean) and test perplexity (the seeds' mean, min and max)."""
    lines: dict[str, dict[str, list[dict]]] = {}
    for (criterion, target), cell in sorted(cell_groups(rows).items()):
        line = lines.setdefault(criterion, {"best rule": [], RACE: []})
        rule = best_rule(cell)
        line["best rule"].append({"target": target, "sparsity": rule["block_sparsity"], "ppl": rule["test_ppl"],
                                  "low": rule["test_ppl"], "high": rule["test_ppl"], "method": rule["method"]})
        raced = races(cell)
        if raced:
            ppl = [r["test_ppl"] for r in raced]
            line[RACE].append({"target": target, "sparsity": mean(r["block_sparsity"] for r in raced),
                               "ppl": mean(ppl), "low": min(ppl), "high": max(ppl), "method": RACE})
    return lines


def heatmap_rows(rows: list[dict]) -> list[dict]:
    """The allocations to set side by side: per criterion and target, each race seed and the best rule (on test),
    each with its per-block attention and MLP rates."""
    out = []
    for (criterion, target), cell in cell_groups(rows).items():
        rule = best_rule(cell)
        chosen = [*races(cell), rule]
        for r in chosen:
            who = f"race s{r['seed']}" if r["method"] == RACE else r["method"]
            out.append({"label": f"{criterion} {target:.0%} {who}", "attention": r["attention"], "mlp": r["mlp"]})
    return out


def downstream_plan(rows: list[dict], targets: list[float]) -> dict[str, dict[str, dict]]:
    """Which cells get downstream accuracy: dense, and per criterion at each of ``targets`` its best rule (on
    test) and its race's first seed (chosen before any number: not the best seed)."""
    dense = next(r for r in rows if r["method"] == "dense")
    plan: dict[str, dict[str, dict]] = {"magnitude": {"dense": dense}}
    for (criterion, target), cell in cell_groups(rows).items():
        if target in targets:
            rule = best_rule(cell)
            chosen = plan.setdefault(criterion, {})
            chosen[f"{target:.0%} {rule['method']}"] = rule
            if races(cell):
                chosen[f"{target:.0%} race s{races(cell)[0]['seed']}"] = races(cell)[0]
    return plan


def downstream(session: Session, rows: list[dict], tasks: list[str], limit: int | None,
               targets: list[float]) -> list[dict]:
    """Accuracy on ``tasks`` (lm-evaluation-harness) of ``downstream_plan``'s cells, beside their test perplexity
    (the genomes stay in the cells' rows; dense is measured with a magnitude pruner at rate 0 and named "dense")."""
    if not tasks:
        return []
    plan = downstream_plan(rows, targets)
    measured = accuracy_table(session, {c: {name: r["genome"] for name, r in cells.items()}
                                        for c, cells in plan.items()}, tasks, limit)
    return [{**{k: v for k, v in row.items() if k != "genome"},
             "criterion": "dense" if row["name"] == "dense" else row["criterion"],
             "test_ppl": plan[row["criterion"]][row["name"]]["test_ppl"]} for row in measured]


def seed_agreement(rows: list[dict]) -> list[dict]:
    """Per criterion and target with two or more race seeds: how alike the seeds' allocations are (the mean
    Spearman correlation of each pair's attention-and-MLP rates) and how they split the target (mean attention
    and MLP rates over blocks and seeds). A seed that kept one rate everywhere has no ranks: its pairs are left
    out, and with no pair left the correlation is None."""
    out = []
    for (criterion, target), cell in cell_groups(rows).items():
        raced = races(cell)
        if len(raced) > 1:
            profiles = [r["attention"] + r["mlp"] for r in raced]
            rho = [r for r in (rank_correlation(a, b) for a, b in combinations(profiles, 2)) if not math.isnan(r)]
            out.append({"criterion": criterion, "target": target, "seeds": len(raced),
                        "rank_correlation": mean(rho) if rho else None,
                        "attention": mean(mean(r["attention"]) for r in raced),
                        "mlp": mean(mean(r["mlp"]) for r in raced)})
    return out
