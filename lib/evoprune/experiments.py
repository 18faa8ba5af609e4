"""The study's measurements, each one call from a notebook: it measures through a ``Session``, writes its tables
and its record (with provenance) under ``reports/<profile>/``, and returns what the notebook shows.

Reported numbers are float32 on the test split: ``primary`` (non-overlapping 1024-token windows) and ``study``
(the published GA's windows). ``test_windows`` caps the windows of primary (None: the whole split) and
``study_windows`` those of study (None: as ``test_windows``; the study's own 128 when both are None). Whole-block
removal is measured in ``dtype`` on ``removal_windows``.
"""
from __future__ import annotations

from evoprune import export, genes, models, perplexity
from evoprune.criteria import CRITERIA
from evoprune.data import PYTHON_DOCS
from evoprune.provenance import provenance
from evoprune.records import (REPORTED_DTYPE, ReportPaths, SearchRecord, record_tokens, write_json,
                              write_table)
from evoprune.search_runs import read_back, removal_latency, removal_ppl
from evoprune.session import Session


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


def finish(paths: ReportPaths, notebook: str, session: Session) -> None:
    """A notebook's last cell: its forward tokens by dtype, and what it read back from an earlier run instead of
    computing (measurements, finished searches), go to ``timings.json`` (the runner adds its wall time)."""
    record_tokens(paths, notebook, perplexity.forward_tokens(),
                  {"measurements": session.log.reused, "searches": read_back["searches"]})


# --- 01: dense baseline and per-block sensitivity ------------------------------------------------------------

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


# --- 02: the uniform sweep and whole-block removal -------------------------------------------------------------

def sweep_points(max_sparsity: float, step: float) -> list[float]:
    """0, step, 2*step, ... up to max_sparsity, rounded so 0.45 is 0.45 and not 0.44999999."""
    return [round(i * step, 6) for i in range(int(round(max_sparsity / step)) + 1)]


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


def sensitivity_ppl(paths: ReportPaths) -> list[float]:
    """01's sensitivity scan: validation perplexity with each block alone pruned."""
    return [row["ppl"] for row in paths.read("baseline", "01_baseline")["sensitivity"]]


# --- 03: searches, each against uniform and the rules at its target ------------------------------------------


def generalization(session: Session, result: SearchRecord, run: str, n_windows: int | None = None,
                   rules: dict[str, list] | None = None) -> dict:
    """A search's best genome against uniform at the same sparsity, and against ``rules`` (the allocations that
    need no search at its target), on a second text that no fitness ever saw (standard-library docstrings,
    ``data.PYTHON_DOCS``), float32, primary protocol."""
    criterion = result.config["criterion"]
    genomes = {"ga": result.genome, "uniform": result.test["uniform"]["genome"], **(rules or {})}
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


def overfitting(session: Session, result: SearchRecord, run: str, n_windows: int = VALIDATION_WINDOWS) -> dict:
    """A search's gain over uniform at the same sparsity on the split its fitness came from (the first
    ``n_windows`` validation windows, float32, primary protocol) beside its gain on test: a ratio of the two
    well below 1 means the search learnt its fitness data rather than the model."""
    criterion, split, test = result.config["criterion"], result.config["fitness_split"], result.test
    val = {name: session.measure(session.apply(genome, criterion), "primary", n_windows, split=split)
           for name, genome in (("ga", result.genome), ("uniform", test["uniform"]["genome"]))}
    session.restore()
    val_ratio, test_ratio = val["ga"].ppl / val["uniform"].ppl, test["test_ppl"] / test["uniform"]["test_ppl"]
    return {"run": run, "split": split, "windows": val["ga"].n_windows,
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


def genome_table(rows: list[dict], n_blocks: int) -> list[dict]:
    """One row per block: each search's best rate, or its attention and MLP rates (``--genes group``), or its rate
    of each matrix (``--genes matrix``)."""
    columns = {f"GA {r['run']} {kind}".rstrip(): profile for r in rows
               for kind, (profile,) in genes.profiles([r["genome"]], n_blocks).items()}
    return [{"block": b, **{name: profile[b] for name, profile in columns.items()}} for b in range(n_blocks)]


def criterion_budget(budget: dict, criterion: str) -> dict:
    """``budget``'s shared settings with its entry for ``criterion`` over them (``wanda: {step: 0.025}``)."""
    shared = {k: v for k, v in budget.items() if k not in CRITERIA}
    return {**shared, **budget.get(criterion, {})}


def export_check(session: Session, out_dir, genome=None, removed=None, criterion: str = "magnitude",
                 n_windows: int = 2) -> dict:
    """Save the pruned model (``genome`` rates and/or ``removed`` blocks) as a Hugging Face directory, dense and
    compressed (``<out_dir>-compressed``, sparse-bitmask), reload each (AutoModelForCausalLM;
    ``export.load_compressed``) and compare float32 test perplexity before and after, and the sizes on disk."""
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
    compressed = export.export(model, f"{out_dir}-compressed", format="compressed")
    del model
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=perplexity.get_dtype(REPORTED_DTYPE)).eval()
    after = perplexity.primary(reloaded, wins).ppl
    after_compressed = perplexity.primary(export.load_compressed(compressed["dir"]), wins).ppl
    return {**saved, "removed": list(removed or []), "ppl": before, "ppl_reloaded": after, "test_windows": len(wins),
            "same_ppl": before == after, "compressed_bytes_on_disk": compressed["bytes_on_disk"],
            "compressed_over_dense": compressed["bytes_on_disk"] / saved["bytes_on_disk"],
            "compressed_same_ppl": after_compressed == before}


def exported_run(ga_rows: list[dict]) -> dict:
    """The search whose best genome 03 exports, chosen by its settings before any number: the first race run,
    else the first run that is not the published GA."""
    searches = [r for r in ga_rows if r["strategy"] != "published"]
    return next((r for r in searches if r["strategy"] == "race"), searches[0])


def export_dir(profile: str, name: str):
    """Where exported models go: under data/cache (git-ignored: a SmolLM2 export is ~0.5 GB)."""
    return models.CACHE_DIR / "exports" / profile / name


# --- 03: downstream accuracy ---------------------------------------------------------------------------------

def downstream_study(session: Session, paths: ReportPaths, tasks: list[str], limit: int | None, target: float,
                     ga: dict, test_windows: int | None) -> list[dict]:
    """Accuracy on lm-evaluation-harness ``tasks`` (offline: the local ``wikitext_lastword``) of the dense model,
    uniform magnitude pruning and 03's magnitude searches at ``target`` (the published GA aside), beside their
    float32 test perplexity on ``test_windows``; ``downstream.json``. No tasks: nothing is run (notebook 05 has
    the other criteria's)."""
    if not tasks:
        return []
    ga_genomes = {f"GA {r['run']}": r["genome"] for r in ga["rows"]
                  if r["target"] == target and r["criterion"] == "magnitude" and r["strategy"] != "published"}
    plan = {"magnitude": {"dense": 0.0, "uniform": target, **ga_genomes}}
    rows = []
    for row in accuracy_table(session, plan, tasks, limit):
        ppl = session.measure(session.apply(row["genome"], row["criterion"]), "primary", test_windows)
        rows.append({**{k: v for k, v in row.items() if k != "genome"}, "test_ppl": ppl.ppl,
                     "test_windows": ppl.n_windows})
    session.restore()
    write_table(rows, paths.table("downstream"))
    record(paths, "downstream", "03_ga_search", session, {"rows": rows, "target": target}, tasks=tasks,
           limit=limit, test_windows=test_windows, reported_dtype=REPORTED_DTYPE)
    return rows


def accuracy_table(session: Session, plan: dict[str, dict[str, list]], tasks: list[str],
                   limit: int | None) -> list[dict]:
    """Accuracy on ``tasks`` of each genome of ``plan`` (criterion -> name -> genome, a number meaning uniform):
    rows {criterion, name, genome, block_sparsity, task, accuracy, n}; one pruner per criterion and gene layout."""
    from evoprune.downstream import accuracy_rows
    rows = []
    for criterion, genomes in plan.items():
        by_genes: dict[int, dict] = {}  # one pruner per gene layout: block, group or matrix genes
        for name, genome in genomes.items():
            by_genes.setdefault(session.genes_per_block(genome), {})[name] = genome
        for per_block, chosen in by_genes.items():
            pruner = session.pruner(criterion, per_block)
            rows += [{"criterion": criterion, **row} for row in
                     accuracy_rows(pruner.model, session.tokenizer, pruner, chosen, tasks, limit, data=session.data)]
    session.restore()
    return rows
