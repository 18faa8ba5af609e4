"""Assemble ``summary.json`` and ``REPORT.md`` from the records the notebooks leave in ``reports/<profile>/``:
``baseline.json`` (01), ``uniform_sweep.json`` and ``block_removal.json`` (02), ``ga.json``,
``removal_ga_exports.json``, ``downstream.json`` (when 03 had tasks) and each search's record (03), and the runner's
``timings.json``. No torch."""
from __future__ import annotations

import os
from pathlib import Path

from evoprune import EvopruneError
from evoprune.options import default_of
from evoprune.provenance import PROTOCOLS
from evoprune.records import (REPORTED_DTYPE, ReportPaths, SearchRecord, markdown_table, read_json,
                              study_published)
from evoprune.schema import validate_summary
from evoprune.search import RESULT, Settings
from evoprune.stats import STORED_TOP_K, claims, fitness_comparison, removal_summary, seed_table

RECORDS = {"baseline": "01_baseline", "uniform_sweep": "02_uniform_sweep", "ga": "03_ga_search",
           "block_removal": "02_uniform_sweep", "removal_ga_exports": "03_ga_search"}
GA_FIELDS = ("run", "strategy", "fitness_split", "min_sparsity", "criterion", "target", "block_sparsity", "genome",
             "fitness", "test_ppl", "study_ppl", "uniform_at_target", "evaluations", "forward_tokens", "wall_s", "config")
STATUS = ((1.5, "near dense"), (4.0, "degraded"))  # PPL / dense PPL up to these bounds; above: collapsed


def search_records(paths: ReportPaths, runs) -> dict[str, SearchRecord]:
    """Each named search's record (``search/<run>/result.json``)."""
    return {run: SearchRecord.read(paths.require(paths.search(run) / RESULT, "03_ga_search")) for run in runs}


def histories(paths: ReportPaths, runs) -> dict[str, list[dict]]:
    """Each search's history rows (generation, best, mean, evaluations, forward tokens, wall time)."""
    return {run: record.history for run, record in search_records(paths, runs).items()}


def load_records(paths: ReportPaths) -> dict:
    """The notebooks' records; a missing one is an error naming the notebook that writes it."""
    records = {name: paths.read(name, notebook) for name, notebook in RECORDS.items()}
    records["timings"] = paths.read_timings()
    choice = paths.profile_choice
    records["profile_choice"] = read_json(choice) if choice.exists() else None
    optional = paths.record("downstream")  # 03 writes it when its profile names downstream tasks
    records["downstream"] = read_json(optional) if optional.exists() else {"rows": []}
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
                       **notebook_times(records["timings"]),
                       "recorded_at": {name: records[name]["provenance"]["recorded_at"] for name in RECORDS},
                       "profile_choice": records.get("profile_choice")},
        "parameter_counts": baseline["parameter_counts"],
        "dense": {k: baseline["dense"][k] for k in ("test_ppl", "study_ppl")},
        "uniform": [{k: r[k] for k in ("sparsity", "criterion", "block_sparsity", "test_ppl", "study_ppl")}
                    for r in sweep["rows"]],
        "ga": [{**{k: r[k] for k in GA_FIELDS}, "fitness_kind": r["fitness_kind"],
                "generations_run": len(history)}
               for r, history in zip(ga["rows"], histories(paths, [r["run"] for r in ga["rows"]]).values())],
        "generalization": ga["generalization"],
        "rules": [{k: v for k, v in r.items() if k != "genome"} for r in ga["rules"]],
        "overfitting": ga["overfitting"],
        "removal": removal_summary(records["block_removal"], records["removal_ga_exports"]),
        "downstream": records["downstream"]["rows"],
    }
    summary["seeds"] = seed_table(summary)
    summary["fitness_comparison"] = fitness_comparison(summary, records["baseline"]["data"])
    summary["claims"] = claims(summary)
    return validate_summary(summary)


def removal_table(summary: dict) -> list[dict]:
    """Dense, the best set of each depth of 02's block removal and the removal GA's set: blocks, parameters,
    perplexity and latency."""
    m = summary["removal"]
    ga = m["ga"]
    best = {len(d["removed"]): d for d in m["depths"]}
    rows = [{"Removed blocks": ", ".join(map(str, d["removed"])) or "none (dense)",
             "How chosen": "dense" if not d["removed"] else f"best of all sets of {len(d['removed'])}",
             **_removal_cells(d)} for d in best.values()]
    rows.append({"Removed blocks": ", ".join(map(str, ga["removed"])),
                 "How chosen": f"removal GA, k = {ga['settings']['k']} ({ga['evaluations']} evaluations)",
                 **_removal_cells(ga["test"])})
    return rows


def _removal_cells(d: dict) -> dict:
    def timing(key: str, digits: int) -> str:  # median, and the IQR of interleaved rounds
        return f"{d[key]:.{digits}f} (IQR {d[f'{key}_iqr']:.{digits}f})"
    return {"Blocks": d["blocks"], "Parameters": f"{d['parameters']:,}", "Perplexity": d["test_ppl"],
            "ms / generated token": timing("ms_per_token", 1), "ms / 1024-token forward": timing("ms_per_forward", 0)}


def race_progress(paths: ReportPaths, ga_rows: list[dict]) -> dict[str, list[dict]]:
    """Each race's progress on paired samples (``search.race_progress``), from its record."""
    races = [row["run"] for row in ga_rows if row["strategy"] == "race"]
    return {run: record.progress for run, record in search_records(paths, races).items()}


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
    walls = wall_times(prov) + ", as recorded when 04_analysis wrote this report"
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
{removal_section(summary)}
{downstream_section(summary)}
{seeds_section(summary)}
{second_half_section(paths)}
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


def second_half_section(paths: ReportPaths) -> str:
    """Notebook 05's table and targets where this profile ran it before 04 (``make reproduce`` does), else nothing."""
    path = paths.record("methods")
    if not path.exists():
        return ""
    record = read_json(path)
    return (f"## The study at the sparsities people use (notebook 05)\n\n{markdown_table(record['table'])}\n"
            f"Its targets as measured (float32, primary protocol, on test and on `python-docs`):\n\n"
            f"{claims_table(record['claims'])}")


def claims_section(summary: dict, level: str = "##") -> str:
    rows = summary.get("claims") or []
    if not rows:
        return ""
    return f"""{level} The search against every rule: targets as measured

Test numbers: float32, primary protocol, the windows of the rows above. `python-docs`: a text no fitness saw,
as in the generalization table. Validation gain: each genome and uniform on the
first validation windows (the split the fitness draws its samples from), against the same ratio on test.

{claims_table(rows)}"""


def claims_table(rows: list[dict]) -> str:
    """Targets as measured (``stats.claim_cell`` rows) as a markdown table."""
    return markdown_table([{"what": r["what"],
                            "measured": "not measured" if r["measured"] is None else f"{r['measured']:.4f}",
                            "target": r["target"], "met": {True: "yes", False: "no", None: "—"}[r["met"]]}
                           for r in rows])


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
the dense model, and uniform pruning and the GA at the same sparsity ({', '.join(per_criterion)}).
The local task `wikitext_lastword` is last-word prediction on WikiText-2 test sentences (LAMBADA-style). On
{items} items an accuracy's standard error is up to {0.5 / items ** 0.5:.2f}.

{markdown_table(rows)}"""


EXPORT_COLUMNS = ("dir", "parameters", "nonzero_parameters", "bytes_on_disk", "ppl", "ppl_reloaded", "same_ppl",
                  "compressed_bytes_on_disk", "compressed_over_dense", "compressed_same_ppl")


def removal_section(summary: dict) -> str:
    m = summary["removal"]
    exports = [{k: e[k] for k in EXPORT_COLUMNS if k in e} for e in m["exports"]]
    for e in exports:
        e["dir"] = Path(e["dir"]).name
    exported = f" (`{m['exported_run']}`'s best genome and the removal GA's set)" if m.get("exported_run") else ""
    return f"""## Beyond the study: whole-block removal, and the pruned models as files

Whole blocks physically removed (perplexity in {m['dtype']} on the first {m['test_windows']} test windows, dense
{m['dense_ppl']:.4g} there; latency in float32, median of greedy generation and of one forward):

{markdown_table(removal_table(summary))}
Exported as Hugging Face directories{exported} and reloaded with `AutoModelForCausalLM` (float32 perplexity
before and after, on {m['exports'][0]['test_windows']} test windows; `compressed_*`: the same model in
compressed-tensors' sparse-bitmask format, reloaded with `export.load_compressed`):

{markdown_table(exports)}"""


def step_words(cfg: dict) -> str:
    """A race's moves: the step and its rule, the race's defaults where ``cfg`` names none."""
    step, rule = (cfg.get(name, default_of(Settings, name, "race")) for name in ("step", "step_rule"))
    return f"moves of {step:g} ({rule} step)"


def limit_words(cfg: dict) -> str:
    """What stops a race: its budget in forward tokens, or its number of generations."""
    return (f"{cfg['budget_tokens']:,} forward tokens" if cfg.get("budget_tokens")
            else f"{cfg.get('generations')} generations")


def criterion_words(cfg: dict) -> str:
    """What a budget's entry for one criterion changes: its moves, and its own budget where it names one."""
    return step_words(cfg) + (f", {limit_words(cfg)}" if cfg.get("budget_tokens") else "")


def race_words(cfg: dict) -> str:
    """What every race of ``cfg`` shares: its offspring and the fresh samples of its stages."""
    stages = ", ".join(str(cfg.get("low_windows", 1) * 2 ** k) for k in range(cfg.get("stages", 3)))
    return (f"the `race` strategy, (1 + {cfg.get('offspring', 16)}) on fresh samples of {stages} windows of "
            f"{cfg.get('seq_len', 1024)} tokens")


def budget_words(cfg: dict | None) -> str:
    """A search's budget in a few words (and the settings it gives one criterion, under that criterion's name)."""
    if not cfg:
        return "the search"
    strategy = cfg.get("strategy", "elitist")
    if strategy == "race":
        own = "".join(f"; {name}: {criterion_words(sub)}" for name, sub in cfg.items() if isinstance(sub, dict))
        return f"{race_words(cfg)}, {step_words(cfg)}, {limit_words(cfg)}{own}"
    parts = [f"{key} {cfg[key]}" for key in ("population", "generations", "fitness_windows") if key in cfg]
    return f"the `{strategy}` strategy, " + ", ".join(parts)


def run_words(prov: dict) -> str:
    """Where and how the run was made: its commit, the machine, the search fitness dtype and the wall times."""
    dtypes = sorted({b["dtype"] for b in prov.get("budgets", {}).values() if "dtype" in b})
    choice = prov.get("profile_choice")
    chosen = f" The profile was {choice['chosen']} ({choice['why']})." if choice else ""
    return (f"Run at commit {prov['git_commit'][:7]} on {machine_words(prov['hardware'])}, search fitness in "
            f"{', '.join(dtypes) or 'not recorded'}.{chosen} Notebook wall times: "
            f"{wall_times(prov)}, as recorded when 04_analysis wrote this summary.")


def machine_words(hw: dict) -> str:
    """The CPU a run was made on, its core count and what torch reports it can do (AVX2, AVX512, ...)."""
    return f"{hw['cpu']} ({hw['cores']} cores, CPU capability {hw.get('capability')})"


def counted(n: int, noun: str) -> str:
    """'1 search', '2 searches', '0 measurements'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'ch')) else 's'}"


def notebook_times(timings: dict) -> dict:
    """A profile's ``timings.json`` as the provenance keys ``wall_times`` reads."""
    return {"notebook_wall_s": {k: v["wall_s"] for k, v in timings.items() if "wall_s" in v},
            "notebook_read_back": {k: v["read_back"] for k, v in timings.items() if "read_back" in v},
            "notebook_forward_tokens": {k: v["forward_tokens"] for k, v in timings.items() if "forward_tokens" in v}}


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




def update_readme(profile: str, root: Path | None = None) -> Path:
    """``make readme``: the README's generated sections (``readme.update_readme``)."""
    from evoprune.readme import update_readme as update  # readme renders with this module's sections
    return update(profile, root)
