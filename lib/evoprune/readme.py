"""The generated sections of the README (the results, from ``reports/<profile>/summary.json``) and of
docs/performance.md (the bench table, from ``reports/bench.json``), each between its markers, filled in by
``update_readme`` (``make readme``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evoprune import EvopruneError, methods, readings
from evoprune.criteria import CRITERIA
from evoprune.experiments import criterion_budget
from evoprune.records import ROOT, markdown_table, read_json, report_paths
from evoprune.report import (budget_words, limit_words, machine_words, notebook_times, race_words, results_table,
                             run_words, step_words, wall_times)
from evoprune.stats import main_group

README = ROOT / "README.md"
PERFORMANCE = ROOT / "docs" / "performance.md"  # holds the generated bench table
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def readme_section(summary: dict) -> str:
    """The README's headline results, generated from summary.json so every number there equals the one in the
    file; every other table of the run is in REPORT.md."""
    profile, windows = summary["profile"], summary["protocol"]["test_windows"]
    return f"""{BEGIN}
<!-- generated from reports/{profile}/summary.json by `make readme`; edit readme.readme_section, not this -->
Model `{summary['model']}`, profile `{profile}`; all perplexities on the WikiText-2 **test** split in
{summary['protocol']['reported_dtype']}: *primary* = the first {windows['primary']} non-overlapping 1024-token
windows, *study protocol* = {windows['study']} windows drawn as the study drew its 128. GA fitness was computed on
the validation split unless the row says otherwise, so these test numbers are held out. The run's other tables
(targets as measured, seeds, KL fitness, a second text, downstream accuracy, block removal, export), its budgets
and provenance: [reports/{profile}/REPORT.md](reports/{profile}/REPORT.md).

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
    prov, searches = summary["provenance"], summary["ga"]
    read_back = prov.get("notebook_read_back", {}).get("03_ga_search", {}).get("searches", 0)
    if not searches or read_back != len(searches):
        return ""
    search_s = sum(r["wall_s"] for r in searches) + summary["removal"]["ga"]["wall_s"]
    total = sum(prov["notebook_wall_s"].values()) + search_s
    return (f"\nThe run's {len(searches)} searches and its block-removal GA took {search_s / 60:.1f} min when they "
            f"ran (their `wall_s`), so the whole run took {total / 60:.1f} min.")


def findings(summary: dict) -> str:
    """The README's measured findings in a few sentences, every number read from the summary."""
    dense, lines = summary["dense"]["test_ppl"], []
    runs = main_group(summary)
    if runs:
        ppl = [r["test_ppl"] for r in runs]
        lines.append(f"The main search (`{'`, `'.join(r['run'] for r in runs)}`, {runs[0]['target']:.0%} "
                     f"{runs[0]['criterion']}) reaches a test perplexity of {np.mean(ppl):.4g} on average over its "
                     f"{len(runs)} seeds (range {min(ppl):.4g}–{max(ppl):.4g}): {np.mean(ppl) / dense:.2f}x dense and "
                     f"{np.mean(ppl) / runs[0]['uniform_at_target']['test_ppl']:.2f}x uniform at the same sparsity.")
    lines.append(readings.removal(summary))
    lines.append(run_words(summary["provenance"]))
    return "\n".join(lines)


def search_lines(summary: dict) -> str:
    """One line per GA run: its budget, its cost, and its test perplexity against dense and uniform."""
    dense = summary["dense"]["test_ppl"]
    lines = []
    for g in summary["ga"]:
        cfg = summary["provenance"]["budgets"][g["run"]]
        versus = ("" if g["strategy"] == "published" else
                  f", {g['test_ppl'] / g['uniform_at_target']['test_ppl']:.2f}x uniform at the same sparsity")
        fitness = "" if g["strategy"] == "published" else f", fitness {g['fitness_kind']}"
        lines.append(f"- `{g['run']}`: {budget_words(cfg)}{fitness}, seed {cfg['seed']} ({cfg['dtype']}); "
                     f"{g['generations_run']} generations, {g['evaluations']} evaluations, "
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
    ("SparseGPT level database: build / one dense fp32 forward of its calibration windows (32 x 512)",
     "sparsegpt_build_over_forward", "{:.1f}", ""),
    ("SparseGPT level database on disk (GiB)", "sparsegpt_database_gib", "{:.2f}", ""),
    ("SparseGPT: apply a race child after its sibling / one fitness evaluation", "sparsegpt_apply_over_eval",
     "{:.4f}", "≤ 0.05"),
    ("SparseGPT: apply a genome with every gene moved / one fitness evaluation (worst case)",
     "sparsegpt_full_apply_over_eval", "{:.3f}", ""),
    ("peak resident memory of a sparsegpt race search (GiB)", "sparsegpt_peak_rss_gib", "{:.2f}", "≤ 6"),
    ("compressed (sparse-bitmask) export / dense export on disk at 70%, the larger of float32 and bfloat16",
     "compressed_export_ratio_70", "{:.3f}", "≤ 0.6"),
)


def bench_section(bench: dict) -> str:
    """The performance page's bench table, generated from reports/bench.json (written by ``make bench``)."""
    figures = bench["figures"]
    how = "the `race` search's parent against `published`'s final genome on the same fresh samples"
    rows = [{"figure": label, "measured": fmt.format(figures[key]) if figures.get(key) is not None else "not measured",
             "target": target} for label, key, fmt, target in BENCH_ROWS]
    hardware = bench["provenance"]["hardware"]
    latency = ", ".join(f"{r['removed']} blocks removed {r['ratio']:.2f}" for r in figures["latency"]["rows"][1:])
    w = figures["workers"]
    scored = (f"One race generation ({w['children']} children raced on fresh samples of "
              f"{', '.join(map(str, w['stage_windows']))} windows of {w['seq_len']} tokens, then the parent)")
    prefix = (f"Prefix reuse: the short race search ({figures['prefix_search']['offspring']} children, "
              f"{figures['prefix_search']['generations']} generations), best of two runs each way; the reusing runs "
              f"skipped {figures['prefix_blocks_skipped']:.1%} of their block forwards.\n")
    return f"""{BENCH_BEGIN}
<!-- generated from reports/bench.json by `make readme`; edit readme.bench_section, not this -->
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


def _replace_section(text: str, begin: str, end: str, section: str, name: str = "README.md") -> str:
    if begin not in text or end not in text:
        raise EvopruneError(f"{name} has no {begin} ... {end} section to fill.")
    before, rest = text.split(begin, 1)
    return before + section + rest.split(end, 1)[1]


SECOND_HALF = ("offline-sparsegpt", "offline-wanda")  # its profiles, the last first: that one shows every criterion
METHODS_BEGIN, METHODS_END = "<!-- methods:begin -->", "<!-- methods:end -->"


def second_half_record(root: Path | None = None) -> tuple[str, dict | None]:
    """The second half's latest profile that has run and its 05 record, with the rows of the profiles it is shown
    with added to its own, and under ``parts`` each profile's provenance and notebook timings (the last profile
    and None if none has run)."""
    for profile in SECOND_HALF:
        if report_paths(profile, root).record("methods").exists():
            record = report_paths(profile, root).read("methods", "05_methods")
            with_profiles = record["provenance"]["with_profiles"]
            provenances = {**{p: report_paths(p, root).read("methods", "05_methods")["provenance"]
                              for p in with_profiles}, profile: record["provenance"]}
            return profile, {**record, "rows": record["rows"] + methods.other_profiles_rows(with_profiles,
                                                                                          record["rows"], root),
                             "parts": {p: {**prov, "timings": report_paths(p, root).read_timings()}
                                       for p, prov in provenances.items()}}
    return SECOND_HALF[0], None


def races_words(parts: dict[str, dict]) -> str:
    """Each criterion's races, with the profile that ran them: seeds, budget and moves (level switches where the
    criterion prunes from a level grid)."""
    shared = race_words(next(iter(parts.values()))["race"])
    out = []
    for profile, prov in parts.items():
        for criterion, seeds in prov["race_seeds"].items():
            if seeds:
                cfg, grid = criterion_budget(prov["race"], criterion), CRITERIA[criterion].grid
                moves = step_words(cfg) if grid is None else f"switches between its levels {grid[1] - grid[0]:g} apart"
                out.append(f"{criterion} {len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {limit_words(cfg)}, "
                           f"{moves} (`{profile}`)")
    return f"{shared}; " + "; ".join(out)


def runs_words(parts: dict[str, dict]) -> str:
    """Where each profile ran: its commit, the machine, the races' fitness dtype and its notebooks' wall times."""
    return " ".join(f"`{p}` ran at commit {prov['git_commit'][:7]} on {machine_words(prov['hardware'])}, the races' "
                    f"fitness in {prov['fitness_dtype']}: {wall_times(notebook_times(prov.get('timings', {})))}."
                    for p, prov in parts.items())


def targets_words(record: dict) -> str:
    """How many of the targets are met (those met named), and the best model against dense at each target."""
    judged = [c for c in record["claims"] if c["met"] is not None]
    met = [c["what"] for c in judged if c["met"]]
    dense = next(r for r in record["rows"] if r["method"] == "dense")["test_ppl"]
    best = [(target, bound, methods.best_model(record["rows"], target)) for target, bound in
            methods.BEST_OVER_DENSE.items()]
    return (f"{len(met)} of the {len(judged)} targets are met{' (' + '; '.join(met) + ')' if met else ''}: the "
            "race over the best rule is in the table's last two columns; the best model over dense (test) is "
            + ", ".join(f"{b['test_ppl'] / dense:.2f}x at {t:.0%} ({b['criterion']}, {b['method']}; target at most "
                        f"{bound:g}x)" for t, bound, b in best if b) + ".")


def second_half_section(record: dict | None, profile: str = SECOND_HALF[0]) -> str:
    """The README's second half: 05's table over every criterion and target, and its targets as measured; the
    parts not run yet are named with the commands that run them."""
    missing = SECOND_HALF[:SECOND_HALF.index(profile)] if record else SECOND_HALF
    commands = ", then ".join(f"`make reproduce PROFILE={p}`" for p in reversed(missing))
    todo = f"Not run yet at this commit: `{'`, `'.join(reversed(missing))}` ({commands}, then `make readme`)."
    if record is None:
        body = todo
    else:
        prov = record["provenance"]
        parts = record.get("parts") or {profile: prov}
        body = f"""Model `{prov['model']}`, profiles `{'`, `'.join([*prov['with_profiles'], profile])}`; float32, primary protocol, the first
{prov['test_windows']} test windows and {prov['docs_windows']} `python-docs` windows; the race's mean, min and max over its
seeds. Races: {races_words(parts)}.
Every table, the figures and the downstream accuracy:
[reports/{profile}/executed/05_methods.ipynb](reports/{profile}/executed/05_methods.ipynb).

{markdown_table(record['table'])}
{targets_words(record)}
{runs_words(parts)}

Figures: [the frontier](figures/{profile}/frontier.png), [the allocations](figures/{profile}/allocations_heatmap.png).""" + (f"\n\n{todo}" if missing else "")
    return f"""{METHODS_BEGIN}
<!-- generated from reports/{profile}/methods.json by `make readme`; edit readme.second_half_section, not this -->
{body}
{METHODS_END}"""


def update_readme(profile: str, root: Path | None = None) -> Path:
    """Replace the README's results sections with the ones generated from ``reports/<profile>/summary.json`` and
    from the second half's latest ``reports/<profile>/methods.json`` (``second_half_record``), and the performance
    page's bench table with the one generated from ``reports/bench.json`` when that exists."""
    second, record = second_half_record(root)
    text = _replace_section(README.read_text(), BEGIN, END,
                            readme_section(read_json(report_paths(profile, root).summary)))
    text = _replace_section(text, METHODS_BEGIN, METHODS_END, second_half_section(record, second))
    README.write_text(text)
    if BENCH.exists():
        PERFORMANCE.write_text(_replace_section(PERFORMANCE.read_text(), BENCH_BEGIN, BENCH_END,
                                                bench_section(read_json(BENCH)), "docs/performance.md"))
    return README
