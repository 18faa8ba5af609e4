"""The measurements behind the notebooks: dense baseline, uniform sweep, per-block sensitivity, and the
test perplexities of any rate vector under both protocols.

Reported numbers are always float32 on the test split: ``primary`` (non-overlapping 1024-token windows) and
``study`` (the published GA's windows, called the seed protocol in search results). ``test_windows`` caps the
windows of both (None: the whole split for primary, the study's 128 windows for study).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from evoprune import models, perplexity
from evoprune.data import PYTHON_DOCS, Tokens, load_tokens
from evoprune.pruning import CALIBRATION_WINDOWS, Pruner, get_criterion

REPORTED_DTYPE = "float32"
PROTOCOLS = {
    "primary": "non-overlapping 1024-token windows over the test split, tail dropped; "
               "PPL = exp(total NLL / predicted tokens)",
    "study": "the published study's protocol (search results call it the seed protocol): 1024-token windows every "
             "512 tokens, 128 drawn with random.seed(365); PPL = exp(mean of per-window mean losses)",
}


@dataclass
class Setup:
    """A float32 model, its data setting, and one pruner that every measurement goes through."""
    loaded: models.LoadedModel
    data: str
    criterion: str = "magnitude"
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

    def calibration(self):
        """Validation windows for criteria that score weights by their inputs (Wanda); None for magnitude."""
        if not get_criterion(self.criterion).needs_calibration:
            return None
        return perplexity.windows(self.tokens("validation").ids, max_windows=CALIBRATION_WINDOWS)


def load_setup(model: str, data: str, criterion: str = "magnitude") -> Setup:
    return Setup(models.load_model(model, perplexity.get_dtype(REPORTED_DTYPE)), data, criterion)


def reported_perplexities(setup: Setup, genome, test_windows: int | None = None, batch_size: int = 4) -> dict:
    """Test perplexity of the model pruned to ``genome`` under both protocols, float32."""
    pruner = setup.apply(genome)
    ids = setup.tokens("test").ids
    dtype = perplexity.get_dtype(REPORTED_DTYPE)
    primary = perplexity.measure(setup.model, ids, "primary", max_windows=test_windows, batch_size=batch_size,
                                 dtype=dtype)
    study = perplexity.measure(setup.model, ids, "study", max_windows=test_windows, batch_size=batch_size,
                               dtype=dtype)
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
