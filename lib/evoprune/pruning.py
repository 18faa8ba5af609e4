"""Unstructured pruning of block matrices driven by a rate vector (one gene per block or per block x group).

Each matrix gets an *ordering*: its weights sorted from least to most important by a criterion, ties broken
by position, so pruning at rate r zeroes exactly the first ``round(r * numel)`` entries. Orderings are computed
once; moving from one rate vector to another then only zeroes or restores the entries between the old and the
new count, in place, from one dense copy of the weights. ``Pruner.restore()`` gives back the dense model
bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from evoprune import EvopruneError
from evoprune.models import Matrix, blocks, prunable_matrices

GROUPS = ("attention", "mlp")


# --- criteria: a score per weight in (out, in) layout, and whether scores compete within rows only ------------

def magnitude_scores(matrix: Matrix, stats: dict | None = None) -> torch.Tensor:
    return matrix.out_in().abs().float()


magnitude_scores.per_row = False

CRITERIA: dict[str, Callable] = {"magnitude": magnitude_scores}


def get_criterion(name: str) -> Callable:
    if name not in CRITERIA:
        raise EvopruneError(f"unknown criterion {name!r}: use one of {', '.join(sorted(CRITERIA))}.")
    return CRITERIA[name]


def ordering(scores: torch.Tensor, per_row: bool, transposed: bool) -> torch.Tensor:
    """Flat indices into the stored weight, least important first, ties broken by position.

    With ``per_row`` the k-th entry of every row precedes the (k+1)-th of any row, so any prefix prunes the
    rows as evenly as possible (Wanda compares weights within an output row).
    """
    out_f, in_f = scores.shape
    if per_row:
        rank = scores.argsort(dim=1, stable=True)
        flat = (torch.arange(out_f).unsqueeze(1) * in_f + rank).t().reshape(-1)
    else:
        flat = scores.reshape(-1).argsort(stable=True)
    if transposed:  # index in (out, in) -> index in the stored (in, out) layout
        flat = (flat % in_f) * out_f + flat // in_f
    return flat.to(torch.int32)


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
                 stats: dict | None = None):
        if genes_per_block not in (1, 2):
            raise EvopruneError("genes_per_block must be 1 (one rate per block) or 2 (attention, MLP).")
        self.model = model
        self.criterion = criterion
        self.genes_per_block = genes_per_block
        self.n_blocks = len(blocks(model))
        self.matrices = prunable_matrices(model)
        score = get_criterion(criterion)
        self.dense = [m.weight.data.clone() for m in self.matrices]
        with torch.no_grad():
            self.orders = [ordering(score(m, stats), score.per_row, m.transposed) for m in self.matrices]
        self.removed = [0] * len(self.matrices)
        self.genome = [0.0] * self.n_genes

    @property
    def n_genes(self) -> int:
        return self.n_blocks * self.genes_per_block

    def gene_of(self, m: Matrix) -> int:
        return m.block * self.genes_per_block + (m.group if self.genes_per_block == 2 else 0)

    def gene_sizes(self) -> list[int]:
        """Prunable parameters behind each gene (the weights of a parameter-weighted mean)."""
        sizes = [0] * self.n_genes
        for m in self.matrices:
            sizes[self.gene_of(m)] += m.numel
        return sizes

    @torch.no_grad()
    def apply(self, genome) -> None:
        """Prune to a rate vector, touching only the entries between the current and the new counts."""
        genome = check_genome(genome, self.n_genes)
        for i, m in enumerate(self.matrices):
            new = count_for(genome[self.gene_of(m)], m.numel)
            old = self.removed[i]
            flat = m.weight.data.view(-1)
            if new > old:
                flat[self.orders[i][old:new]] = 0
            elif new < old:
                idx = self.orders[i][new:old]
                flat[idx] = self.dense[i].view(-1)[idx]
            self.removed[i] = new
        self.genome = genome

    def restore(self) -> None:
        self.apply([0.0] * self.n_genes)

    def block_sparsity(self) -> float:
        """Fraction of zero weights among the prunable block matrices (counted, not assumed)."""
        zeros = sum(m.numel - int(torch.count_nonzero(m.weight.data)) for m in self.matrices)
        return zeros / sum(m.numel for m in self.matrices)

    def model_sparsity(self) -> float:
        """Zero prunable weights as a fraction of all model parameters (tied weights counted once)."""
        zeros = sum(m.numel - int(torch.count_nonzero(m.weight.data)) for m in self.matrices)
        return zeros / sum(p.numel() for p in self.model.parameters())

    def target_sparsity(self, genome: Sequence[float]) -> float:
        """Parameter-weighted mean rate of a genome: the block sparsity it will have."""
        sizes = self.gene_sizes()
        return sum(g * s for g, s in zip(genome, sizes)) / sum(sizes)
