"""Readings: a few sentences of markdown that say what one result of the study shows, every number read from
its record (papermill cannot template markdown cells, so the notebooks display these after each step).

Each function takes record dicts as the notebooks write them (``baseline.json``, ``uniform_sweep.json``,
``block_removal.json``, ``ga.json``, ``removal_ga_exports.json``, ``methods.json``, ``summary.json``, a search's
``result.json``) and returns
markdown. Pure functions: no model, no files, no torch.
"""
from __future__ import annotations

import json
from statistics import mean

from evoprune import genes

NEAR_DENSE, DEGRADED = 1.5, 4.0  # ratios to dense up to which a perplexity reads "near dense", then "degraded"


def ppl(x: float) -> str:
    return f"{x:.4g}"


def times(a: float, b: float) -> str:
    """``a`` as a multiple of ``b``: '0.45x'; a third decimal where two would round a difference away."""
    ratio = a / b
    return f"{ratio:.3f}x" if ratio != 1 and f"{ratio:.2f}" == "1.00" else f"{ratio:.2f}x"


def words(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def n_windows(n: int, noun: str = "window") -> str:
    """'1 window', '16 windows'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def pct(x: float) -> str:
    return f"{x:.0%}"


def condition(ratio_to_dense: float) -> str:
    if ratio_to_dense <= NEAR_DENSE:
        return "near dense"
    return "degraded" if ratio_to_dense <= DEGRADED else "collapsed"


def published_study(study: dict) -> str:
    """The study's own result (``data/study_published.json``): its GA against uniform at the GA's target."""
    ga = study["ga"]
    uniform = {round(u["sparsity"], 6): u["ppl"] for u in study["uniform"]}[round(ga["target"], 6)]
    return (f"The published study ({study['model']}) reported a perplexity of {ppl(ga['ppl'])} for its GA at "
            f"{pct(ga['target'])} (population {ga['population']}, best found in generation {ga['generation']} of "
            f"{ga['generations']}) against {ppl(uniform)} for uniform pruning at the same sparsity "
            f"({times(ga['ppl'], uniform)}) and {ppl(study['dense_ppl'])} dense, all on the test windows its GA "
            f"was scored on.")


# --- 01: the dense model and its blocks ----------------------------------------------------------------------

def dense(dense: dict, study: dict) -> str:
    """``baseline.json``'s ``dense`` against the study's own dense figure."""
    return (f"The dense model's test perplexity is **{ppl(dense['test_ppl'])}** on {n_windows(dense['test_windows'])} "
            f"of the primary protocol and **{ppl(dense['study_ppl'])}** on {n_windows(dense['study_windows'])} of the "
            f"study's protocol. Every later number is read against these two. For scale only: the study's "
            f"{study['model']} scored {ppl(study['dense_ppl'])} under its protocol (another model, not comparable "
            f"one to one).")


def parameters(counts: dict) -> str:
    """``baseline.json``'s ``parameter_counts``: what a rate prunes, and what 45% of it is of the whole model."""
    share = counts["prunable"] / counts["total"]
    return (f"Of {counts['total']:,} parameters, {counts['prunable']:,} ({share:.1%}) are the attention and MLP "
            f"matrices of the {counts['n_blocks']} decoder blocks: these are what every rate prunes "
            f"({counts['embeddings_and_head']:,} embedding and head parameters stay dense). So a block sparsity of "
            f"45% zeroes {0.45 * share:.1%} of the whole model.")


def sensitivity(rows: list[dict], shown: int = 3) -> str:
    """``baseline.json``'s ``sensitivity`` scan: which blocks hurt most and least when pruned alone."""
    ranked = sorted(rows, key=lambda r: r["ppl_ratio"])
    name = lambda r: f"{r['block']} ({r['ppl_ratio']:.2f}x)"  # noqa: E731
    return (f"With one block at a time pruned to {pct(rows[0]['rate'])}, validation perplexity rises least for "
            f"blocks {words([name(r) for r in ranked[:shown]])} and most for blocks "
            f"{words([name(r) for r in ranked[::-1][:shown]])} (ratios to dense, {ppl(rows[0]['dense_ppl'])}). "
            f"Blocks differ by a factor of {ranked[-1]['ppl_ratio'] / ranked[0]['ppl_ratio']:.3g} in how much "
            f"they tolerate: the room a layer-wise allocation has. The *sensitivity ranking* (prune the tolerant "
            f"blocks more) is built from this scan; it is one of the rules a search has to beat.")


# --- 02: allocations that need no search ------------------------------------------------------------------

def uniform_sweep(rows: list[dict], study: dict) -> str:
    """``uniform_sweep.json``'s rows (the first at 0%) against the study's published uniform curve."""
    dense_ppl = rows[0]["test_ppl"]
    points = [f"{pct(r['sparsity'])}: {times(r['test_ppl'], dense_ppl)}" for r in rows[1:]]
    text = (f"Every block pruned to the same rate, test perplexity as a multiple of dense (primary protocol): "
            f"{', '.join(points)}.")
    cliff = next((r for r in rows if r["test_ppl"] > DEGRADED * dense_ppl), None)
    if cliff is not None:
        text += (f" Past {DEGRADED:g}x dense from {pct(cliff['sparsity'])} on: the cliff that a layer-wise "
                 f"allocation is meant to push back.")
    theirs = {round(u["sparsity"], 6): u["ppl"] for u in study["uniform"]}
    shared = [r for r in rows if round(r["sparsity"], 6) in theirs]
    if shared:
        text += (f" The study's {study['model']} (its protocol): "
                 + ", ".join(f"{pct(r['sparsity'])}: {times(theirs[round(r['sparsity'], 6)], study['dense_ppl'])}"
                             for r in shared) + "; ours under the study's protocol: "
                 + ", ".join(f"{pct(r['sparsity'])}: {times(r['study_ppl'], rows[0]['study_ppl'])}" for r in shared)
                 + ".")
    return text


def cells(rows: list[dict]) -> dict[tuple, dict[str, float]]:
    """Method rows as {(criterion, target): {method: test perplexity}}."""
    out: dict[tuple, dict[str, float]] = {}
    for r in rows:
        out.setdefault((r["criterion"], r["target"]), {})[r["method"]] = r["test_ppl"]
    return out


def block_removal(removal: dict) -> str:
    """``block_removal.json``: whole blocks gone, perplexity and latency."""
    dense_row, singles = removal["depths"][0], sorted(removal["single"], key=lambda r: r["test_ppl"])
    best, worst = singles[0], singles[-1]
    timed = next(d for d in removal["depths"] if d["removed"] == best["removed"])
    text = (f"Removing one whole block of {removal['dense_blocks']}: the best choice, block {best['removed'][0]}, "
            f"gives {ppl(best['test_ppl'])} against {ppl(dense_row['test_ppl'])} dense "
            f"({times(best['test_ppl'], dense_row['test_ppl'])}; {n_windows(removal['test_windows'], 'test window')}, "
            f"{removal['dtype']}); the worst, block {worst['removed'][0]}, {ppl(worst['test_ppl'])}. Without it "
            f"a generated token takes {timed['ms_per_token']:.1f} ms against {dense_row['ms_per_token']:.1f} ms "
            f"(median of interleaved rounds, float32)"
            + (": unlike zeroed weights, a removed block saves time."
               if timed["ms_per_token"] < dense_row["ms_per_token"] else "."))
    if removal.get("pairs"):
        pair = min(removal["pairs"], key=lambda r: r["test_ppl"])
        text += f" The best pair, blocks {words([str(b) for b in pair['removed']])}, gives {ppl(pair['test_ppl'])}."
    return text


# --- 03: the searches ------------------------------------------------------------------------------------------

def search(run: str, record) -> str:
    """One search's record (``records.SearchRecord``): what it spent, what it found, and what that is on test."""
    cfg, test, spent = record.config, record.test, record.spent
    text = (f"`{run}` ({cfg['strategy']}) spent {spent.evaluations:,} evaluations, {spent.forward_tokens:,} forward "
            f"tokens and {spent.wall_s:.0f} s; its fitness is {cfg['fitness']} on the {cfg['fitness_split']} split")
    text += ", so its test numbers are held out." if cfg["fitness_split"] != "test" else \
        ", the windows it is also scored on (the study's own setting: not held out)."
    if cfg["strategy"] == "published":
        floor = cfg["target"] - cfg["tolerance"]
        text += (f" As published, it only penalizes genomes below {pct(floor)} and has no upper bound: its best "
                 f"genome has **{test['block_sparsity']:.2%}** block sparsity")
    else:
        text += f" Its best genome has exactly **{test['block_sparsity']:.2%}** block sparsity"
    uniform = test["uniform"]["test_ppl"]
    text += (f" and a test perplexity of **{ppl(test['test_ppl'])}**, {times(test['test_ppl'], uniform)} uniform "
             f"pruning at {pct(cfg['target'])} ({ppl(uniform)}).")
    if cfg["strategy"] == "race" and record.start:
        text += (" It started from the best of " + ", ".join(f"{k} ({ppl(v)})" for k, v in record.start.items())
                 + " on its first validation sample.")
    return text


def rules(rule_rows: list[dict], ga_rows: list[dict]) -> str:
    """``ga.json``'s ``rules`` against the searches at the same criterion and exact target."""
    if not rule_rows:
        return "No search in this profile has an exact target, so there are no rules to compare with."
    lines = []
    for (criterion, target), methods in cells(rule_rows).items():
        best = min(methods, key=methods.get)
        others = ", ".join(f"{m} {ppl(v)}" for m, v in methods.items() if m != best)
        runs = [r for r in ga_rows
                if r["strategy"] != "published" and (r["criterion"], r["target"]) == (criterion, target)]
        lines.append(f"At {pct(target)} {criterion}, the best allocation without search is **{best}** "
                     f"({ppl(methods[best])}; {others}). "
                     + "; ".join(f"`{r['run']}` scores {ppl(r['test_ppl'])}, {times(r['test_ppl'], methods[best])} "
                                 f"of it" for r in runs) + ".")
    return " ".join(lines)


def versus(ratio: float) -> str:
    return "beats" if ratio < 1 else "does not beat"


def generalization(rows: list[dict]) -> str:
    """``ga.json``'s ``generalization``: each search against uniform and the rules on a text no fitness saw."""
    head = rows[0]
    lines = [f"On `{head['text']}` ({n_windows(head['n_windows'])}), a text that no fitness ever scored:"]
    for r in rows:
        rules_seen = [k[len("ga_over_"):] for k in r if k.startswith("ga_over_") and k != "ga_over_uniform"]
        line = (f"- `{r['run']}` {versus(r['ga_over_uniform'])} uniform at the same sparsity "
                f"({ppl(r['ga_ppl'])} against {ppl(r['uniform_ppl'])}, {r['ga_over_uniform']:.2f}x)")
        if rules_seen:
            line += "; against the rules: " + ", ".join(f"{r[f'ga_over_{k}']:.2f}x {k}" for k in rules_seen)
        lines.append(line + ".")
    lines.append("A ratio below 1 means the allocation the search found is better for the model, not only for "
                 "WikiText.")
    return "\n".join(lines)


def overfitting(rows: list[dict]) -> str:
    """``ga.json``'s ``overfitting``: gain over uniform on the fitness split against gain on test."""
    parts = [f"`{o['run']}` {o['fitness_split_ratio']:.2f}x on {o['split']}, {o['test_ratio']:.2f}x on test "
             f"(ratio {o['fitness_split_over_test']:.2f})" for o in rows]
    return (f"Each search's perplexity over uniform's at the same sparsity, on the first "
            f"{n_windows(rows[0]['windows'])} of the split its fitness came from and on test: {'; '.join(parts)}. A ratio near 1 means the "
            f"gain carries over to text the search never scored; well below 1, it learnt its fitness data.")


def convergence(histories: dict[str, list[dict]], ga_rows: list[dict]) -> str:
    """Each search's ``history.csv``: its fitness at the first and last generation, and what that cost."""
    strategy, kind = ({r["run"]: r[k] for r in ga_rows} for k in ("strategy", "fitness_kind"))
    parts = []
    for run, rows in histories.items():
        first, last = rows[0], rows[-1]
        parts.append(f"`{run}` ({kind[run]}) {ppl(first['best'])} at generation {first['generation']} → "
                     f"{ppl(last['best'])} at generation {last['generation']} ({last['forward_tokens']:,} forward "
                     f"tokens)")
    text = f"Best fitness per generation, on validation: {'; '.join(parts)}."
    if "race" in strategy.values():
        text += (" A race scores each generation on a fresh validation sample, so its raw curve is noisy; the "
                 "figure's paired progress compares parent and child on the same sample.")
    return text


def removal_search(record) -> str:
    """The removal GA's record (``records.SearchRecord``, genome = the removed blocks): the best set of k removed
    blocks and what it saves."""
    test, k = record.test, record.config["k"]
    return (f"The removal GA's best set of {k} blocks, {words([str(b) for b in record.genome])} "
            f"({record.spent.evaluations} evaluations), gives a test perplexity of {ppl(test['test_ppl'])} "
            f"({n_windows(test['test_windows'])}, {test['dtype']}) with {test['blocks']} blocks and "
            f"{test['parameters']:,} parameters: {test['ms_per_token']:.1f} ms per generated token against "
            f"{test['dense_ms_per_token']:.1f} ms dense.")


def exports(rows: list[dict]) -> str:
    """``removal_ga_exports.json``'s ``exports``: each saved model reloaded and re-scored."""
    parts = [f"`{r['dir'].rsplit('/', 1)[-1]}`: {ppl(r['ppl'])} before, {ppl(r['ppl_reloaded'])} after "
             f"({'the same' if r['same_ppl'] else 'different'})" + compressed_words(r) for r in rows]
    return ("Saved as Hugging Face directories and reloaded with `AutoModelForCausalLM`, test perplexity "
            f"(float32, {n_windows(rows[0]['test_windows'])}): {'; '.join(parts)}.")


def compressed_words(row: dict) -> str:
    """An export's compressed (sparse-bitmask) copy: its size against the dense one, and its reload."""
    if "compressed_over_dense" not in row:
        return ""
    same = "the same perplexity" if row["compressed_same_ppl"] else "a **different** perplexity"
    return f", compressed {row['compressed_over_dense']:.2f}x the dense size on disk with {same}"


def downstream(rows: list[dict]) -> str:
    """``downstream.json``'s rows: accuracy beside test perplexity."""
    if not rows:
        return "No downstream tasks in this profile."
    parts = [f"{r['criterion']} {r['name']}: {r['accuracy']:.2f} on {r['task']} ({r['n']} items), perplexity "
             f"{ppl(r['test_ppl'])}" for r in rows]
    worst = max(r["n"] for r in rows)
    return (f"{'; '.join(parts)}. On {worst} items an accuracy's standard error is up to {0.5 / worst ** 0.5:.2f}: "
            f"read differences smaller than twice that as ties.")


# --- 04: the study as a whole (summary.json) -----------------------------------------------------------------

def main_runs(summary: dict) -> list[dict]:
    """The main search's runs: of the searches with an exact target and perplexity fitness, the one run over the
    most seeds (runs whose settings differ only in the seed), the first on a tie."""
    groups: dict[str, list[dict]] = {}
    for g in summary["ga"]:
        if g["strategy"] != "published" and g.get("fitness_kind", "ppl") == "ppl":
            same = json.dumps({k: v for k, v in g["config"].items() if k != "seed"}, sort_keys=True)
            groups.setdefault(same, []).append(g)
    return max(groups.values(), key=len, default=[])


def headline(summary: dict, study: dict) -> str:
    """Figure 1's reading: the published GA, the main search, uniform and the study's own numbers."""
    dense_ppl, lines = summary["dense"]["test_ppl"], []
    for g in summary["ga"]:
        if g["strategy"] == "published":
            lines.append(f"- The published GA (`{g['run']}`, at least {pct(g['min_sparsity'])}) ends at "
                         f"{g['block_sparsity']:.2%} block sparsity and {ppl(g['test_ppl'])} "
                         f"({times(g['test_ppl'], dense_ppl)} dense).")
    runs = main_runs(summary)
    if runs:
        avg, uniform = mean(r["test_ppl"] for r in runs), runs[0]["uniform_at_target"]["test_ppl"]
        lines.append(f"- The main search (`{runs[0]['strategy']}`, exactly {pct(runs[0]['target'])}, "
                     f"{len(runs)} run{'s' if len(runs) > 1 else ''}) averages **{ppl(avg)}**: "
                     f"{times(avg, dense_ppl)} dense and **{times(avg, uniform)} uniform** at the same sparsity "
                     f"({ppl(uniform)}, {condition(uniform / dense_ppl)}).")
    return "\n".join(lines + ["- " + published_study(study)])


def profiles(summary: dict, shown: int = 3) -> str:
    """Figure 2's reading: where the main search prunes more and less, and how alike its seeds' profiles are."""
    runs, n_blocks = main_runs(summary), summary["parameter_counts"]["n_blocks"]
    if not runs:
        return "No search with an exact target in this profile."
    lines = []
    for group, rates in genes.profiles([r["genome"] for r in runs], n_blocks).items():
        avg = [mean(col) for col in zip(*rates)]
        order = sorted(range(n_blocks), key=avg.__getitem__)
        lines.append(f"- {group or 'block'} rates average {mean(avg):.2f}; kept densest: blocks "
                     f"{words([f'{b} ({avg[b]:.2f})' for b in order[:shown]])}; pruned most: "
                     f"{words([f'{b} ({avg[b]:.2f})' for b in order[::-1][:shown]])}.")
    for s in summary.get("seeds", []):
        lines.append(f"- `{s['search']}`: Spearman's rho between seeds' profiles {s['profile_rho_mean']:.2f} on "
                     f"average (lowest {s['profile_rho_min']:.2f}); test perplexity {ppl(s['test_ppl_min'])} to "
                     f"{ppl(s['test_ppl_max'])}.")
    return "\n".join(lines)


def claims(rows: list[dict], listed: int = 4) -> str:
    """``summary.json``'s ``claims``: how many of the targets set for the study are met, and which are not (named
    when at most ``listed`` are missed)."""
    judged = [c for c in rows if c["met"] is not None]
    if not judged:
        return "No targets to judge in this profile."
    missed = [f"{c['what']} ({c['measured']:.2f}, target {c['target']})" for c in judged if not c["met"]]
    text = f"{len(judged) - len(missed)} of the {len(judged)} targets are met."
    if not missed or len(missed) > listed:
        return text
    return text + " Missed: " + "; ".join(missed) + "."


def frontier(lines: dict, dense_ppl: float) -> str:
    """05's frontier: per criterion, its best model at each target (a rule, or the race's mean) against dense."""
    parts = []
    for criterion, line in lines.items():
        best = {p["target"]: p for p in line["best rule"]}
        for p in line["race"]:
            if p["ppl"] < best[p["target"]]["ppl"]:
                best[p["target"]] = p
        parts.append(f"{criterion}: " + ", ".join(f"{times(p['ppl'], dense_ppl)} dense at {pct(t)} ({p['method']})"
                                                  for t, p in sorted(best.items())))
    return "Test perplexity against dense (" + ppl(dense_ppl) + "), the best of each criterion: " + "; ".join(parts) + "."


def seed_agreement(rows: list[dict]) -> str:
    """05's heatmap: how alike the race seeds' allocations are, and how they split the target."""
    if not rows:
        return "No cell has two race seeds here."
    def agreement(rho):
        return "no rank correlation (the seeds kept one rate everywhere)" if rho is None else \
            f"rank correlation {rho:.2f} between seeds"
    return "Race seeds' allocations: " + "; ".join(
        f"{r['criterion']} {pct(r['target'])}: {agreement(r['rank_correlation'])}, mean "
        f"attention rate {pct(r['attention'])} and MLP rate {pct(r['mlp'])}" for r in rows) + "."


def methods_table(table: list[dict]) -> str:
    """05's table: per criterion and target, the race (mean and range of its seeds) against the best rule."""
    lines = []
    for row in table:
        if "race" in row:
            rules = {k: row[k] for k in ("uniform", "OWL", "AlphaPruning", "sensitivity") if k in row}
            best = min(rules, key=rules.get)
            lines.append(f"{row['criterion']} {pct(row['target'])}: race {ppl(row['race'])} "
                         f"({ppl(row['race_min'])}–{ppl(row['race_max'])}, {n_windows(row['seeds'], 'seed')}), "
                         f"{times(row['race'], rules[best])} the best rule ({best}, {ppl(rules[best])}) on test, "
                         f"{row['race/best rule (python-docs)']:.2f}x on python-docs")
    return ("Test perplexity, float32: " + "; ".join(lines) + ".") if lines else "No race in this profile."


def removal(summary: dict) -> str:
    """Figure 3's reading (``summary['removal']``): the best single block removed and the removal GA's best set,
    against dense on the same windows."""
    m = summary["removal"]
    single, ga = min(m["single"], key=lambda r: r["test_ppl"]), m["ga"]
    return (f"Removing the best single block ({single['removed'][0]}) gives {ppl(single['test_ppl'])} against "
            f"{ppl(m['dense_ppl'])} dense ({n_windows(m['test_windows'], 'test window')}, {m['dtype']}); the removal "
            f"GA's best set of {ga['settings']['k']} blocks ({ga['evaluations']} evaluations) gives "
            f"{ppl(ga['test']['test_ppl'])}.")


def protocol(summary: dict) -> str:
    """``summary.json``'s ``protocol``: splits, windows and dtypes of the reported numbers and of each fitness."""
    p, windows = summary["protocol"], summary["protocol"]["test_windows"]
    searches = [f"`{run}`: {s['fitness_kind']} on {s['fitness_split']} ({s['dtype']})"
                for run, s in p["search"].items()]
    held = all(s["fitness_split"] != p["reported_split"] for s in p["search"].values())
    return (f"- Reported: the **{p['reported_split']}** split, {p['reported_dtype']}.\n"
            f"- *primary*: {p['primary']}; the first {n_windows(windows['primary'])}.\n"
            f"- *study*: {p['study']}; {n_windows(windows['study'])}.\n"
            f"- Search fitness: {'; '.join(searches)}. "
            + ("No search ever scored a test window, so every search's test number is held out."
               if held else "A search whose fitness is on test is scored on its own fitness data (as published)."))


def findings(summary: dict, study: dict) -> str:
    """The study's findings in a few lines: the headline, the held-out text, the fitness split and the targets."""
    lines = [headline(summary, study)]
    runs = {r["run"] for r in main_runs(summary)}
    held = [g for g in summary["generalization"] if g["run"] in runs]
    if held:
        ratios = {k: mean(g[k] for g in held) for k in held[0] if k.startswith("ga_over_")}
        lines.append(f"- On `{held[0]['text']}`, a text no fitness saw, the main search is "
                     + ", ".join(f"{v:.2f}x {k[len('ga_over_'):]}" for k, v in ratios.items())
                     + " (mean over its runs): the allocation it found "
                     + ("carries over to another text." if ratios["ga_over_uniform"] < 1 else
                        "does not carry over to another text."))
    over = [o["fitness_split_over_test"] for o in summary.get("overfitting", []) if o["run"] in runs]
    if over:
        lines.append(f"- Its gain over uniform on its fitness split against its gain on test: {mean(over):.2f} "
                     f"(1 = all of it carried over).")
    lines.append(f"- Targets: {claims(summary.get('claims', []), listed=0)} (the table above says which).")
    return "\n".join(lines)
