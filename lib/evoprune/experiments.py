"""The study's measurements, each one call from a notebook: it measures through a ``Session``, writes its tables
and its record (with provenance) under ``reports/<profile>/``, and returns what the notebook shows.

Reported numbers are float32 on the test split: ``primary`` (non-overlapping 1024-token windows) and ``study``
(the published GA's windows). ``test_windows`` caps the windows of primary (None: the whole split) and
``study_windows`` those of study (None: as ``test_windows``; the study's own 128 when both are None). The methods
comparison (allocations and the GA at every target) is measured in ``method_dtype`` on ``method_windows`` windows;
whole-block removal in ``dtype`` on ``removal_windows``.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from evoprune import EvopruneError, data_identity, export, hardware, models, perplexity, timing
from evoprune.data import HUB, PYTHON_DOCS, local_file
from evoprune.pruning import CRITERIA, global_magnitude_counts, owl_rates, sensitivity_rates
from evoprune.results import (REPORTED_DTYPE, ReportPaths, portable_data, provenance, read_csv, read_json,
                              record_tokens, write_json, write_table)
from evoprune.search import GENES, RESULT, Settings, finished_result, genome_key, optimize
from evoprune.session import Session

_read_back: Counter = Counter()  # finished searches this process read back instead of running (``finish``)


def open_session(model: str, data: str | None, paths: ReportPaths) -> Session:
    """The notebook's session, logging test perplexities to the profile's measurement log."""
    return Session(model, data, log=paths.measurements)


def record(paths: ReportPaths, name: str, notebook: str, session: Session, content: dict, **settings) -> dict:
    """Write ``reports/<profile>/<name>.json``: ``content`` plus provenance (the notebook, the model, its weights,
    the settings given and the forward tokens the process has run, by dtype)."""
    obj = {**content, "provenance": provenance(notebook=notebook, model=session.name,
                                               weights=session.loaded.weights_hash, data=session.data,
                                               forward_tokens=perplexity.forward_tokens(), **settings)}
    write_json(paths.record(name), obj)
    return obj


def read_record(paths: ReportPaths, name: str, notebook: str) -> dict:
    return read_json(paths.require(paths.record(name), notebook))


def finish(paths: ReportPaths, notebook: str, session: Session) -> None:
    """A notebook's last cell: its forward tokens by dtype, and what it read back from an earlier run instead of
    computing (measurements, finished searches), go to ``timings.json`` (the runner adds its wall time)."""
    record_tokens(paths, notebook, perplexity.forward_tokens(),
                  {"measurements": session.log.reused, "searches": _read_back["searches"]})


# --- 01: dense baseline and per-block sensitivity ------------------------------------------------------------

def baseline(session: Session, paths: ReportPaths, test_windows: int | None, sensitivity_rate: float,
             sensitivity_windows: int, dtype: str, study_windows: int | None = None) -> dict:
    """Dense test perplexity under both protocols, parameter counts and the sensitivity scan."""
    dense = session.reported(0.0, windows=test_windows, study_windows=study_windows)
    counts = models.parameter_counts(session.model)
    dense_rows = [{"protocol": "primary", "windows": dense["test_windows"], "ppl": dense["test_ppl"]},
                  {"protocol": "study", "windows": dense["study_windows"], "ppl": dense["study_ppl"]}]
    dtype = hardware.resolve_dtype(dtype)
    sensitivity = sensitivity_scan(session, "magnitude", sensitivity_rate, sensitivity_windows, dtype)
    write_table([counts], paths.table("parameter_counts"))
    write_table(dense_rows, paths.table("dense"))
    write_table(sensitivity, paths.table("sensitivity"))
    return record(paths, "baseline", "01_baseline", session, {
        "model": session.name, "weights_hash": session.loaded.weights_hash, "parameter_counts": counts,
        "dense": dense, "dense_rows": dense_rows, "sensitivity": sensitivity, "data": session.data_provenance()},
        test_windows=test_windows, study_windows=study_windows, sensitivity_rate=sensitivity_rate, sensitivity_windows=sensitivity_windows,
        sensitivity_dtype=dtype, dtype_decision=hardware.dtype_decision(), reported_dtype=REPORTED_DTYPE)


def sensitivity_scan(session: Session, criterion: str, rate: float, n_windows: int, dtype: str,
                     batch_size: int = 4, progress: bool = True) -> list[dict]:
    """Validation perplexity with one block at a time pruned to ``rate`` by ``criterion`` and every other block
    dense."""
    from tqdm.auto import tqdm
    wins = perplexity.windows(session.tokens("validation").ids, max_windows=n_windows)
    torch_dtype = perplexity.get_dtype(dtype)
    pruner = session.apply(0.0, criterion, dtype)
    dense = perplexity.primary(pruner.model, wins, batch_size, torch_dtype).ppl
    sizes = pruner.gene_sizes()
    rows = []
    for block in tqdm(range(session.n_blocks), desc="sensitivity", disable=not progress):
        pruner.apply([rate if b == block else 0.0 for b in range(session.n_blocks)])
        ppl = perplexity.primary(pruner.model, wins, batch_size, torch_dtype).ppl
        rows.append({"block": block, "rate": rate, "params": sizes[block], "ppl": ppl, "dense_ppl": dense,
                     "ppl_ratio": ppl / dense})
    pruner.restore()
    return rows


# --- 02: the uniform sweep, allocations without search, whole-block removal ----------------------------------

def sweep_points(max_sparsity: float, step: float) -> list[float]:
    """0, step, 2*step, ... up to max_sparsity, rounded so 0.45 is 0.45 and not 0.44999999."""
    return [round(i * step, 6) for i in range(int(round(max_sparsity / step)) + 1)]


def uniform_sweep(session: Session, paths: ReportPaths, criterion: str, test_windows: int | None,
                  sweep_max: float, sweep_step: float, study_windows: int | None = None,
                  progress: bool = True) -> list[dict]:
    """Every block pruned to the same rate, 0 to ``sweep_max``: test perplexity under both protocols."""
    from tqdm.auto import tqdm
    sparsities = sweep_points(sweep_max, sweep_step)
    rows = []
    for s in tqdm(sparsities, desc="uniform sweep", disable=not progress):
        result = session.reported(s, criterion, test_windows, study_windows=study_windows)
        rows.append({"sparsity": s, "criterion": criterion, **{k: v for k, v in result.items() if k != "genome"}})
    session.restore()
    write_table(rows, paths.table("uniform_sweep"))
    record(paths, "uniform_sweep", "02_uniform_sweep", session, {"rows": rows}, criterion=criterion,
           test_windows=test_windows, study_windows=study_windows, sparsities=sparsities,
           reported_dtype=REPORTED_DTYPE)
    return rows


def allocation_sweep(session: Session, targets: list[float], criteria: list[str], sensitivity: list[float],
                     n_windows: int, dtype: str, progress: bool = True) -> list[dict]:
    """Test perplexity of every allocation that needs no search, per criterion and target: uniform, OWL,
    sensitivity-ranked (from 01's scan), and one global magnitude threshold (magnitude only)."""
    from tqdm.auto import tqdm
    ratios = session.outlier_ratios()
    rows = []
    for criterion in criteria:
        for target in tqdm(targets, desc=f"allocations ({criterion})", disable=not progress):
            pruner = session.pruner(criterion, 1, dtype)
            allocations = {"uniform": [target] * session.n_blocks, "OWL": owl_rates(ratios, target),
                           "sensitivity": sensitivity_rates(sensitivity, target)}
            if criterion == "magnitude":
                allocations["global"] = global_magnitude_counts(pruner, target)
            for method, allocation in allocations.items():
                if method == "global":
                    pruner.set_counts(allocation)
                else:
                    pruner.apply(allocation)
                measured = session.measure(pruner, "primary", n_windows, dtype)
                rows.append({"criterion": criterion, "method": method, "target": target,
                             "block_sparsity": pruner.block_sparsity(), "test_ppl": measured.ppl,
                             "test_windows": measured.n_windows, "dtype": dtype, "genome": pruner.genome})
    session.restore()
    return rows


def removal_ppl(model, removed, wins, dtype: str) -> float:
    with models.BlocksRemoved(model, removed) as smaller:
        return perplexity.primary(smaller, wins, dtype=perplexity.get_dtype(dtype)).ppl


LATENCY_REPEATS = 7  # interleaved rounds: enough for the spread (IQR) to fall below a few blocks' effect


def removal_latency(session: Session, sets: dict[str, list[int]], repeats: int = LATENCY_REPEATS) -> dict[str, dict]:
    """Parameters and float32 latency (median and IQR of ``repeats`` interleaved rounds, ``timing.compare_latency``)
    of the model with each set of blocks physically gone, all timed together so a busy machine slows them alike."""
    session.restore()
    timed = timing.compare_latency(session.model, sets, session.tokens("test").ids[:32], new_tokens=16,
                                   repeats=repeats)
    out = {}
    for name, removed in sets.items():
        with models.BlocksRemoved(session.model, removed) as smaller:
            parameters = sum(p.numel() for p in smaller.parameters())
        t = timed[name]
        out[name] = {"blocks": t["blocks"], "parameters": parameters, "ms_per_token": t["token"]["median_ms"],
                     "ms_per_token_iqr": t["token"]["iqr_ms"], "ms_per_forward": t["forward"]["median_ms"],
                     "ms_per_forward_iqr": t["forward"]["iqr_ms"], "latency_repeats": repeats}
    return out


def block_removals(session: Session, n_windows: int, dtype: str, pairs_up_to: int = 12,
                   progress: bool = True) -> dict:
    """Test perplexity with every single block removed, and every pair when the model has at most
    ``pairs_up_to`` blocks (66 pairs for GPT-2; SmolLM2's 30 blocks make 435, so skipped there). Blocks are the
    same size, so parameters and latency depend only on the depth: measured once per depth (float32), on the
    best set of that depth."""
    from itertools import combinations
    from tqdm.auto import tqdm
    wins = perplexity.windows(session.tokens("test").ids, max_windows=n_windows)
    session.restore()
    fast = session.model_in(dtype)
    n = session.n_blocks

    def rows(sets, desc):
        return [{"removed": list(s), "test_ppl": removal_ppl(fast, s, wins, dtype)}
                for s in tqdm(sets, desc=desc, disable=not progress)]

    tables = {"single": rows([(b,) for b in range(n)], "remove one block"),
              "pairs": rows(list(combinations(range(n), 2)), "remove two blocks") if n <= pairs_up_to else None}
    depths = [{"removed": [], "test_ppl": removal_ppl(fast, [], wins, dtype)}]
    depths += [min(table, key=lambda r: r["test_ppl"]) for table in tables.values() if table]
    timed = removal_latency(session, {str(d["removed"]): d["removed"] for d in depths})
    depths = [{**d, **timed[str(d["removed"])]} for d in depths]
    return {"test_windows": len(wins), "dtype": dtype, "latency_dtype": REPORTED_DTYPE, "dense_blocks": n,
            "depths": depths, **tables}


def methods_without_search(session: Session, paths: ReportPaths, targets: list[float], criteria: list[str],
                           n_windows: int, dtype: str, method_dtype: str = REPORTED_DTYPE,
                           removal_windows: int | None = None) -> dict:
    """02's second part: the allocations per criterion and target (sensitivity from 01's record), measured in
    ``method_dtype`` on ``n_windows``, and whole blocks removed, in ``dtype`` on ``removal_windows`` (default
    ``n_windows``); tables and ``allocations.json``."""
    dtype, method_dtype = hardware.resolve_dtype(dtype), hardware.resolve_dtype(method_dtype)
    rows = allocation_sweep(session, targets, criteria, sensitivity_ppl(paths), n_windows, method_dtype)
    session.restore()
    dense = session.measure(session.pruner("magnitude", 1, method_dtype), "primary", n_windows, method_dtype)
    removals = block_removals(session, removal_windows or n_windows, dtype)
    write_table(rows, paths.table("allocations"))
    write_table(removals["single"] + (removals["pairs"] or []), paths.table("block_removal"))
    return record(paths, "allocations", "02_uniform_sweep", session,
                  {"rows": rows, "dense_ppl": dense.ppl, "block_removal": removals},
                  targets=targets, criteria=criteria, test_windows=n_windows, dtype=method_dtype,
                  removal_dtype=dtype, removal_windows=removals["test_windows"],
                  dtype_decision=hardware.dtype_decision())


def sensitivity_ppl(paths: ReportPaths) -> list[float]:
    """01's sensitivity scan: validation perplexity with each block alone pruned."""
    return [row["ppl"] for row in read_record(paths, "baseline", "01_baseline")["sensitivity"]]


# --- 03: searches -------------------------------------------------------------------------------------------

def search_settings(session: Session, run: dict, **shared) -> Settings:
    """A run entry of a profile (``run_search`` keywords) as settings on this session's model and data, its
    ``dtype`` resolved for this machine."""
    settings = Settings.from_dict({**shared, **run, "model": session.name, "data": portable_data(session.data)})
    return replace(settings, dtype=hardware.resolve_dtype(settings.dtype))


def measure_test(session: Session, genome, settings: Settings) -> dict:
    """Reported numbers for one genome: test split, both protocols, in ``settings.test_dtype``."""
    return session.reported(genome, settings.criterion, settings.test_windows, settings.batch_size,
                            settings.test_dtype, settings.study_windows)


def protocol_record(test: dict, protocol: str, dtype: str) -> dict:
    key = {"primary": "test", "study": "study"}[protocol]
    return {"protocol": protocol, "split": "test", "dtype": dtype, "n_windows": test[f"{key}_windows"]}


def rule_allocations(session: Session, settings: Settings, sensitivity: list[float] | None) -> dict[str, list]:
    """The allocations that need no search at the search's target, per gene: OWL, and the sensitivity ranking
    when a scan is given (uniform is always the race's first candidate)."""
    rules = {"OWL": owl_rates(session.outlier_ratios(), settings.target)}
    if sensitivity is not None:
        rules["sensitivity"] = sensitivity_rates(sensitivity, settings.target)
    per_block = GENES[settings.genes]
    return {name: [rate for rate in rates for _ in range(per_block)] for name, rates in rules.items()}


def run_search(session: Session, settings: Settings, out, progress: bool = True, objective=None,
               sensitivity: list[float] | None = None) -> dict:
    """Search for the rate vector with the best fitness at ``settings.target``; write and return result.json.
    A finished search in ``out`` is read back; an interrupted one resumes from its checkpoint. ``objective``:
    a parallel scorer of the session's objective (``workers.open_pool``), else the session's own. A race starts
    from the best of uniform, OWL and (given a scan's perplexities, ``sensitivity``) the sensitivity ranking."""
    out = Path(out)
    settings = data_identity.same_text_elsewhere(out, settings, session.data)  # moved data: the saved search's name
    config = settings.as_config()
    done = finished_result(out, config)
    if done is not None:
        print(f"{out / RESULT} already holds this search (same config): not recomputed.", file=sys.stderr)
        _read_back["searches"] += 1
        return done
    data_identity.record(out, settings, session.data)
    if session.data != HUB:
        for split in (settings.fitness_split, "test"):
            local_file(session.data, split)
    own = session.objective(settings)
    pruner = own.pruner
    rules = rule_allocations(session, settings, sensitivity) if settings.strategy == "race" else None
    search = optimize(objective or own, pruner.gene_sizes(), settings, out, progress, rules)

    uniform = [settings.target] * pruner.n_genes
    if settings.strategy == "race":  # fitness is on fresh samples: uniform's is the one from generation 0
        uniform_fitness = search.strategy.start["uniform"]
    else:
        cached = search.evaluator.cache.get((genome_key(uniform), settings.fitness_windows))
        uniform_fitness = cached if cached is not None else own(uniform, settings.fitness_windows)
    best, base = (measure_test(session, genome, settings) for genome in (search.best_genome, uniform))
    session.restore()
    fitness_protocol = {"kind": settings.fitness, "protocol": "study" if settings.strategy == "published" else
                        "primary", "split": settings.fitness_split, "seq_len": settings.seq_len,
                        "dtype": settings.dtype, "n_windows": settings.fitness_windows,
                        "samples": "fresh each generation and stage" if settings.strategy == "race" else "fixed"}
    result = {
        "strategy": settings.strategy, "criterion": settings.criterion, "target": settings.target,
        "genome": search.best_genome, "block_sparsity": best["block_sparsity"],
        "model_sparsity": best["model_sparsity"], "fitness": search.best_fitness, "fitness_kind": settings.fitness,
        "fitness_split": settings.fitness_split, "test_ppl": best["test_ppl"], "study_ppl": best["study_ppl"],
        "uniform": {"genome": uniform, "fitness": uniform_fitness,
                    **{k: base[k] for k in ("test_ppl", "study_ppl", "block_sparsity", "model_sparsity")}},
        "evaluations": search.evaluator.evaluations, "forward_tokens": search.evaluator.forward_tokens,
        "wall_s": search.history[-1]["wall_s"], "best_found_at": search.best_at, "config": config,
        "start": getattr(search.strategy, "start", None),
        "provenance": provenance(
            model=session.name, weights=session.loaded.weights_hash,
            data={"fitness": session.tokens(settings.fitness_split).provenance(),
                  "test": session.tokens("test").provenance()},
            seed=settings.seed, dtype={"fitness": settings.dtype, "test": settings.test_dtype},
            dtype_decision=hardware.dtype_decision(), criterion=settings.criterion,
            protocols={"fitness": fitness_protocol,
                       "test_ppl": protocol_record(best, "primary", settings.test_dtype),
                       "study_ppl": protocol_record(best, "study", settings.test_dtype)}),
    }
    write_json(out / RESULT, result)
    return result


SEARCH_FIELDS = ("strategy", "criterion", "target", "genome", "block_sparsity", "model_sparsity", "fitness",
                 "fitness_kind", "fitness_split", "test_ppl", "study_ppl", "evaluations", "forward_tokens",
                 "wall_s", "best_found_at", "config")


def min_sparsity(config: dict) -> float:
    """The sparsity a search guarantees: exactly its target for the elitist strategy; for the published GA (a
    penalty below target - tolerance, no upper bound) at least target - tolerance."""
    if config["strategy"] == "published":
        return round(config["target"] - config["tolerance"], 6)
    return config["target"]


def ga_row(result: dict, run: str) -> dict:
    """What the reports need of a ``run_search`` result, named ``run``."""
    protocols = result["provenance"]["protocols"]
    return {"run": run, **{k: result[k] for k in SEARCH_FIELDS}, "min_sparsity": min_sparsity(result["config"]),
            "test_windows": protocols["test_ppl"]["n_windows"], "study_windows": protocols["study_ppl"]["n_windows"],
            "uniform_at_target": {k: result["uniform"][k] for k in ("fitness", "test_ppl", "study_ppl")}}


def generalization(session: Session, result: dict, run: str, n_windows: int | None = None,
                   rules: dict[str, list] | None = None) -> dict:
    """A search's best genome against uniform at the same sparsity, and against ``rules`` (the allocations that
    need no search at its target), on a second text that no fitness ever saw (standard-library docstrings,
    ``data.PYTHON_DOCS``), float32, primary protocol."""
    criterion = result["criterion"]
    genomes = {"ga": result["genome"], "uniform": result["uniform"]["genome"], **(rules or {})}
    ppl = {name: session.measure(session.apply(genome, criterion), "primary", n_windows, split=PYTHON_DOCS)
           for name, genome in genomes.items()}
    session.restore()
    row = {"run": run, "text": PYTHON_DOCS, "n_windows": ppl["ga"].n_windows}
    for name in genomes:
        row[f"{name}_ppl"] = ppl[name].ppl
    for name in genomes:
        if name != "ga":
            row[f"ga_over_{name}"] = ppl["ga"].ppl / ppl[name].ppl
    return row


VALIDATION_WINDOWS = 16  # the fixed validation windows on which a search's gain is compared with its test gain


def overfitting(session: Session, result: dict, run: str, n_windows: int = VALIDATION_WINDOWS) -> dict:
    """A search's gain over uniform at the same sparsity on the split its fitness came from (the first
    ``n_windows`` validation windows, float32, primary protocol) beside its gain on test: a ratio of the two
    well below 1 means the search learnt its fitness data rather than the model."""
    criterion = result["criterion"]
    val = {name: session.measure(session.apply(genome, criterion), "primary", n_windows, split=result["fitness_split"])
           for name, genome in (("ga", result["genome"]), ("uniform", result["uniform"]["genome"]))}
    session.restore()
    val_ratio, test_ratio = val["ga"].ppl / val["uniform"].ppl, result["test_ppl"] / result["uniform"]["test_ppl"]
    return {"run": run, "split": result["fitness_split"], "windows": val["ga"].n_windows,
            "ga_ppl": val["ga"].ppl, "uniform_ppl": val["uniform"].ppl, "fitness_split_ratio": val_ratio,
            "test_ratio": test_ratio, "fitness_split_over_test": val_ratio / test_ratio}


def rule_rows(session: Session, criterion: str, target: float, rules: dict[str, list],
              test_windows: int | None) -> list[dict]:
    """Uniform and the allocations that need no search at a search's target, measured as its best genome is
    (float32, primary protocol, ``test_windows`` test windows): the headline's "best rule" to beat."""
    rows = []
    for method, genome in {"uniform": [target] * session.n_blocks, **rules}.items():
        measured = session.measure(session.apply(genome, criterion), "primary", test_windows)
        rows.append({"criterion": criterion, "target": target, "method": method, "test_ppl": measured.ppl,
                     "test_windows": measured.n_windows, "genome": genome})
    session.restore()
    return rows


def ga_runs(session: Session, paths: ReportPaths, runs: dict[str, dict], criterion: str, seed: int,
            test_windows: int | None, dtype: str, study_windows: int | None = None,
            docs_windows: int | None = None) -> dict:
    """03's main searches, one per entry of ``runs`` (``Settings`` keywords), each in ``search/<run>/``; their
    rows, the rules at each exact target (OWL, sensitivity ranking), the second held-out text (on
    ``docs_windows``, default ``test_windows``), best genomes and convergence go to ``ga.json`` and tables."""
    shared = {"criterion": criterion, "seed": seed, "test_windows": test_windows, "study_windows": study_windows,
              "dtype": dtype}
    sensitivity = sensitivity_ppl(paths)
    settings = {name: search_settings(session, run, **shared) for name, run in runs.items()}
    results = {name: run_search(session, s, paths.search(name), sensitivity=sensitivity)
               for name, s in settings.items()}
    rows = [ga_row(result, name) for name, result in results.items()]
    rules, rule_table = {}, []
    for s in settings.values():
        if s.strategy != "published" and (s.criterion, s.target) not in rules:  # the rules: one rate per block
            rules[s.criterion, s.target] = rule_allocations(session, replace(s, genes="block"), sensitivity)
            rule_table += rule_rows(session, s.criterion, s.target, rules[s.criterion, s.target], test_windows)
    held_out = [generalization(session, result, name, test_windows if docs_windows is None else docs_windows,
                               rules.get((settings[name].criterion, settings[name].target)))
                for name, result in results.items()]
    overfit = [overfitting(session, result, name) for name, result in results.items()]
    histories = {name: read_csv(paths.search(name) / "history.csv") for name in results}
    write_table(held_out, paths.table("generalization"))
    write_table(genome_table(rows, session.n_blocks), paths.table("ga_genomes"))
    write_table([{"run": name, **row} for name, rows in histories.items() for row in rows], paths.table("convergence"))
    write_table(rule_table, paths.table("rules_at_target"))
    write_table(overfit, paths.table("overfitting"))
    return record(paths, "ga", "03_ga_search", session, {"rows": rows, "rules": rule_table,
                                                         "generalization": held_out, "overfitting": overfit},
                  criterion=criterion, seed=seed, runs=runs, search_dtype=hardware.resolve_dtype(dtype),
                  test_windows=test_windows, study_windows=study_windows, docs_windows=docs_windows)


def genome_table(rows: list[dict], n_blocks: int) -> list[dict]:
    """One row per block: each search's best rate, or its attention and MLP rates (``--genes group``)."""
    def rates(genome: list[float], block: int) -> dict[str, float]:
        if len(genome) == 2 * n_blocks:
            return {"attention": genome[2 * block], "MLP": genome[2 * block + 1]}
        return {"": genome[block]}
    return [{"block": b, **{f"GA {r['run']} {group}".rstrip(): rate for r in rows
                            for group, rate in rates(r["genome"], b).items()}} for b in range(n_blocks)]


def criterion_budget(budget: dict, criterion: str) -> dict:
    """``budget``'s shared settings with its entry for ``criterion`` over them (``wanda: {step: 0.025}``)."""
    shared = {k: v for k, v in budget.items() if k not in CRITERIA}
    return {**shared, **budget.get(criterion, {})}


def ga_sweep(session: Session, paths: ReportPaths, targets: list[float], criteria: list[str], budget: dict,
             test_windows: int, seed: int, dtype: str, method_dtype: str = REPORTED_DTYPE) -> list[dict]:
    """A search per criterion and target (``budget``: its settings, the elitist strategy unless it names
    another, and per-criterion settings under a criterion's name), all at one token budget, fitness in
    ``dtype``, measured like the allocations (test numbers in ``method_dtype`` on ``test_windows``, primary
    protocol only: the methods table has no study-protocol column). Each run lives in
    ``search/methods/<criterion>-<target%>``."""
    dtype, method_dtype = hardware.resolve_dtype(dtype), hardware.resolve_dtype(method_dtype)
    sensitivity = sensitivity_ppl(paths)
    rows = []
    for criterion in criteria:
        for target in targets:
            settings = search_settings(session, criterion_budget(budget, criterion), criterion=criterion,
                                       target=target, seed=seed, test_windows=test_windows, study_windows=0,
                                       test_dtype=method_dtype, dtype=dtype)
            result = run_search(session, settings, paths.search("methods") / f"{criterion}-{round(target * 100)}",
                                sensitivity=sensitivity)
            rows.append({"criterion": criterion, "method": "GA", "target": target,
                         "block_sparsity": result["block_sparsity"], "test_ppl": result["test_ppl"],
                         "test_windows": result["provenance"]["protocols"]["test_ppl"]["n_windows"],
                         "dtype": method_dtype, "genome": result["genome"], "fitness": result["fitness"],
                         "uniform_fitness": result["uniform"]["fitness"], "evaluations": result["evaluations"],
                         "forward_tokens": result["forward_tokens"], "wall_s": result["wall_s"]})
    return rows


def removal_run(session: Session, k: int, out, population: int, generations: int, fitness_windows: int,
                test_windows: int, dtype: str, seed: int = 0) -> dict:
    """The DEAP-style GA over sets of exactly ``k`` removed blocks, fitness = validation perplexity (``dtype``,
    ``fitness_windows``), then the best set measured like ``block_removals``. Written to ``out/result.json``;
    a finished run with the same settings is read back."""
    from evoprune.removal import removal_search
    settings = {"k": k, "population": population, "generations": generations, "fitness_windows": fitness_windows,
                "test_windows": test_windows, "seed": seed, "dtype": dtype}
    path = Path(out) / "result.json"
    if path.is_file():
        saved = read_json(path)
        if saved["settings"] != settings:
            raise EvopruneError(f"{path} holds a different removal search ({saved['settings']}): use another "
                                f"directory, or delete it to start over.")
        return saved
    session.restore()
    fast = session.model_in(dtype)
    fit = perplexity.windows(session.tokens("validation").ids, max_windows=fitness_windows)
    start = time.perf_counter()
    found = removal_search(lambda removed: removal_ppl(fast, removed, fit, dtype), session.n_blocks, k, population,
                           generations, seed)
    wall = time.perf_counter() - start
    wins = perplexity.windows(session.tokens("test").ids, max_windows=test_windows)
    timed = removal_latency(session, {"dense": [], "removed": found["removed"]})
    test = {"removed": found["removed"], "test_ppl": removal_ppl(fast, found["removed"], wins, dtype),
            "test_windows": len(wins), "dtype": dtype, **timed["removed"],
            "dense_ms_per_token": timed["dense"]["ms_per_token"], "dense_ms_per_forward": timed["dense"]["ms_per_forward"]}
    result = {**found, "settings": settings, "wall_s": wall, "forward_tokens": found["evaluations"] * fit.numel(),
              "test": test}
    write_json(path, result)
    return result


def export_check(session: Session, out_dir, genome=None, removed=None, criterion: str = "magnitude",
                 n_windows: int = 2) -> dict:
    """Save the pruned model (``genome`` rates and/or ``removed`` blocks) as a Hugging Face directory, reload it
    with AutoModelForCausalLM, and compare float32 test perplexity before and after."""
    import copy
    from transformers import AutoModelForCausalLM
    wins = perplexity.windows(session.tokens("test").ids, max_windows=n_windows)
    session.apply(0.0 if genome is None else genome, criterion)
    model = copy.deepcopy(session.model)
    session.restore()
    if removed:
        models.remove_blocks(model, removed)
    before = perplexity.primary(model, wins).ppl
    saved = export.export(model, out_dir, session.tokenizer)
    del model
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=perplexity.get_dtype(REPORTED_DTYPE)).eval()
    after = perplexity.primary(reloaded, wins).ppl
    return {**saved, "removed": list(removed or []), "ppl": before, "ppl_reloaded": after, "test_windows": len(wins),
            "same_ppl": before == after}


def export_dir(profile: str, name: str):
    """Where exported models go: under data/cache (git-ignored: a SmolLM2 export is ~0.5 GB)."""
    return models.CACHE_DIR / "exports" / profile / name


def methods_with_search(session: Session, paths: ReportPaths, targets: list[float], criteria: list[str],
                        budget: dict, removal: dict, n_windows: int, export_windows: int, seed: int,
                        dtype: str, method_dtype: str = REPORTED_DTYPE, removal_windows: int | None = None) -> dict:
    """03's second part: the GA at every target and criterion (test numbers in ``method_dtype`` on
    ``n_windows``), the removal GA (in ``dtype`` on ``removal_windows``, as 02's block removal), and the export
    round trips of the best Wanda genome and the best removal set; ``methods_ga.json``."""
    dtype, method_dtype = hardware.resolve_dtype(dtype), hardware.resolve_dtype(method_dtype)
    rows = ga_sweep(session, paths, targets, criteria, budget, n_windows, seed, dtype, method_dtype)
    removal_ga = removal_run(session, out=paths.search("removal"), test_windows=removal_windows or n_windows,
                             seed=seed, dtype=dtype, **removal)
    best_wanda = min((r for r in rows if r["criterion"] == "wanda"), key=lambda r: r["target"])
    exports = [export_check(session, export_dir(paths.profile, "ga-wanda"), genome=best_wanda["genome"],
                            criterion="wanda", n_windows=export_windows),
               export_check(session, export_dir(paths.profile, "removal"), removed=removal_ga["removed"],
                            n_windows=export_windows)]
    return record(paths, "methods_ga", "03_ga_search", session,
                  {"rows": rows, "removal_ga": removal_ga, "exports": exports}, seed=seed, targets=targets,
                  criteria=criteria, budget=budget, removal=removal, test_windows=n_windows, dtype=method_dtype,
                  fitness_dtype=dtype, dtype_decision=hardware.dtype_decision())


# --- 03: downstream accuracy ---------------------------------------------------------------------------------

def downstream_study(session: Session, paths: ReportPaths, tasks: list[str], limit: int | None, target: float,
                     ga: dict, methods: dict, test_windows: int | None, method_windows: int | None) -> list[dict]:
    """Accuracy on lm-evaluation-harness ``tasks`` (offline: the local ``wikitext_lastword``) of the dense model,
    uniform pruning and the GA at ``target``, magnitude (03's main searches) and Wanda (the methods sweep), beside
    their float32 test perplexity as already measured: magnitude on ``test_windows``, Wanda on the methods
    table's ``method_windows``; ``downstream.json``. No tasks: nothing is run."""
    if not tasks:
        return []
    from evoprune.downstream import accuracy_rows
    ga_genomes = {f"GA {r['run']}": r["genome"] for r in ga["rows"]
                  if r["target"] == target and r["criterion"] == "magnitude" and r["strategy"] != "published"}
    wanda_ga = {f"GA {r['criterion']}": r["genome"] for r in methods["rows"]
                if r["target"] == target and r["criterion"] == "wanda"}
    plan = {"magnitude": {"dense": 0.0, "uniform": target, **ga_genomes}, "wanda": {"uniform": target, **wanda_ga}}
    windows = {"magnitude": test_windows, "wanda": method_windows}
    rows = []
    for criterion, genomes in plan.items():
        by_genes = {}  # one pruner per gene layout: block genes, or attention and MLP genes
        for name, genome in genomes.items():
            by_genes.setdefault(session.genes_per_block(genome), {})[name] = genome
        for per_block, chosen in by_genes.items():
            pruner = session.pruner(criterion, per_block)
            for row in accuracy_rows(pruner.model, session.tokenizer, pruner, chosen, tasks, limit, data=session.data):
                ppl = session.measure(session.apply(row["genome"], criterion), "primary", windows[criterion])
                rows.append({"criterion": criterion, **{k: v for k, v in row.items() if k != "genome"},
                             "test_ppl": ppl.ppl, "test_windows": ppl.n_windows})
    session.restore()
    write_table(rows, paths.table("downstream"))
    record(paths, "downstream", "03_ga_search", session, {"rows": rows, "target": target}, tasks=tasks,
           limit=limit, test_windows=windows, reported_dtype=REPORTED_DTYPE)
    return rows
