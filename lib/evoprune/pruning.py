"""Unstructured pruning of block matrices driven by a rate vector (one gene per block, per block x group or per
matrix: ``genes`` module).

Each matrix gets an *ordering*: its weights sorted from least to most important by a criterion, ties broken
by position, so pruning at rate r zeroes exactly the first ``round(r * numel)`` entries. Orderings are computed
once; moving from one rate vector to another then only zeroes or restores the entries between the old and the
new count, in place, from one dense copy of the weights. ``Pruner.restore()`` gives back the dense model
bit for bit.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from evoprune import EvopruneError, genes
from evoprune.criteria import Criterion, get_criterion, wanda_scores
from evoprune.models import Matrix, architecture_of, blocks, copy_in, prunable_matrices
from evoprune.perplexity import count_forward

GROUPS = ("attention", "mlp")


@torch.no_grad()
def input_norms(model: nn.Module, calibration: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """L2 norm of each prunable matrix's input features over all calibration tokens (dense model, one pass)."""
    # The sums are allocated before the forward and added to in place: a new small tensor per call, kept while the
    # activations around it are freed, fragmented the heap so much that one forward took 2 GB more after a scan.
    matrices = prunable_matrices(model)
    sums, hooks = {m.name: torch.zeros(m.out_in().shape[1], device=m.weight.device) for m in matrices}, []
    for m in matrices:
        def accumulate(module, args, name=m.name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] += (x * x).sum(dim=0)
        hooks.append(model.get_submodule(m.name).register_forward_pre_hook(accumulate))
    try:
        calibration_forward(model, calibration, batch_size)
    finally:
        for h in hooks:
            h.remove()
    return {name: total.sqrt() for name, total in sums.items()}


@torch.no_grad()
def calibration_forward(model: nn.Module, calibration: torch.Tensor, batch_size: int = 4) -> None:
    """Run the calibration windows through the model's blocks (no LM head) for the hooks that watch them."""
    for start in range(0, len(calibration), batch_size):
        batch = calibration[start: start + batch_size]
        count_forward(torch.float32, batch.numel())
        model.base_model(input_ids=batch.to(model.device))


def ordering(scores: torch.Tensor, per_row: bool, transposed: bool) -> torch.Tensor:
    """Flat indices into the stored weight, least important first, ties broken by position.

    With ``per_row`` the k-th entry of every row precedes the (k+1)-th of any row, so any prefix prunes the
    rows as evenly as possible (Wanda compares weights within an output row).
    """
    out_f, in_f = scores.shape
    if per_row:
        rank = scores.argsort(dim=1, stable=True)
        flat = (torch.arange(out_f, device=scores.device).unsqueeze(1) * in_f + rank).t().reshape(-1)
    else:
        flat = scores.reshape(-1).argsort(stable=True)
    if transposed:  # index in (out, in) -> index in the stored (in, out) layout
        flat = (flat % in_f) * out_f + flat // in_f
    return flat.to(torch.int32)


def orderings(matrices: list[Matrix], criterion: Criterion, norms: dict | None) -> list[torch.Tensor]:
    """Each matrix's ordering. A sort runs on one core, so the matrices are sorted on a thread per core (torch
    releases the GIL); the orderings are the same."""
    def one(m: Matrix) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread
            return ordering(criterion.score(m, norms), criterion.per_row, m.transposed)
    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        return list(pool.map(one, matrices))


def matrices_per_block(model: nn.Module) -> int:
    return len(architecture_of(model).matrices)


def layout_genes(layout: str, model: nn.Module) -> int:
    """Genes per block of a named layout (``genes.GENES``) on ``model``: 1, 2 or its matrices per block."""
    return genes.per_block(layout, matrices_per_block(model))


def genes_per_block(genome, model: nn.Module) -> int:
    """The layout of a rate vector on ``model`` from its length: 2 with an attention and an MLP rate per block,
    the matrices per block with one rate per matrix, else 1 (a number counts as any)."""
    return genes.detect(genome, len(blocks(model)), matrices_per_block(model))


def build_pruner(model: nn.Module, criterion: str, genes_per_block: int = 1,
                 calibration: torch.Tensor | None = None):
    """The pruner of a criterion: its own factory where it has one (``criteria`` module docstring), else a
    ``Pruner`` zeroing weights in its score order."""
    factory = get_criterion(criterion).pruner or Pruner
    return factory(model, criterion, genes_per_block, calibration)


def count_for(rate: float, numel: int) -> int:
    """Weights removed at a rate: round half up, so the count never depends on banker's rounding."""
    return int(math.floor(rate * numel + 0.5))


def check_genome(genome, n_genes: int, g_max: float = 1.0) -> list[float]:
    """Validate a rate vector; a single number means the same rate everywhere."""
    if isinstance(genome, (int, float)):
        genome = [float(genome)] * n_genes
    genome = [float(g) for g in genome]
    if len(genome) != n_genes:
        raise EvopruneError(f"rate vector has {len(genome)} entries but this model needs {n_genes} "
                            f"(one per gene), or give a single number for uniform pruning.")
    for i, g in enumerate(genome):
        if math.isnan(g) or not 0.0 <= g <= g_max:
            raise EvopruneError(f"rate {i} is {g}: every rate must be a number in [0, {g_max}].")
    return genome


class Pruner:
    """Applies rate vectors to a model in place; keeps one dense copy and the orderings."""

    def __init__(self, model: nn.Module, criterion: str = "magnitude", genes_per_block: int = 1,
                 calibration: torch.Tensor | None = None):
        self.model = model
        self.criterion = criterion
        self.set_layout(genes_per_block)
        chosen = get_criterion(criterion)
        norms = None
        if chosen.needs_calibration:
            if calibration is None:
                raise EvopruneError(f"criterion {criterion!r} needs calibration windows (validation split).")
            norms = input_norms(model, calibration)
        self.dense = [m.weight.data.clone() for m in self.matrices]
        self.orders = orderings(self.matrices, chosen, norms)
        self.removed = [0] * len(self.matrices)
        self.genome = [0.0] * self.n_genes

    def set_layout(self, genes_per_block: int) -> None:
        """The model's matrices and which gene each follows (``genes.gene_indices``)."""
        self.matrices, self.n_blocks = prunable_matrices(self.model), len(blocks(self.model))
        self.genes_per_block = genes_per_block
        self.gene_index = dict(zip((m.name for m in self.matrices),
                                   genes.gene_indices(self.matrices, self.n_blocks, genes_per_block)))

    @property
    def n_genes(self) -> int:
        return self.n_blocks * self.genes_per_block

    def gene_of(self, m: Matrix) -> int:
        return self.gene_index[m.name]

    def gene_names(self) -> list[str]:
        """Each gene's short name (``genes.label``), e.g. for sliders."""
        return [genes.label(g, self.genes_per_block) for g in range(self.n_genes)]

    def gene_sizes(self) -> list[int]:
        """Prunable parameters behind each gene (the weights of a parameter-weighted mean)."""
        sizes = [0] * self.n_genes
        for m in self.matrices:
            sizes[self.gene_of(m)] += m.numel
        return sizes

    def apply(self, genome) -> None:
        """Prune to a rate vector (one rate per gene, or one number for all)."""
        genome = check_genome(genome, self.n_genes)
        self.set_counts([count_for(genome[self.gene_of(m)], m.numel) for m in self.matrices])
        self.genome = genome

    @torch.no_grad()
    def set_counts(self, counts: Sequence[int]) -> None:
        """Remove ``counts[i]`` weights from matrix i, touching only entries between the old and new counts."""
        for i, (m, new) in enumerate(zip(self.matrices, counts)):
            old = self.removed[i]
            flat = m.weight.data.view(-1)
            if new > old:
                flat[self.orders[i][old:new]] = 0
            elif new < old:
                idx = self.orders[i][new:old]
                flat[idx] = self.dense[i].view(-1)[idx].to(flat.dtype)
            self.removed[i] = new
        self.genome = self.rates_of(counts)

    def on(self, model: nn.Module) -> "Pruner":
        """A pruner for a copy of this model (e.g. a bfloat16 one for fast fitness) that prunes exactly the same
        weights: it shares this pruner's orderings and dense weights, and starts in this pruner's state."""
        twin = copy.copy(self)
        twin.model, twin.matrices = model, prunable_matrices(model)
        if [m.weight.shape for m in twin.matrices] != [m.weight.shape for m in self.matrices]:
            raise EvopruneError("Pruner.on needs a copy of the pruner's own model (its matrices differ).")
        twin.removed = list(self.removed)
        return twin

    def in_dtype(self, dtype: torch.dtype) -> "Pruner":
        """This pruner if its matrices are stored in ``dtype``; else one over a copy of the model whose block
        matrices are stored in ``dtype`` and that prunes the same weights. Run it under autocast: the matrices
        need no cast per forward, activations are cast once per norm and attention is blocked
        (``models.run_fast_in``), while the residual stream and the loss stay float32 (a model stored wholly in
        bfloat16 drifts ~0.6% from float32 perplexity at 45% sparsity; ``make bench`` prints this copy's drift)."""
        if self.matrices[0].weight.dtype == dtype:
            return self
        return self.on(copy_in(self.model, dtype))

    def rates_of(self, counts: Sequence[int]) -> list[float]:
        """The per-gene rates (parameter-weighted) that per-matrix counts amount to."""
        removed = [0] * self.n_genes
        for m, c in zip(self.matrices, counts):
            removed[self.gene_of(m)] += c
        return [r / s for r, s in zip(removed, self.gene_sizes())]

    def restore(self) -> None:
        self.apply([0.0] * self.n_genes)

    def zeros(self) -> int:
        """Zero weights in the prunable block matrices, counted rather than assumed."""
        return sum(m.numel - int(torch.count_nonzero(m.weight.data)) for m in self.matrices)

    def block_sparsity(self) -> float:
        """Fraction of zero weights among the prunable block matrices."""
        return self.zeros() / sum(m.numel for m in self.matrices)

    def model_sparsity(self) -> float:
        """Zero prunable weights as a fraction of all model parameters (tied weights counted once)."""
        return self.zeros() / sum(p.numel() for p in self.model.parameters())

    def target_sparsity(self, genome: Sequence[float]) -> float:
        """Parameter-weighted mean rate of a genome: the block sparsity it will have."""
        sizes = self.gene_sizes()
        return sum(g * s for g, s in zip(genome, sizes)) / sum(sizes)


# --- allocations that need no search: per-block rates for a target -----------------------------------------

def spread_around(target: float, scores: Sequence[float], spread: float) -> list[float]:
    """Rates in [target - spread, target + spread], linear in ``scores`` (highest score, highest rate), mean =
    target. Equal scores give uniform rates."""
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [target] * len(scores)
    unit = [(s - lo) / (hi - lo) * 2 * spread for s in scores]
    mean = sum(unit) / len(unit)
    return [min(1.0, max(0.0, target + u - mean)) for u in unit]


@torch.no_grad()
def outlier_ratios(model: nn.Module, calibration: torch.Tensor, threshold_m: float = 5.0) -> list[float]:
    """OWL's per-block outlier ratio as its authors compute it (``check_outlier_mean`` in luuyin/OWL): the Wanda
    scores of all of a block's matrices together, the share of them above M x their block-wide mean."""
    norms = input_norms(model, calibration)
    by_block: dict[int, list[Matrix]] = {}
    for m in prunable_matrices(model):
        by_block.setdefault(m.block, []).append(m)
    ratios = []
    for block in sorted(by_block):  # one block's scores at a time: all blocks' at once would be 4 bytes a weight
        together = torch.cat([wanda_scores(m, norms).flatten() for m in by_block[block]])
        ratios.append(int((together > threshold_m * together.mean()).sum()) / together.numel())
    return ratios


def owl_rates(ratios: Sequence[float], target: float, spread: float = 0.08) -> list[float]:
    """OWL (Yin et al., 2024): blocks with more outliers keep more weights; block rates span target +- spread
    and average to the target (blocks have equal sizes). ``ratios`` from ``outlier_ratios``."""
    return spread_around(target, [-r for r in ratios], spread)


def sensitivity_rates(sensitivity: Sequence[float], target: float, spread: float = 0.1) -> list[float]:
    """A greedy allocation from a per-block sensitivity scan: the most sensitive block gets target - spread,
    the least sensitive target + spread, linear in rank between."""
    order = sorted(range(len(sensitivity)), key=lambda b: sensitivity[b])
    rank = [0] * len(sensitivity)
    for position, b in enumerate(order):
        rank[b] = position
    return spread_around(target, [-r for r in rank], spread)
