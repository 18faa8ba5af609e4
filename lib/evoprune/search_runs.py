"""One search run on a session: its settings from a profile's run entry or the command line, the objective, the
optimizer, and its record (``records.SearchRecord``, ``<out>/result.json``) with the reported test numbers of its
best genome and of uniform at the same target. The block-removal search writes the same kind of record.

A finished search in ``out`` is read back instead of run again; an interrupted one resumes from its checkpoint.
"""
from __future__ import annotations

import sys
import time
import weakref
from collections import Counter
from dataclasses import replace
from pathlib import Path

from evoprune import EvopruneError, alpha, data_identity, hardware, models, perplexity, timing
from evoprune.data import HUB, local_file, portable_data
from evoprune.objective import FitnessSpec, build_objective, identity, split_settings
from evoprune.criteria import get_criterion
from evoprune.grid import snap_to_grid
from evoprune.provenance import provenance
from evoprune.pruning import layout_genes, owl_rates, sensitivity_rates
from evoprune.records import REPORTED_DTYPE, SearchRecord, Spent
from evoprune.search import RESULT, Settings, finished_result, optimize
from evoprune.session import Session

read_back: Counter = Counter()  # finished searches this process read back instead of running
REPORTED = ("block_sparsity", "model_sparsity", "test_ppl", "test_windows", "study_ppl", "study_windows")


def search_settings(session: Session, run: dict, **shared) -> tuple[Settings, FitnessSpec]:
    """A run entry of a profile (``Settings`` and ``FitnessSpec`` keywords) as settings on this session's model
    and data, the fitness dtype resolved for this machine."""
    settings, spec = split_settings({**shared, **run, "model": session.name, "data": portable_data(session.data)})
    return settings, replace(spec, dtype=hardware.resolve_dtype(spec.dtype))


def measure_test(session: Session, genome, spec: FitnessSpec) -> dict:
    """Reported numbers for one genome: test split, both protocols, in ``spec.test_dtype``."""
    measured = session.reported(genome, spec.criterion, spec.test_windows, spec.batch_size, spec.test_dtype,
                                spec.study_windows)
    return {k: measured[k] for k in REPORTED}


def protocol_record(test: dict, protocol: str, dtype: str) -> dict:
    key = {"primary": "test", "study": "study"}[protocol]
    return {"protocol": protocol, "split": "test", "dtype": dtype, "n_windows": test[f"{key}_windows"]}


def rule_allocations(session: Session, target: float, genes: str, sensitivity: list[float] | None,
                     criterion: str = "magnitude", dtype: str = REPORTED_DTYPE) -> dict[str, list]:
    """The allocations that need no search at ``target``, per gene of the ``genes`` layout: OWL, AlphaPruning
    (its epsilon chosen on validation for ``criterion``) and the sensitivity ranking when a scan is given (uniform
    is always the race's first candidate). A rule's block rate goes to every gene of its block; AlphaPruning's
    rates are per gene (each matrix's own alpha for one gene per matrix)."""
    rules = {"OWL": owl_rates(session.outlier_ratios(), target)}
    if sensitivity is not None:
        rules["sensitivity"] = sensitivity_rates(sensitivity, target)
    per_block = layout_genes(genes, session.model)
    per_gene = {name: [rate for rate in rates for _ in range(per_block)] for name, rates in rules.items()}
    return {**per_gene, "AlphaPruning": alpha_allocation(session, target, per_block, criterion, dtype)}


ALPHA_WINDOWS = 4  # fixed validation windows of 1024 tokens on which AlphaPruning's epsilon is chosen
_chosen_alpha: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # session -> {setting: rates}


def alpha_allocation(session: Session, target: float, genes_per_block: int, criterion: str, dtype: str) -> list[float]:
    """AlphaPruning's rates at ``target`` with the epsilon of ``alpha.EPSILONS`` that gives the lowest validation
    perplexity under ``criterion`` (never test); on a level grid (SparseGPT) each candidate is snapped to it. Chosen
    once per session and setting (every seed's race and the rules' table share it)."""
    chosen = _chosen_alpha.setdefault(session, {})
    key = (target, genes_per_block, criterion, dtype)
    if key not in chosen:
        chosen[key] = choose_alpha(session, target, genes_per_block, criterion, dtype)
    return list(chosen[key])


def choose_alpha(session: Session, target: float, genes_per_block: int, criterion: str, dtype: str) -> list[float]:
    alphas = session.block_alphas(genes_per_block)  # first: it restores the session, the pruner would not know
    pruner = session.pruner(criterion, genes_per_block, dtype)
    wins = perplexity.windows(session.tokens("validation").ids, 1024, ALPHA_WINDOWS)
    sizes = pruner.gene_sizes()

    def validation_ppl(rates: list[float]) -> float:
        pruner.apply(on_grid(pruner, rates, target))
        return perplexity.primary(pruner.model, wins, dtype=perplexity.get_dtype(dtype)).ppl

    choice = alpha.best_epsilon(validation_ppl, alphas, target, sizes=sizes)
    session.restore()
    return on_grid(pruner, choice.rates, target)


def on_grid(pruner, rates: list[float], target: float) -> list[float]:
    """``rates`` as the pruner can apply them: snapped to its level grid with the mean at ``target`` where it has
    one (SparseGPT's level database), else unchanged."""
    grid = getattr(pruner, "grid", None)
    return snap_to_grid(rates, pruner.gene_sizes(), target, grid) if grid is not None else list(rates)


def calibration_words(criterion: str, grid) -> dict | None:
    """How a criterion was calibrated (validation windows x tokens) and, for a level database, its grid."""
    chosen = get_criterion(criterion)
    if not chosen.needs_calibration:
        return None
    n_windows, seq_len = chosen.calibration
    return {"split": "validation", "windows": n_windows, "seq_len": seq_len,
            **({"grid": [float(g) for g in grid]} if grid is not None else {})}


def run_search(session: Session, settings: Settings, spec: FitnessSpec, out, progress: bool = True, objective=None,
               sensitivity=None) -> SearchRecord:
    """Search for the rate vector with the best fitness at ``settings.target``; write and return its record.
    ``objective``: a parallel scorer of the session's objective (``workers.open_pool``), else the session's own.
    A race starts from the best of uniform, OWL, AlphaPruning and (given a scan's perplexities, ``sensitivity``,
    or a function that scans) the sensitivity ranking, computed only when its generation 0 runs."""
    out = Path(out)
    spec = data_identity.same_text_elsewhere(out, spec, session.data)  # moved data: the saved search's name
    config = identity(settings, spec)
    done = finished_result(out, config)
    if done is not None:
        print(f"{out / RESULT} already holds this search (same config): not recomputed.", file=sys.stderr)
        read_back["searches"] += 1
        return SearchRecord.from_dict(done)
    data_identity.record(out, spec, session.data)
    if session.data != HUB:
        for split in (spec.fitness_split, "test"):
            local_file(session.data, split)
    own = build_objective(session, spec, settings.fitness_windows)
    def rules() -> dict[str, list]:  # only when the race's generation 0 runs, not on a resume
        scan = sensitivity() if callable(sensitivity) else sensitivity
        return rule_allocations(session, settings.target, spec.genes, scan, spec.criterion, spec.dtype)

    found = optimize(objective or own, own.pruner.gene_sizes(), settings, out, progress,
                     rules if settings.strategy == "race" else None, spec.as_config(),
                     own.tokens_per_window, own.grid).outcome()
    uniform = [settings.target] * own.pruner.n_genes
    start = found.start if "uniform" in found.start else {**found.start,
                                                          "uniform": own(uniform, settings.fitness_windows)}
    best, base = (measure_test(session, genome, spec) for genome in (found.genome, uniform))
    session.restore()
    fitness_protocol = {"kind": spec.fitness, "protocol": spec.protocol, "split": spec.fitness_split,
                        "seq_len": spec.seq_len, "dtype": spec.dtype, "n_windows": settings.fitness_windows,
                        "samples": "fresh each generation and stage" if settings.strategy == "race" else "fixed"}
    record = SearchRecord(
        genome=found.genome, fitness=found.fitness, config=config, start=start, history=found.history,
        progress=found.progress, test={**best, "uniform": {"genome": uniform, **base}},
        spent=Spent(found.evaluations, found.forward_tokens, found.wall_s, found.best_found_at),
        provenance=provenance(
            model=session.name, weights=session.loaded.weights_hash,
            data={"fitness": session.tokens(spec.fitness_split).provenance(),
                  "test": session.tokens("test").provenance()},
            seed=settings.seed, dtype={"fitness": spec.dtype, "test": spec.test_dtype},
            dtype_decision=hardware.dtype_decision(), criterion=spec.criterion,
            calibration=calibration_words(spec.criterion, own.grid),
            protocols={"fitness": fitness_protocol, "test_ppl": protocol_record(best, "primary", spec.test_dtype),
                       "study_ppl": protocol_record(best, "study", spec.test_dtype)}))
    record.write(out / RESULT)
    return record


def min_sparsity(config: dict) -> float:
    """The sparsity a search guarantees: exactly its target for the elitist strategy; for the published GA (a
    penalty below target - tolerance, no upper bound) at least target - tolerance."""
    if config["strategy"] == "published":
        return round(config["target"] - config["tolerance"], 6)
    return config["target"]


def ga_row(record: SearchRecord, run: str) -> dict:
    """What the reports need of a search's record, named ``run``."""
    config, test, spent = record.config, record.test, record.spent
    return {"run": run, "strategy": config["strategy"], "criterion": config["criterion"], "target": config["target"],
            "genome": record.genome, "block_sparsity": test["block_sparsity"],
            "model_sparsity": test["model_sparsity"], "fitness": record.fitness, "fitness_kind": config["fitness"],
            "fitness_split": config["fitness_split"], "test_ppl": test["test_ppl"], "study_ppl": test["study_ppl"],
            "evaluations": spent.evaluations, "forward_tokens": spent.forward_tokens, "wall_s": spent.wall_s,
            "best_found_at": spent.best_found_at, "config": config, "min_sparsity": min_sparsity(config),
            "test_windows": test["test_windows"], "study_windows": test["study_windows"],
            "uniform_at_target": {"fitness": record.start["uniform"], "test_ppl": test["uniform"]["test_ppl"],
                                  "study_ppl": test["uniform"]["study_ppl"]}}


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


def removal_run(session: Session, k: int, out, population: int, generations: int, fitness_windows: int,
                test_windows: int, dtype: str, seed: int = 0) -> SearchRecord:
    """The DEAP-style GA over sets of exactly ``k`` removed blocks (the record's genome), fitness = validation
    perplexity (``dtype``, ``fitness_windows``), then the best set measured like ``block_removals``. Written to
    ``out/result.json``; a finished run with the same settings is read back."""
    from evoprune.removal import removal_search
    config = {"k": k, "population": population, "generations": generations, "fitness_windows": fitness_windows,
              "test_windows": test_windows, "seed": seed, "dtype": dtype}
    path = Path(out) / RESULT
    if path.is_file():
        saved = SearchRecord.read(path)
        if saved.config != config:
            raise EvopruneError(f"{path} holds a different removal search ({saved.config}): use another "
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
    record = SearchRecord(genome=found["removed"], fitness=found["fitness"], config=config,
                          spent=Spent(found["evaluations"], found["evaluations"] * fit.numel(), wall),
                          history=found["history"], test=test,
                          provenance=provenance(model=session.name, weights=session.loaded.weights_hash,
                                                data=session.data, seed=seed, dtype=dtype))
    record.write(path)
    return record

