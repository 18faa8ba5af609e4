"""Assemble ``summary.json`` and ``REPORT.md`` from the records the notebooks leave in ``reports/<profile>/``:
``baseline.json`` (01), ``uniform_sweep.json`` (02), ``ga.json`` (03) and the runner's ``timings.json``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from evoprune import EvopruneError, search
from evoprune.results import (PROTOCOLS, REPORTED_DTYPE, ROOT, ReportPaths, markdown_table, read_csv, read_json, read_record,
                              study_published, validate_summary)

RECORDS = {"baseline": "01_baseline", "uniform_sweep": "02_uniform_sweep", "ga": "03_ga_search",
           "allocations": "02_uniform_sweep", "methods_ga": "03_ga_search"}
GA_FIELDS = ("run", "strategy", "fitness_split", "min_sparsity", "criterion", "target", "block_sparsity", "genome",
             "fitness", "test_ppl", "study_ppl", "uniform_at_target", "evaluations", "forward_tokens", "wall_s", "config")
STATUS = ((1.5, "near dense"), (4.0, "degraded"))  # PPL / dense PPL up to these bounds; above: collapsed


def histories(paths: ReportPaths, runs) -> dict[str, list[dict]]:
    """Each search's ``history.csv`` (generation, best, mean, evaluations, forward tokens, wall time)."""
    return {run: read_csv(paths.search(run) / "history.csv") for run in runs}


def load_records(paths: ReportPaths) -> dict:
    """The notebooks' records; a missing one is an error naming the notebook that writes it."""
    records = {name: read_record(paths.require(paths.record(name), notebook)) for name, notebook in RECORDS.items()}
    records["timings"] = read_json(paths.timings) if paths.timings.exists() else {}
    optional = paths.record("downstream")  # 03 writes it when its profile names downstream tasks
    records["downstream"] = read_record(optional) if optional.exists() else {"rows": []}
    return records


def _test_windows(records: dict) -> dict:
    """The test windows behind every reported number, which must agree across notebooks."""
    seen = {(r["test_windows"], r["study_windows"])
            for r in [records["baseline"]["dense"], *records["uniform_sweep"]["rows"], *records["ga"]["rows"]]}
    if len(seen) != 1:
        raise EvopruneError(f"the notebooks measured test perplexity on different windows {sorted(seen)}: re-run "
                            f"01_baseline, 02_uniform_sweep and 03_ga_search with the same test_windows.")
    primary, study = seen.pop()
    return {"primary": primary, "study": study}


def build_summary(paths: ReportPaths, records: dict) -> dict:
    baseline, sweep, ga = records["baseline"], records["uniform_sweep"], records["ga"]
    prov = baseline["provenance"]
    summary = {
        "profile": paths.profile,
        "model": baseline["model"],
        "data": baseline["data"],
        "protocol": {"reported_split": "test", "reported_dtype": REPORTED_DTYPE, "test_windows": _test_windows(records),
                     **PROTOCOLS,
                     "search": {r["run"]: {"fitness_kind": r["fitness_kind"], "fitness_split": r["fitness_split"],
                                            "dtype": r["config"].get("dtype")} for r in ga["rows"]}},
        "provenance": {"weights_hash": baseline["weights_hash"], "git_commit": prov["git_commit"],
                       "packages": prov["packages"], "python": prov["python"], "hardware": prov["hardware"],
                       "seeds": {"search": ga["provenance"].get("seed"), "study_windows": 365},
                       "budgets": {r["run"]: r["config"] for r in ga["rows"]},
                       "notebook_wall_s": {k: v["wall_s"] for k, v in records["timings"].items()},
                       "notebook_read_back": {k: v["read_back"] for k, v in records["timings"].items()
                                              if "read_back" in v},
                       "notebook_forward_tokens": {k: v["forward_tokens"] for k, v in records["timings"].items()
                                                   if "forward_tokens" in v},
                       "recorded_at": {name: records[name]["provenance"]["recorded_at"] for name in RECORDS}},
        "parameter_counts": baseline["parameter_counts"],
        "dense": {k: baseline["dense"][k] for k in ("test_ppl", "study_ppl")},
        "uniform": [{k: r[k] for k in ("sparsity", "criterion", "block_sparsity", "test_ppl", "study_ppl")}
                    for r in sweep["rows"]],
        "ga": [{**{k: r[k] for k in GA_FIELDS}, "fitness_kind": r["fitness_kind"],
                "generations_run": len(read_csv(paths.search(r["run"]) / "history.csv"))} for r in ga["rows"]],
        "generalization": ga["generalization"],
        "rules": [{k: v for k, v in r.items() if k != "genome"} for r in ga.get("rules", [])],
        "overfitting": ga.get("overfitting", []),
        "methods": methods_summary(records["allocations"], records["methods_ga"]),
        "downstream": records["downstream"]["rows"],
    }
    summary["seeds"] = seed_table(summary)
    summary["fitness_comparison"] = fitness_comparison(summary, records["baseline"]["data"])
    summary["claims"] = claims(summary)
    return validate_summary(summary)


def methods_summary(allocations: dict, methods_ga: dict) -> dict:
    """Issue 6's comparison: every criterion x allocation (GA included) per target, whole-block removal and the
    exports, all on the same windows and dtype (checked)."""
    removal = allocations["block_removal"]
    rows = [{k: v for k, v in r.items() if k != "genome"} for r in allocations["rows"] + methods_ga["rows"]]
    seen = {(r["test_windows"], r["dtype"]) for r in rows}
    if len(seen) != 1:
        raise EvopruneError(f"02 and 03 measured the methods on different windows or dtypes {sorted(seen)}: re-run "
                            f"them with the same method_windows and method_dtype.")
    windows, dtype = seen.pop()
    # records from before the allocations kept their own dense measurement shared windows and dtype with removal
    dense_ppl = allocations.get("dense_ppl", removal["depths"][0]["test_ppl"])
    n = removal["dense_blocks"]
    removal_ga = methods_ga["removal_ga"]
    removal_dense = removal["depths"][0]["test_ppl"]  # removal is measured on its own windows and dtype
    removed = [{"removed": r["removed"], "share": len(r["removed"]) / n, "test_ppl": r["test_ppl"],
                "over_dense": r["test_ppl"] / removal_dense} for r in removal["depths"][1:] + [removal_ga["test"]]]
    return {"test_windows": windows, "dtype": dtype, "dense_ppl": dense_ppl, "rows": rows,
            "removal_windows": removal["test_windows"], "removal_dtype": removal["dtype"],
            "removal_dense_ppl": removal_dense,
            "genomes": {f"{r['criterion']}-{r['target']:.0%}": r["genome"] for r in methods_ga["rows"]},
            "removal_depths": removal["depths"], "removal_points": removed,
            "removal_ga": {k: v for k, v in removal_ga.items() if k != "history"},
            "single_removal": removal["single"], "exports": methods_ga["exports"],
            "budget": methods_ga["provenance"].get("budget")}


def methods_table(summary: dict) -> list[dict]:
    """One line per criterion x method; per target, test perplexity and its ratio to dense."""
    dense = summary["methods"]["dense_ppl"]
    table = pivot(summary["methods"]["rows"])
    for line in table:
        for key in [k for k in line if k.endswith("%")]:
            line[key] = f"{line[key]:.4g} ({line[key] / dense:.2f}x)"
    return table


def removal_table(summary: dict) -> list[dict]:
    m = summary["methods"]
    ga = m["removal_ga"]
    best = {len(d["removed"]): d for d in m["removal_depths"]}
    rows = [{"Removed blocks": ", ".join(map(str, d["removed"])) or "none (dense)",
             "How chosen": "dense" if not d["removed"] else f"best of all sets of {len(d['removed'])}",
             **_removal_cells(d)} for d in best.values()]
    rows.append({"Removed blocks": ", ".join(map(str, ga["removed"])),
                 "How chosen": f"removal GA, k = {ga['settings']['k']} ({ga['evaluations']} evaluations)",
                 **_removal_cells(ga["test"])})
    return rows


def _removal_cells(d: dict) -> dict:
    def timing(key: str, digits: int) -> str:  # median, and the IQR of interleaved rounds where recorded
        spread = d.get(f"{key}_iqr")
        return f"{d[key]:.{digits}f}" + (f" (IQR {spread:.{digits}f})" if spread is not None else "")
    return {"Blocks": d["blocks"], "Parameters": f"{d['parameters']:,}", "Perplexity": d["test_ppl"],
            "ms / generated token": timing("ms_per_token", 1), "ms / 1024-token forward": timing("ms_per_forward", 0)}


def wanda_targets(summary: dict) -> str:
    """Issue 6's targets, as measured: the GA with Wanda at 45% (<= 1.5x dense) and 60% (<= 3x dense)."""
    m = summary["methods"]
    ga = {r["target"]: r["test_ppl"] for r in m["rows"] if r["method"] == "GA" and r["criterion"] == "wanda"}
    parts = [f"{t:.0%}: {ga[t] / m['dense_ppl']:.2f}x dense (target ≤ {bound}x)"
             for t, bound in ((0.45, 1.5), (0.6, 3)) if t in ga]
    return "GA with Wanda, " + "; ".join(parts) if parts else ""


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


def race_progress(paths: ReportPaths, ga_rows: list[dict]) -> dict[str, list[dict]]:
    """Each race's progress on paired samples (``search.race_progress``), from its checkpoint."""
    return {row["run"]: search.race_progress(read_json(paths.search(row["run"]) / search.CHECKPOINT))
            for row in ga_rows if row["strategy"] == "race"}


def layer_profiles(summary: dict) -> dict[str, list[list[float]]]:
    """Figure 2's input: the best genome of each search, one per seed, one rate per block. A search with an
    attention and an MLP rate per block (``--genes group``, stored in turn) gives two profiles. Keyed by the
    search's first run: the figure's label counts the seeds."""
    n_blocks, profiles = summary["parameter_counts"]["n_blocks"], {}
    for rows in seed_groups(summary["ga"]).values():
        name, genomes = rows[0]["run"], [row["genome"] for row in rows]
        if len(genomes[0]) == 2 * n_blocks:
            profiles[f"{name} attention"] = [g[0::2] for g in genomes]
            profiles[f"{name} MLP"] = [g[1::2] for g in genomes]
        else:
            profiles[name] = genomes
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


def _cell(measured: float | None, bound: float, what: str, target: str) -> dict:
    return {"what": what, "measured": measured, "target": target,
            "met": None if measured is None else bool(measured <= bound)}


def claims(summary: dict) -> list[dict]:
    """Issue 16's targets as measured: the main search (mean over its seeds) against uniform and the best rule at
    its target, on test and on the second held-out text; every methods cell against the best rule there; and
    how much of its gain on the fitness split carried over to test."""
    runs = main_group(summary)
    if not runs:
        return []
    names, (criterion, target) = {r["run"] for r in runs}, (runs[0]["criterion"], runs[0]["target"])
    mean = float(np.mean([r["test_ppl"] for r in runs]))
    rules = {r["method"]: r["test_ppl"] for r in summary.get("rules", [])
             if r["criterion"] == criterion and r["target"] == target}
    label = f"{target:.0%} {criterion}, GA ({f'mean of {len(runs)} seeds' if len(runs) > 1 else 'one seed'})"
    out = [_cell(mean / runs[0]["uniform_at_target"]["test_ppl"], 0.5, f"{label} / uniform, test", "≤ 0.5")]
    if rules:
        out.append(_cell(mean / min(rules.values()), 0.85,
                         f"{label} / the best no-search allocation ({min(rules, key=rules.get)}), test", "≤ 0.85"))
    held = [g for g in summary["generalization"] if g["run"] in names]
    for rule, bound in (("uniform", 0.55), ("sensitivity", 0.85)):
        ratios = [g[f"ga_over_{rule}"] for g in held if f"ga_over_{rule}" in g]
        if ratios:
            out.append(_cell(float(np.mean(ratios)), bound, f"{label} / {rule}, python-docs", f"≤ {bound}"))
    over = [o["fitness_split_over_test"] for o in summary.get("overfitting", []) if o["run"] in names]
    if over:
        out.append({"what": f"{label}: gain on validation / gain on test (ratios to uniform)",
                    "measured": float(np.mean(over)), "target": "reported; closer to 1 than 0.59/0.65 = 0.91",
                    "met": None})
    cells: dict[tuple, dict] = {}
    for r in summary["methods"]["rows"]:
        cells.setdefault((r["criterion"], r["target"]), {})[r["method"]] = r["test_ppl"]
    for (crit, t), methods in sorted(cells.items()):
        if "GA" in methods and len(methods) > 1:
            best = min((m for m in methods if m != "GA"), key=methods.get)
            bound = 0.8 if t >= 0.6 else 0.95
            out.append(_cell(methods["GA"] / methods[best], bound,
                             f"methods table, {crit} {t:.0%}: GA / the best no-search allocation ({best})",
                             f"≤ {bound}"))
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


def pivot(rows: list[dict]) -> list[dict]:
    """Method rows as a table: one line per criterion and method, one column of test perplexity per target."""
    table: dict[tuple, dict] = {}
    for r in rows:
        line = table.setdefault((r["criterion"], r["method"]), {"criterion": r["criterion"], "method": r["method"]})
        line[f"{r['target']:.0%}"] = r["test_ppl"]
    return sorted(table.values(), key=lambda line: line["criterion"])  # stable: methods keep their order


def status(ppl: float, dense_ppl: float) -> str:
    for bound, label in STATUS:
        if ppl <= bound * dense_ppl:
            return label
    return "collapsed"


def results_table(summary: dict, sparsities=(0.3, 0.4, 0.45, 0.5)) -> list[dict]:
    """The study's table (Method | Target sparsity | Perplexity | Status), with both protocols; uniform rows
    at the study's sparsities and at each GA target."""
    dense = summary["dense"]
    wanted = {round(s, 6) for s in sparsities} | {round(g["min_sparsity"], 6) for g in summary["ga"]}

    def row(method, target, r):
        return {"Method": method, "Target sparsity": target if isinstance(target, str) else f"{target:.0%}", "Block sparsity": f"{r['block_sparsity']:.2%}",
                "Perplexity (primary)": r["test_ppl"], "Perplexity (study protocol)": r["study_ppl"],
                "Status": status(r["test_ppl"], dense["test_ppl"])}

    rows = [{**row("Dense", 0.0, {**dense, "block_sparsity": 0.0}), "Status": "baseline"}]
    rows += [row("Uniform magnitude", u["sparsity"], u) for u in summary["uniform"]
             if round(u["sparsity"], 6) in wanted]
    rows += [{"Method": f"{r['method']} allocation, {r['criterion']} (no search)", "Target sparsity": f"{r['target']:.0%}",
              "Block sparsity": f"{r['target']:.2%}", "Perplexity (primary)": r["test_ppl"],
              "Perplexity (study protocol)": "not measured", "Status": status(r["test_ppl"], dense["test_ppl"])}
             for r in summary.get("rules", []) if r["method"] != "uniform"]
    rows += [row(ga_label(g), f"≥{g['min_sparsity']:.0%}" if g["strategy"] == "published" else g["target"], g)
             for g in summary["ga"]]
    return rows


def ga_label(g: dict) -> str:
    held_out = "held-out" if g["fitness_split"] != "test" else "scored on its own fitness data"
    return f"GA {g['run']} ({g['strategy']} strategy, fitness on {g['fitness_split']}: {held_out})"


def study_table() -> list[dict]:
    study = study_published()
    rows = [{"Method": "Dense", "Target sparsity": "0%", "Perplexity (study protocol)": study["dense_ppl"]}]
    rows += [{"Method": "Uniform magnitude", "Target sparsity": f"{u['sparsity']:.0%}",
              "Perplexity (study protocol)": u["ppl"]} for u in study["uniform"]]
    ga = study["ga"]
    rows.append({"Method": "GA", "Target sparsity": f"{ga['target']:.0%}", "Perplexity (study protocol)": ga["ppl"]})
    return rows


def _files(paths: ReportPaths, folder: Path, pattern: str) -> list[str]:
    return [f"[{p.name}]({os.path.relpath(p, paths.reports)})" for p in sorted(folder.glob(pattern))]


def render_report(paths: ReportPaths, summary: dict) -> str:
    """REPORT.md: results, protocol and provenance, in words a reader can check."""
    data, protocol, prov = summary["data"], summary["protocol"], summary["provenance"]
    counts, windows = summary["parameter_counts"], protocol["test_windows"]
    figures = "\n".join(f"![{p.stem}]({os.path.relpath(p, paths.reports)})"
                        for p in sorted(paths.figures.glob("*.png")))
    walls = wall_times(prov) + " (04_analysis as of its previous run)"
    packages = ", ".join(f"{k} {v}" for k, v in prov["packages"].items())
    budgets = "\n".join(f"  - `{run}`: " + ", ".join(f"{k}={v}" for k, v in cfg.items())
                        for run, cfg in prov["budgets"].items())
    searches = "\n".join(f"- `{run}` search: fitness = {s['fitness_kind']} on the {s['fitness_split']} split, "
                         f"{s['dtype']}" for run, s in protocol["search"].items())
    splits = "\n".join(f"  - {split}: `{data[split]['source']}`, sha256 `{data[split]['text_sha256']}`, "
                       f"{data[split]['n_tokens']:,} tokens" for split in ("test", "validation") if split in data)
    return f"""# evoprune report: profile `{summary['profile']}`

Model `{summary['model']}` (weights hash `{prov['weights_hash']}`), {counts['n_blocks']} decoder blocks,
{counts['prunable']:,} prunable of {counts['total']:,} parameters. Unstructured {summary['uniform'][0]['criterion']}
pruning; every rate is a fraction of a block's prunable weights.

## Results (test split, {protocol['reported_dtype']})

{markdown_table(results_table(summary))}
Status: perplexity (primary) up to {STATUS[0][0]}x dense is "{STATUS[0][1]}", up to {STATUS[1][0]}x "{STATUS[1][1]}",
above that "collapsed". A GA row whose fitness is on validation is held out: its test perplexities come from
windows the search never scored. A row whose fitness is on test (the study's own setting) is scored on its own
fitness data and says so. The published strategy, as published, penalizes genomes below target - tolerance and has no upper
bound, so its target reads "≥".

For reference only, **the study's published numbers** (GPT-2 124M, its own protocol, GA scored on the windows it
optimized on; not comparable one to one with the rows above):

{markdown_table(study_table())}
## Generalization to a second held-out text

{markdown_table(summary["generalization"])}
Each GA genome against uniform at the same sparsity on `python-docs` (standard-library docstrings, a text no
fitness saw), float32, primary protocol.

{claims_section(summary)}
{fitness_section(summary)}
{overfitting_section(summary)}
{methods_section(summary)}
{downstream_section(summary)}
{seeds_section(summary)}
## Figures

{figures}

## Protocol

- primary: {protocol['primary']}; {windows['primary']} windows.
- study: {protocol['study']}; {windows['study']} windows.
{searches}

## Provenance

- data setting `{data['setting']}`:
{splits}
- git commit `{prov['git_commit']}`; python {prov['python']}; {packages}
- hardware: {machine_words(prov['hardware'])}, GPU {prov['hardware']['cuda'] or 'none'}
- seeds: search {prov['seeds']['search']}, study windows {prov['seeds']['study_windows']}
- search budgets:
{budgets}
- notebook wall time: {walls}

Tables: {', '.join(_files(paths, paths.tables, '*.md'))}. Machine-readable: [summary.json](summary.json).
"""


# --- the README's results section ---------------------------------------------------------------------------

README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def readme_section(summary: dict) -> str:
    """The README's headline results, generated from summary.json so every number there equals the one in the
    file; every other table of the run is in REPORT.md."""
    profile, windows = summary["profile"], summary["protocol"]["test_windows"]
    return f"""{BEGIN}
<!-- generated from reports/{profile}/summary.json by `make readme`; edit report.readme_section, not this -->
Model `{summary['model']}`, profile `{profile}`; all perplexities on the WikiText-2 **test** split in
{summary['protocol']['reported_dtype']}: *primary* = the first {windows['primary']} non-overlapping 1024-token
windows, *study protocol* = {windows['study']} windows drawn as the study drew its 128. GA fitness was computed on
the validation split unless the row says otherwise, so these test numbers are held out. The run's other tables
(targets as measured, seeds, KL fitness, a second text, downstream accuracy, criteria x allocations, block
removal, export), its budgets and provenance: [reports/{profile}/REPORT.md](reports/{profile}/REPORT.md).

{markdown_table(results_table(summary))}
Search budgets and what they bought (fitness in the dtype shown, on validation samples unless said):

{search_lines(summary)}

{findings(summary)}{whole_run_words(summary)}

![Figure 1](figures/{profile}/figure1.png)
![Figure 2](figures/{profile}/figure2_layer_profile.png)
{END}"""


def whole_run_words(summary: dict) -> str:
    """When the last run read every search back from an earlier run, what the searches took when they ran (their
    ``wall_s``) and the whole run's time: notebooks plus searches. The block-removal GA counts with them (its
    result, under the same ``search/``, is read back with theirs, uncounted). Empty unless every search was read
    back (then the notebooks' time is all)."""
    prov, m = summary["provenance"], summary["methods"]
    searches = summary["ga"] + [r for r in m["rows"] if "wall_s" in r]
    read_back = sum(b.get("searches", 0) for b in prov.get("notebook_read_back", {}).values())
    if not searches or read_back != len(searches):
        return ""
    search_s = sum(r["wall_s"] for r in searches) + m.get("removal_ga", {}).get("wall_s", 0.0)
    total = sum(prov["notebook_wall_s"].values()) + search_s
    return (f"\nThe run's {len(searches)} searches and its block-removal GA took {search_s / 60:.1f} min when they "
            f"ran (their `wall_s`), so the whole run took {total / 60:.1f} min.")


def claims_section(summary: dict, level: str = "##") -> str:
    rows = summary.get("claims") or []
    if not rows:
        return ""
    table = [{"what": r["what"], "measured": "not measured" if r["measured"] is None else f"{r['measured']:.4f}",
              "target": r["target"], "met": {True: "yes", False: "no", None: "—"}[r["met"]]} for r in rows]
    return f"""{level} The search against every rule: targets as measured

Test numbers: float32, primary protocol, the windows of the rows above (methods cells: the methods table's
windows). `python-docs`: a text no fitness saw, as in the generalization table. Validation gain: each genome and uniform on the
first validation windows (the split the fitness draws its samples from), against the same ratio on test.

{markdown_table(table)}"""


def fitness_section(summary: dict, level: str = "##") -> str:
    rows = summary.get("fitness_comparison") or []
    if not rows:
        return ""
    kl = next(r for r in rows if r["fitness"] == "kl")
    return f"""{level} Fitness: KL to the dense model against perplexity, at the same token budget

Two searches alike in everything but the fitness (same seed, same budget in forward tokens; KL's dense
reference passes count against its budget), judged by held-out test and `python-docs` perplexity.

{markdown_table(rows)}
KL's dense reference was computed on each fresh sample: {kl['reference_tokens_per_sample']:,} dense forward tokens
in this search. Stored instead (the top-{STORED_TOP_K} log-probabilities of every position of the fitness split, plus
the remaining mass) it would take one dense pass of {kl['reference_tokens_stored']:,} tokens and
{kl['stored_top32_mib']:.0f} MiB, so at this budget the reference is cheaper
{'per sample' if kl['reference_tokens_per_sample'] < kl['reference_tokens_stored'] else 'stored'}."""


def overfitting_section(summary: dict) -> str:
    rows = summary.get("overfitting") or []
    if not rows:
        return ""
    return f"""## Gain on the fitness split against gain on test

Each search's best genome over uniform at the same sparsity, on the first {rows[0]['windows']} windows of the split its
fitness came from and on test (float32, primary protocol); `fitness_split_over_test` near 1: what the search
found carries over to text it was not scored on.

{markdown_table(rows)}"""


def seeds_section(summary: dict, level: str = "##") -> str:
    rows = summary.get("seeds") or []
    if not rows:
        return ""
    return f"""{level} Searches repeated over seeds

Test perplexity (primary protocol, float32) over the seeds of each search, and how alike their per-block profiles
are: Spearman's rank correlation between every pair of seeds (1: the same order of blocks; 0: unrelated).

{markdown_table(rows)}"""


def downstream_section(summary: dict, level: str = "##") -> str:
    rows = summary.get("downstream") or []
    if not rows:
        return ""
    items = min(r["n"] for r in rows)
    per_criterion = {r["criterion"]: r["test_windows"] for r in rows}
    windows = ", ".join(f"{criterion} {n}" for criterion, n in per_criterion.items())
    return f"""{level} Downstream accuracy (lm-evaluation-harness)

Accuracy on each task beside float32 test perplexity (primary protocol; test windows: {windows}), for
the dense model, and uniform pruning and the GA at the same sparsity, per criterion.
The local task `wikitext_lastword` is last-word prediction on WikiText-2 test sentences (LAMBADA-style). On
{items} items an accuracy's standard error is up to {0.5 / items ** 0.5:.2f}.

{markdown_table(rows)}"""


def methods_section(summary: dict) -> str:
    m = summary["methods"]
    exports = [{k: e[k] for k in ("dir", "parameters", "nonzero_parameters", "bytes_on_disk", "ppl", "ppl_reloaded",
                                  "same_ppl")} for e in m["exports"]]
    for e in exports:
        e["dir"] = Path(e["dir"]).name
    return f"""## Beyond the study: criteria, allocations without search, whole-block removal

Test perplexity, {m['dtype']}, the first {m['test_windows']} test windows, primary protocol; dense is
{m['dense_ppl']:.4g} on these windows. GA rows: {budget_words(m.get('budget'))}, the same for every cell unless a criterion is named (see
`reports/<profile>/search/methods/`), fitness on validation.

{markdown_table(methods_table(summary))}
{wanda_targets(summary)}.

Whole blocks physically removed (perplexity in {m.get('removal_dtype', m['dtype'])} on the first
{m.get('removal_windows', m['test_windows'])} test windows, dense {m.get('removal_dense_ppl', m['dense_ppl']):.4g} there;
latency in float32, median of greedy generation and of one forward):

{markdown_table(removal_table(summary))}
Exported as Hugging Face directories and reloaded with `AutoModelForCausalLM` (float32 perplexity before and
after, on {m['exports'][0]['test_windows']} test windows):

{markdown_table(exports)}"""


def step_words(cfg: dict) -> str:
    """A race's moves: the step and its rule, the race's defaults where ``cfg`` names none."""
    defaults = search.Settings(strategy="race", target=0.5)
    return (f"moves of {cfg.get('step', defaults.step):g} "
            f"({cfg.get('step_rule', defaults.step_rule)} step)")


def limit_words(cfg: dict) -> str:
    """What stops a race: its budget in forward tokens, or its number of generations."""
    return (f"{cfg['budget_tokens']:,} forward tokens" if cfg.get("budget_tokens")
            else f"{cfg.get('generations')} generations")


def criterion_words(cfg: dict) -> str:
    """What a methods budget changes for one criterion: its moves, and its own budget where it names one."""
    return step_words(cfg) + (f", {limit_words(cfg)}" if cfg.get("budget_tokens") else "")


def budget_words(cfg: dict | None) -> str:
    """A search's budget in a few words (and the settings a methods budget gives one criterion)."""
    if not cfg:
        return "the search"
    strategy = cfg.get("strategy", "elitist")
    if strategy == "race":
        stages = ", ".join(str(cfg.get("low_windows", 1) * 2 ** k) for k in range(cfg.get("stages", 3)))
        own = "".join(f"; {name}: {criterion_words(sub)}" for name, sub in cfg.items() if isinstance(sub, dict))
        return (f"the `race` strategy, (1 + {cfg.get('offspring', 16)}) on fresh samples of {stages} windows of "
                f"{cfg.get('seq_len', 1024)} tokens, {step_words(cfg)}, {limit_words(cfg)}{own}")
    parts = [f"{key} {cfg[key]}" for key in ("population", "generations", "fitness_windows") if key in cfg]
    return f"the `{strategy}` strategy, " + ", ".join(parts)


def findings(summary: dict) -> str:
    """The README's measured findings in a few sentences, every number read from the summary."""
    dense, m = summary["dense"]["test_ppl"], summary["methods"]
    uniform = {round(u["sparsity"], 6): u["test_ppl"] for u in summary["uniform"]}
    lines = []
    runs = main_group(summary)
    if runs:
        ppl = [r["test_ppl"] for r in runs]
        lines.append(f"The main search (`{'`, `'.join(r['run'] for r in runs)}`, {runs[0]['target']:.0%} "
                     f"{runs[0]['criterion']}) reaches a test perplexity of {np.mean(ppl):.4g} on average over its "
                     f"{len(runs)} seeds (range {min(ppl):.4g}–{max(ppl):.4g}): {np.mean(ppl) / dense:.2f}x dense and "
                     f"{np.mean(ppl) / runs[0]['uniform_at_target']['test_ppl']:.2f}x uniform at the same sparsity.")
    cell = {(r["criterion"], r["method"], r["target"]): r["test_ppl"] for r in m["rows"]}
    if ("wanda", "uniform", 0.45) in cell and ("magnitude", "uniform", 0.45) in cell:
        lines.append(f"At 45%, uniform Wanda is {cell['wanda', 'uniform', 0.45] / m['dense_ppl']:.2f}x dense where "
                     f"uniform magnitude is {cell['magnitude', 'uniform', 0.45] / m['dense_ppl']:.2f}x "
                     f"({m['test_windows']} test windows, {m['dtype']}).")
    single = min(m["single_removal"], key=lambda r: r["test_ppl"])
    ga = m["removal_ga"]
    lines.append(f"Removing the best single block ({single['removed'][0]}) gives {single['test_ppl']:.4g} against "
                 f"{m.get('removal_dense_ppl', m['dense_ppl']):.4g} dense "
                 f"({m.get('removal_windows', m['test_windows'])} test windows, {m.get('removal_dtype', m['dtype'])}); "
                 f"the removal GA's best set of {ga['settings']['k']} blocks "
                 f"({ga['evaluations']} evaluations) gives {ga['test']['test_ppl']:.4g}.")
    lines.append(run_words(summary["provenance"]))
    return "\n".join(lines)


def run_words(prov: dict) -> str:
    """Where and how the run was made: its commit, the machine, the search fitness dtype and the wall times."""
    dtypes = sorted({b["dtype"] for b in prov.get("budgets", {}).values() if "dtype" in b})
    return (f"Run at commit {prov['git_commit'][:7]} on {machine_words(prov['hardware'])}, search fitness in "
            f"{', '.join(dtypes) or 'not recorded'}. Notebook wall times: "
            f"{wall_times(prov)}, as recorded when 04_analysis wrote this summary.")


def machine_words(hw: dict) -> str:
    """The CPU a run was made on, its core count and what torch reports it can do (AVX2, AVX512, ...)."""
    return f"{hw['cpu']} ({hw['cores']} cores, CPU capability {hw.get('capability')})"


def counted(n: int, noun: str) -> str:
    """'1 search', '2 searches', '0 measurements'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'ch')) else 's'}"


def wall_times(prov: dict) -> str:
    """Each notebook's wall time and forward tokens, with what it read back (from the measurement log, or finished
    searches) instead of computing: a resumed notebook's time is not a whole run's."""
    walls, parts = prov["notebook_wall_s"], []
    for name, wall in sorted(walls.items()):
        tokens = prov.get("notebook_forward_tokens", {}).get(name, {})
        back = prov.get("notebook_read_back", {}).get(name, {})
        notes = ([" and ".join(f"{n:,} {dtype}" for dtype, n in tokens.items()) + " forward tokens"] if tokens else [])
        if any(back.values()):
            notes.append(f"{counted(back['searches'], 'search')} and {counted(back['measurements'], 'measurement')} "
                         f"read back")
        parts.append(f"{name} {wall:.0f} s" + (f" ({'; '.join(notes)})" if notes else ""))
    total = sum(walls.values())
    return ("; ".join(parts) + f"; {total:.0f} s ({total / 60:.1f} min) in all") if parts else "not recorded"


def search_lines(summary: dict) -> str:
    """One line per GA run: its budget, its cost, and its test perplexity against dense and uniform."""
    dense = summary["dense"]["test_ppl"]
    lines = []
    for g in summary["ga"]:
        cfg = summary["provenance"]["budgets"][g["run"]]
        versus = ("" if g["strategy"] == "published" else
                  f", {g['test_ppl'] / g['uniform_at_target']['test_ppl']:.2f}x uniform at the same sparsity")
        fitness = "" if g["strategy"] == "published" else f", fitness {g.get('fitness_kind', 'ppl')}"
        lines.append(f"- `{g['run']}`: {budget_words(cfg)}{fitness}, seed {cfg['seed']} ({cfg['dtype']}); "
                     f"{g.get('generations_run', '?')} generations, {g['evaluations']} evaluations, "
                     f"{g['forward_tokens']:,} forward tokens, {g['wall_s']:.0f} s; block sparsity "
                     f"{g['block_sparsity']:.2%}; test perplexity {g['test_ppl'] / dense:.2f}x dense{versus}.")
    return "\n".join(lines)


BENCH = ROOT / "reports" / "bench.json"
BENCH_BEGIN, BENCH_END = "<!-- bench:begin -->", "<!-- bench:end -->"
BENCH_ROWS = (  # (label, figure, format, target)
    ("fitness evaluation FLOPs (2 x params x tokens + causal attention) / the chosen dtype's matmul peak (median of"
     " 3 rounds, each probe just before its evaluation)", "fitness_peak_fraction", "{:.2f}", "≥ 0.7"),
    ("`auto`'s fitness evaluation / the faster explicit dtype's", "auto_over_best", "{:.3f}", "≤ 1.05"),
    ("race search with prefix reuse / the same search without (same result)", "prefix_reuse_ratio", "{:.3f}",
     "≤ 0.8"),
    ("offline run wall time / (its tokens / plain forward throughput)", "offline_overhead_ratio", "{:.3f}",
     "≤ 1.15"),
    ("peak resident memory of a search (GiB)", "peak_rss_gib", "{:.2f}", "≤ 3"),
    ("apply a new rate vector / one fitness evaluation", "apply_over_eval", "{:.3f}", "≤ 0.05"),
    ("bf16 perplexity vs fp32, largest of dense and 45%", "bf16_ppl_rel_error", "{:.2%}", "≤ 0.5%"),
    ("tokens the main search needed to reach `published`'s final result / tokens `published` used", "search_token_ratio",
     "{:.3f}", "≤ 0.05"),
    ("apply + evaluate / plain Hugging Face forward of the same model, chosen dtype", "overhead_ratio", "{:.3f}", ""),
)


def bench_section(bench: dict) -> str:
    """The README's performance table, generated from reports/bench.json (written by ``make bench``)."""
    figures = bench["figures"]
    how = ("the `race` search's parent against `published`'s final genome on the same fresh samples"
           if "race_tokens_to_reach_published" in figures else
           "the `elitist` search's evaluations against `published`'s final genome on its fitness windows")
    rows = [{"figure": label, "measured": fmt.format(figures[key]) if figures.get(key) is not None else "not measured",
             "target": target} for label, key, fmt, target in BENCH_ROWS]
    hardware = bench["provenance"]["hardware"]
    latency = ", ".join(f"{r['removed']} blocks removed {r['ratio']:.2f}" for r in figures["latency"]["rows"][1:])
    w = figures["workers"]
    scored = (f"One race generation ({w['children']} children raced on fresh samples of "
              f"{', '.join(map(str, w['stage_windows']))} windows of {w['seq_len']} tokens, then the parent)"
              if "stage_windows" in w else f"One generation's {w['children']} children")
    prefix = (f"Prefix reuse: the short race search ({figures['prefix_search']['offspring']} children, "
              f"{figures['prefix_search']['generations']} generations), best of two runs each way; the reusing runs "
              f"skipped {figures['prefix_blocks_skipped']:.1%} of their block forwards.\n"
              if "prefix_blocks_skipped" in figures else "")
    return f"""{BENCH_BEGIN}
<!-- generated from reports/bench.json by `make readme`; edit report.bench_section, not this -->
`make bench` at commit `{bench['provenance']['git_commit'][:12]}` on {hardware['cpu']} ({hardware['cores']} cores,
{figures['threads']} threads, CPU capability {figures['cpu_capability']}); `auto` chose {figures['chosen_dtype']}
(median matmul peaks {figures['matmul_peak_gflops_bfloat16']:.0f} GFLOP/s bf16, {figures['matmul_peak_gflops_float32']:.0f}
GFLOP/s fp32):

{markdown_table(rows)}
{prefix}Search cost ("the main search needed"): {how}.
Forward time of SmolLM2 with blocks removed, over the whole model (medians of interleaved rounds): {latency}.
{scored} in {w['dtype']} on 2 processes x 1 thread against 1 process x 2 threads:
{w['serial_1x2_s'] / w['process_2x1_s']:.2f}x as fast, {'the same' if w['process_identical'] else '**different**'}
values (the search uses one process unless `--workers` says otherwise).
{BENCH_END}"""


def _replace_section(text: str, begin: str, end: str, section: str) -> str:
    if begin not in text or end not in text:
        raise EvopruneError(f"README.md has no {begin} ... {end} section to fill.")
    before, rest = text.split(begin, 1)
    return before + section + rest.split(end, 1)[1]


def update_readme(profile: str, root: Path | None = None) -> Path:
    """Replace the README's results section with the one generated from ``reports/<profile>/summary.json``, and
    its performance table with the one generated from ``reports/bench.json`` when that exists."""
    from evoprune.results import report_paths
    text = _replace_section(README.read_text(), BEGIN, END,
                            readme_section(read_record(report_paths(profile, root).summary)))
    if BENCH.exists():
        text = _replace_section(text, BENCH_BEGIN, BENCH_END, bench_section(read_json(BENCH)))
    README.write_text(text)
    return README
