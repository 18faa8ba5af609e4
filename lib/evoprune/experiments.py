"""The measurements behind the notebooks: dense baseline, uniform sweep, per-block sensitivity, and the
test perplexities of any rate vector under both protocols.

Reported numbers are always float32 on the test split: ``primary`` (non-overlapping 1024-token windows) and
``study`` (the published GA's windows, called the seed protocol in search results). ``test_windows`` caps the
windows of both (None: the whole split for primary, the study's 128 windows for study).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from evoprune import EvopruneError, models, perplexity
from evoprune.data import PYTHON_DOCS, Tokens, load_tokens
from evoprune.pruning import CALIBRATION_WINDOWS, Pruner, get_criterion
from evoprune.results import MeasurementLog, read_json, resolve_data, write_json

REPORTED_DTYPE = "float32"
PROTOCOLS = {
    "primary": "non-overlapping 1024-token windows over the test split, tail dropped; "
               "PPL = exp(total NLL / predicted tokens)",
    "study": "the published study's protocol (search results call it the seed protocol): 1024-token windows every "
             "512 tokens, 128 drawn with random.seed(365); PPL = exp(mean of per-window mean losses)",
}


@dataclass
class Setup:
    """A float32 model, its data setting, one pruner that every measurement goes through, and the log of test
    perplexities already measured."""
    loaded: models.LoadedModel
    data: str
    criterion: str = "magnitude"
    log: MeasurementLog = field(default_factory=MeasurementLog)
    pruner: Pruner | None = None
    _tokens: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.loaded.model

    @property
    def n_blocks(self) -> int:
        return len(models.blocks(self.model))

    def tokens(self, split: str) -> Tokens:
        if split not in self._tokens:
            self._tokens[split] = load_tokens(self.loaded.tokenizer, self.data, split)
        return self._tokens[split]

    def apply(self, genome) -> Pruner:
        """Prune to a rate vector (one rate per block, or per block x group, or one number)."""
        genes_per_block = 2 if isinstance(genome, (list, tuple)) and len(genome) == 2 * self.n_blocks else 1
        if self.pruner is None or self.pruner.genes_per_block != genes_per_block:
            if self.pruner is not None:
                self.pruner.restore()  # two pruners must never hold different views of the same weights
            self.pruner = Pruner(self.model, self.criterion, genes_per_block, self.calibration())
        self.pruner.apply(genome)
        return self.pruner

    def test_ppl(self, pruner: Pruner, protocol: str, windows: int | None, dtype: str = REPORTED_DTYPE,
                 **options) -> perplexity.Perplexity:
        """Test perplexity of ``pruner``'s model (this setup's, or a copy in another dtype) as pruned now."""
        return self.log.perplexity(pruner, self.loaded.weights_hash, self.tokens("test"), protocol, windows, dtype,
                                   **options)

    def calibration(self):
        """Validation windows for criteria that score weights by their inputs (Wanda); None for magnitude."""
        if not get_criterion(self.criterion).needs_calibration:
            return None
        return perplexity.windows(self.tokens("validation").ids, max_windows=CALIBRATION_WINDOWS)


def load_setup(model: str, data: str, criterion: str = "magnitude", log: str | Path | None = None) -> Setup:
    """``log``: the profile's measurement log (``ReportPaths.measurements``), or None to measure every time."""
    return Setup(models.load_model(model, perplexity.get_dtype(REPORTED_DTYPE)), data, criterion,
                 MeasurementLog(log))


def reported_perplexities(setup: Setup, genome, test_windows: int | None = None, batch_size: int = 4) -> dict:
    """Test perplexity of the model pruned to ``genome`` under both protocols, float32."""
    pruner = setup.apply(genome)
    primary, study = (setup.test_ppl(pruner, protocol, test_windows, batch_size=batch_size)
                      for protocol in ("primary", "study"))
    return {"genome": pruner.genome, "block_sparsity": pruner.block_sparsity(),
            "model_sparsity": pruner.model_sparsity(), "test_ppl": primary.ppl, "test_windows": primary.n_windows,
            "seed_protocol_ppl": study.ppl, "seed_protocol_windows": study.n_windows}


def generalization(setup: Setup, result: dict, run: str, n_windows: int | None = None) -> dict:
    """A search's best genome against uniform at the same sparsity on a second text that no fitness ever saw
    (standard-library docstrings, ``data.PYTHON_DOCS``), float32, primary protocol."""
    ids = load_tokens(setup.loaded.tokenizer, PYTHON_DOCS, "test").ids
    dtype = perplexity.get_dtype(REPORTED_DTYPE)
    measured = {}
    for name, genome in (("ga", result["genome"]), ("uniform", result["uniform"]["genome"])):
        setup.apply(genome)
        measured[name] = perplexity.measure(setup.model, ids, "primary", max_windows=n_windows, dtype=dtype)
    setup.apply(0.0)
    return {"run": run, "text": PYTHON_DOCS, "n_windows": measured["ga"].n_windows, "ga_ppl": measured["ga"].ppl,
            "uniform_ppl": measured["uniform"].ppl, "ga_over_uniform": measured["ga"].ppl / measured["uniform"].ppl}


def sweep_points(max_sparsity: float, step: float) -> list[float]:
    """0, step, 2*step, ... up to max_sparsity, rounded so 0.45 is 0.45 and not 0.44999999."""
    return [round(i * step, 6) for i in range(int(round(max_sparsity / step)) + 1)]


def uniform_sweep(setup: Setup, sparsities: list[float], test_windows: int | None = None,
                  progress: bool = True) -> list[dict]:
    from tqdm.auto import tqdm
    rows = []
    for s in tqdm(sparsities, desc="uniform sweep", disable=not progress):
        result = reported_perplexities(setup, s, test_windows)
        rows.append({"sparsity": s, "criterion": setup.criterion,
                     **{k: v for k, v in result.items() if k != "genome"}})
    setup.apply(0.0)
    return rows


def sensitivity_scan(setup: Setup, rate: float, n_windows: int, dtype: str = "bfloat16",
                     batch_size: int = 4, progress: bool = True) -> list[dict]:
    """Validation perplexity with one block at a time pruned to ``rate`` and every other block dense."""
    from tqdm.auto import tqdm
    wins = perplexity.windows(setup.tokens("validation").ids, max_windows=n_windows)
    torch_dtype = perplexity.get_dtype(dtype)
    pruner = setup.apply(0.0).in_dtype(torch_dtype)
    dense = perplexity.primary(pruner.model, wins, batch_size, torch_dtype).ppl
    sizes = pruner.gene_sizes()
    rows = []
    for block in tqdm(range(setup.n_blocks), desc="sensitivity", disable=not progress):
        pruner.apply([rate if b == block else 0.0 for b in range(setup.n_blocks)])
        ppl = perplexity.primary(pruner.model, wins, batch_size, torch_dtype).ppl
        rows.append({"block": block, "rate": rate, "params": sizes[block], "ppl": ppl, "dense_ppl": dense,
                     "ppl_ratio": ppl / dense})
    return rows


def data_provenance(setup: Setup, splits=("test", "validation")) -> dict:
    """The data setting and, per split, its file or hub source, text hash and token count."""
    return {"setting": setup.data, **{split: setup.tokens(split).provenance() for split in splits}}


SEARCH_FIELDS = ("mode", "criterion", "target", "genome", "block_sparsity", "model_sparsity", "fitness",
                 "fitness_kind", "fitness_split", "test_ppl", "seed_protocol_ppl", "evaluations", "forward_tokens",
                 "wall_s", "best_found_at", "config")


def ga_row(result: dict, run: str) -> dict:
    """What the reports need of a ``run_search`` result, named ``run``. Its test numbers are already float32 on the
    test split under both protocols (``search.measure_test``), so they are used as they are, with their windows."""
    protocols = result["provenance"]["protocols"]
    return {"run": run, **{k: result[k] for k in SEARCH_FIELDS},
            "min_sparsity": min_sparsity(result["config"]),
            "test_windows": protocols["test_ppl"]["n_windows"],
            "seed_protocol_windows": protocols["seed_protocol_ppl"]["n_windows"],
            "uniform_at_target": {k: result["uniform"][k] for k in ("fitness", "test_ppl", "seed_protocol_ppl")}}


def genome_table(results: list[dict]) -> list[dict]:
    """One row per gene: each search's best rate."""
    n_genes = len(results[0]["genome"])
    return [{"gene": i, **{f"GA {r['run']}": r["genome"][i] for r in results}} for i in range(n_genes)]


def min_sparsity(config: dict) -> float:
    """The sparsity a search guarantees: exactly its target in default mode; in seed mode (a penalty below
    target - tolerance, no upper bound, as published) at least target - tolerance."""
    return round(config["target"] - config.get("tolerance", 0.0), 6) if config["mode"] == "seed" else config["target"]


# --- beyond the study (issue 6): criteria, allocations without search, whole-block removal, export -------------
# Measured like the references: bfloat16 (block matrices stored in bf16, under autocast), the first
# ``n_windows`` test windows, primary protocol.

METHOD_DTYPE = "bfloat16"


def use_criterion(setup: Setup, criterion: str) -> None:
    """Switch the setup's pruning criterion (the dense model comes back first)."""
    if setup.pruner is not None:
        setup.pruner.restore()
    setup.criterion, setup.pruner = criterion, None


def fast_ppl(model, wins, dtype: str = METHOD_DTYPE) -> float:
    return perplexity.primary(model, wins, dtype=perplexity.get_dtype(dtype)).ppl


def allocation_sweep(setup: Setup, targets: list[float], criteria: list[str], sensitivity: list[float],
                     n_windows: int, progress: bool = True) -> list[dict]:
    """Test perplexity of every allocation that needs no search, per criterion and target: uniform, OWL,
    sensitivity-ranked (from 01's scan), and one global magnitude threshold (magnitude only)."""
    from tqdm.auto import tqdm
    from evoprune.pruning import global_magnitude_counts, outlier_ratios, owl_rates, sensitivity_rates
    setup.apply(0.0)  # outlier ratios are those of the dense model
    ratios = outlier_ratios(setup.model, perplexity.windows(setup.tokens("validation").ids,
                                                            max_windows=CALIBRATION_WINDOWS))
    rows, own_criterion = [], setup.criterion
    for criterion in criteria:
        use_criterion(setup, criterion)
        fast = setup.apply(0.0).in_dtype(perplexity.get_dtype(METHOD_DTYPE))
        for target in tqdm(targets, desc=f"allocations ({criterion})", disable=not progress):
            allocations = {"uniform": [target] * setup.n_blocks, "OWL": owl_rates(ratios, target),
                           "sensitivity": sensitivity_rates(sensitivity, target)}
            if criterion == "magnitude":
                allocations["global"] = global_magnitude_counts(fast, target)
            for method, allocation in allocations.items():
                if method == "global":
                    fast.set_counts(allocation)
                else:
                    fast.apply(allocation)
                measured = setup.test_ppl(fast, "primary", n_windows, METHOD_DTYPE)
                rows.append({"criterion": criterion, "method": method, "target": target,
                             "block_sparsity": fast.block_sparsity(), "test_ppl": measured.ppl,
                             "test_windows": measured.n_windows, "dtype": METHOD_DTYPE, "genome": fast.genome})
        del fast
    use_criterion(setup, own_criterion)
    return rows


def dense_twin(setup: Setup):
    """A copy of the dense model with its block matrices in bfloat16 (``Pruner.in_dtype``) for fast scoring."""
    return setup.apply(0.0).in_dtype(perplexity.get_dtype(METHOD_DTYPE)).model


def removal_ppl(fast_model, removed, wins) -> float:
    with models.BlocksRemoved(fast_model, removed) as smaller:
        return fast_ppl(smaller, wins)


def removal_latency(setup: Setup, removed, new_tokens: int = 16) -> dict:
    """Parameters and float32 latency of the model with ``removed`` blocks physically gone."""
    setup.apply(0.0)
    with models.BlocksRemoved(setup.model, removed) as smaller:
        timing = models.latency(smaller, setup.tokens("test").ids[:32], new_tokens=new_tokens, repeats=1)
        return {"blocks": len(models.blocks(smaller)), "parameters": sum(p.numel() for p in smaller.parameters()),
                "ms_per_token": timing["ms_per_token"], "ms_per_forward": timing["ms_per_forward"]}


def block_removals(setup: Setup, n_windows: int, pairs_up_to: int = 12, progress: bool = True) -> dict:
    """Test perplexity with every single block removed, and every pair when the model has at most
    ``pairs_up_to`` blocks (66 pairs for GPT-2; SmolLM2's 30 blocks make 435, so skipped there). Blocks are the
    same size, so parameters and latency depend only on the depth: measured once per depth (float32), on the
    best set of that depth."""
    from itertools import combinations
    from tqdm.auto import tqdm
    wins = perplexity.windows(setup.tokens("test").ids, max_windows=n_windows)
    fast = dense_twin(setup)
    n = setup.n_blocks

    def rows(sets, desc):
        return [{"removed": list(s), "test_ppl": removal_ppl(fast, s, wins)}
                for s in tqdm(sets, desc=desc, disable=not progress)]

    tables = {"single": rows([(b,) for b in range(n)], "remove one block"),
              "pairs": rows(list(combinations(range(n), 2)), "remove two blocks") if n <= pairs_up_to else None}
    dense = {"removed": [], "test_ppl": fast_ppl(fast, wins), **removal_latency(setup, [])}
    depths = [dense]
    for table in (t for t in tables.values() if t):
        best = min(table, key=lambda r: r["test_ppl"])
        depths.append({**best, **removal_latency(setup, best["removed"])})
    return {"test_windows": len(wins), "dtype": METHOD_DTYPE, "latency_dtype": REPORTED_DTYPE,
            "dense_blocks": n, "depths": depths, **tables}


def removal_run(setup: Setup, k: int, out, population: int, generations: int, fitness_windows: int,
                test_windows: int, seed: int = 0) -> dict:
    """The DEAP-style GA over sets of exactly ``k`` removed blocks, fitness = validation perplexity (bf16,
    ``fitness_windows``), then the best set measured like ``block_removals``. Written to ``out/result.json``;
    a finished run with the same settings is read back."""
    from evoprune.search import removal_search
    settings = {"k": k, "population": population, "generations": generations, "fitness_windows": fitness_windows,
                "test_windows": test_windows, "seed": seed, "dtype": METHOD_DTYPE}
    path = Path(out) / "result.json"
    if path.is_file():
        saved = read_json(path)
        if saved["settings"] != settings:
            raise EvopruneError(f"{path} holds a different removal search ({saved['settings']}): use another "
                                f"directory, or delete it to start over.")
        return saved
    fast = dense_twin(setup)
    fit = perplexity.windows(setup.tokens("validation").ids, max_windows=fitness_windows)
    start = time.perf_counter()
    found = removal_search(lambda removed: removal_ppl(fast, removed, fit), setup.n_blocks, k, population,
                           generations, seed)
    wall = time.perf_counter() - start
    wins = perplexity.windows(setup.tokens("test").ids, max_windows=test_windows)
    test = {"removed": found["removed"], "test_ppl": removal_ppl(fast, found["removed"], wins),
            "test_windows": len(wins), "dtype": METHOD_DTYPE, **removal_latency(setup, found["removed"])}
    result = {**found, "settings": settings, "wall_s": wall, "forward_tokens": found["evaluations"] * fit.numel(),
              "test": test}
    write_json(path, result)
    return result


def export_check(setup: Setup, out_dir, genome=None, removed=None, n_windows: int = 2) -> dict:
    """Save the pruned model (``genome`` rates and/or ``removed`` blocks) as a Hugging Face directory, reload it
    with AutoModelForCausalLM, and compare float32 test perplexity before and after."""
    import copy
    from transformers import AutoModelForCausalLM
    wins = perplexity.windows(setup.tokens("test").ids, max_windows=n_windows)
    setup.apply(0.0 if genome is None else genome)
    model = copy.deepcopy(setup.model)
    setup.apply(0.0)
    if removed:
        models.remove_blocks(model, removed)
    before = perplexity.primary(model, wins).ppl
    saved = models.export(model, out_dir, setup.loaded.tokenizer)
    del model
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=perplexity.get_dtype(REPORTED_DTYPE)).eval()
    after = perplexity.primary(reloaded, wins).ppl
    return {**saved, "removed": list(removed or []), "ppl": before, "ppl_reloaded": after, "test_windows": len(wins),
            "same_ppl": before == after}


def ga_sweep(model: str, data: str, targets: list[float], criteria: list[str], budget: dict, out_root,
             test_windows: int, seed: int = 0, log: str | Path | None = None) -> list[dict]:
    """A default-mode search per criterion and target, all at one ``budget``, measured like the allocations
    (test numbers in bf16 on ``test_windows``). Each run lives in ``out_root/<criterion>-<target%>``; the runs of
    one criterion share the model, its pruner and the bf16 copy."""
    from evoprune.search import SearchInputs, run_search
    rows = []
    for criterion in criteria:
        inputs = None
        for target in targets:
            out = Path(out_root) / f"{criterion}-{round(target * 100)}"
            if inputs is None and not (out / "result.json").is_file():
                inputs = SearchInputs(model, resolve_data(data), criterion, log=log)
            result = run_search(model, data, target, out, criterion=criterion, seed=seed, test_windows=test_windows,
                                test_dtype=METHOD_DTYPE, inputs=inputs, log=log, **budget)
            rows.append({"criterion": criterion, "method": "GA", "target": target,
                         "block_sparsity": result["block_sparsity"], "test_ppl": result["test_ppl"],
                         "test_windows": result["provenance"]["protocols"]["test_ppl"]["n_windows"],
                         "dtype": METHOD_DTYPE, "genome": result["genome"], "fitness": result["fitness"],
                         "uniform_fitness": result["uniform"]["fitness"], "evaluations": result["evaluations"],
                         "forward_tokens": result["forward_tokens"], "wall_s": result["wall_s"]})
        del inputs
    return rows


def export_dir(profile: str, name: str):
    """Where exported models go: under data/cache (git-ignored: a SmolLM2 export is ~0.5 GB)."""
    from evoprune.data import CACHE_DIR
    return CACHE_DIR / "exports" / profile / name


def pivot(rows: list[dict]) -> list[dict]:
    """Method rows as a table: one line per criterion and method, one column of test perplexity per target."""
    table: dict[tuple, dict] = {}
    for r in rows:
        line = table.setdefault((r["criterion"], r["method"]), {"criterion": r["criterion"], "method": r["method"]})
        line[f"{r['target']:.0%}"] = r["test_ppl"]
    return sorted(table.values(), key=lambda line: line["criterion"])  # stable: methods keep their order
