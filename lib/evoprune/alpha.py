"""AlphaPruning (Lu et al., NeurIPS 2024): block sparsities from the heavy-tailed spectra of the weights.

Each prunable matrix W gets the power-law exponent alpha of the empirical spectral density of W^T W (its
eigenvalues are W's squared singular values), fitted as the authors' code does (``net_esd_estimator`` in
haiquanlu/AlphaPruning, ``lib/esd_utils.py``). A block's metric is the plain mean of its matrices' alphas; the
metrics map linearly to sparsities in [1 - eps, 1 + eps] x S, rescaled so the parameter-weighted mean is S.

Direction (``ww_sparsity`` in their ``lib/prune.py``): the HIGHEST alpha gets the HIGHEST sparsity. In
heavy-tailed self-regularization theory a smaller alpha means a heavier tail, a better-trained matrix, so
well-trained blocks are pruned less and poorly trained (large-alpha) blocks more.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from evoprune import EvopruneError
from evoprune.genes import gene_indices
from evoprune.models import blocks, prunable_matrices

# Candidate xmins, by the names of the authors' ``fix_fingers`` options:
#   "peak" ('xmin_peak', ``--ww_metric alpha_peak``: the default of their LLM main.py and of every script behind
#          their results) - the KS-best xmin among eigenvalues up to 1.5 x the peak of a 100-bin log10 histogram;
#   "ks"   (fix_fingers=None, ``net_esd_estimator``'s own default) - the KS-best xmin among all eigenvalues;
#   "mid"  ('xmin_mid') - xmin is the median eigenvalue, no search.
XMIN_RULES = ("peak", "ks", "mid")
HISTOGRAM_BINS = 100
# Their scripts use eps = 0.3 (magnitude, main.py's default) and 0.2 (Wanda, SparseGPT); the grid brackets both.
EPSILONS = (0.1, 0.2, 0.3, 0.4)


class PowerLawFit(NamedTuple):
    alpha: float  # density exponent: p(lambda) ~ lambda^-alpha for lambda >= xmin
    xmin: float
    ks: float  # Kolmogorov-Smirnov distance of the fitted tail


def hill_fits(eigs: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each candidate index i into ascending ``eigs`` (n = N - i points from xmin = eigs[i] up), the Hill /
    maximum-likelihood exponent  alpha_i = 1 + n / sum_{j>=i} ln(eigs[j] / eigs[i])  and the KS distance
    D_i = max_{j>=i} |1 - (eigs[j] / eigs[i])^(1 - alpha_i) - (j - i) / n|  (fitted Pareto CDF against the
    empirical one, as the authors write it)."""
    n_all = len(eigs)
    logs = eigs.log()
    tail_sums = logs.flip(0).cumsum(0).flip(0)  # tail_sums[i] = sum_{j>=i} ln eigs[j]
    n = (n_all - candidates).to(eigs.dtype)
    alphas = 1 + n / (tail_sums[candidates] - n * logs[candidates])
    j = torch.arange(n_all)
    above = j.unsqueeze(0) >= candidates.unsqueeze(1)  # (candidates, N): the points of each tail
    ratio = torch.where(above, eigs.unsqueeze(0) / eigs[candidates].unsqueeze(1), torch.ones(()))
    empirical = (j.unsqueeze(0) - candidates.unsqueeze(1)).clamp(min=0) / n.unsqueeze(1)
    gaps = torch.where(above, (1 - ratio ** (1 - alphas.unsqueeze(1)) - empirical).abs(), torch.zeros(()))
    return alphas, gaps.amax(dim=1)


def spectrum_fit(eigenvalues: torch.Tensor, xmin: str = "peak") -> PowerLawFit:
    """Power-law fit of a spectrum's tail with the authors' xmin rule (``XMIN_RULES``)."""
    if xmin not in XMIN_RULES:
        raise EvopruneError(f"unknown xmin rule {xmin!r}: use one of {', '.join(XMIN_RULES)} (peak is the "
                            f"authors' default).")
    eigs = eigenvalues.detach().flatten().double().sort().values
    eigs = eigs[eigs > 0]  # exact zeros (rank deficiency) have no logarithm; their code breaks on them too
    if len(eigs) < 2:
        raise EvopruneError("a power-law fit needs at least two positive eigenvalues: compute alphas on the dense "
                            "model, before pruning.")
    if xmin == "mid":
        candidates = torch.tensor([len(eigs) // 2])
    else:
        candidates = torch.arange(len(eigs) - 1)  # never the largest eigenvalue alone
        if xmin == "peak":
            log10 = eigs.log10()
            counts = torch.histc(log10, HISTOGRAM_BINS, min=float(log10[0]), max=float(log10[-1]))
            edges = torch.linspace(float(log10[0]), float(log10[-1]), HISTOGRAM_BINS + 1, dtype=eigs.dtype)
            peak = 10 ** edges[counts.argmax()]  # left edge of the fullest bin
            # sic: their lower bound is log10(0.95 * peak), compared with eigenvalues themselves; kept so the
            # alphas equal theirs (for weight spectra it admits every eigenvalue below the upper bound)
            window = (eigs[:-1] >= math.log10(0.95 * peak)) & (eigs[:-1] <= 1.5 * peak)
            candidates = candidates[window]
    alphas, ks = hill_fits(eigs, candidates)
    valid = torch.isfinite(alphas) & (alphas > 1)  # their code leaves D = 1 (never chosen) otherwise
    if not valid.any():
        raise EvopruneError("no candidate xmin gives a power-law exponent above 1: this spectrum has no "
                            "heavy tail to fit; use xmin='ks' or check the matrix is a trained weight.")
    best = int(torch.where(valid, ks, torch.full_like(ks, math.inf)).argmin())  # first of ties, as theirs
    return PowerLawFit(float(alphas[best]), float(eigs[candidates[best]]), float(ks[best]))


@contextmanager
def one_thread():
    """MKL's threaded SVD gains little on matrices this size and collapses when the cores are shared: a
    1536 x 576 svdvals took 6.9 s on 2 threads and 0.23 s on 1 on the project's busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def matrix_alpha(weight: torch.Tensor, xmin: str = "peak") -> float:
    """Power-law exponent of the eigenvalues of W^T W (squared singular values, float32 SVD as the authors)."""
    if weight.dim() != 2:
        raise EvopruneError(f"matrix_alpha needs a 2-D weight matrix, got shape {tuple(weight.shape)}.")
    with one_thread():
        eigenvalues = torch.linalg.svdvals(weight.detach().float()) ** 2
    return spectrum_fit(eigenvalues, xmin).alpha


def block_alphas(model: nn.Module, genes_per_block: int = 1, xmin: str = "peak") -> list[float]:
    """One metric per gene: the plain (unweighted) mean of its matrices' alphas, as the authors average per
    block. ``genes_per_block=2`` gives (attention, MLP) per block, the matrices per block each matrix's own alpha,
    in the order of ``Pruner.gene_of`` (``genes.gene_indices``)."""
    matrices = prunable_matrices(model)
    by_gene: dict[int, list[float]] = {}
    for m, gene in zip(matrices, gene_indices(matrices, len(blocks(model)), genes_per_block)):
        by_gene.setdefault(gene, []).append(matrix_alpha(m.weight, xmin))
    return [sum(a) / len(a) for _, a in sorted(by_gene.items())]


def check_allocation(alphas: Sequence[float], target: float, epsilon: float, sizes: Sequence[float] | None):
    if not 0.0 < target < 1.0:
        raise EvopruneError(f"target sparsity {target} must be in (0, 1), e.g. 0.5 for half the weights.")
    if not 0.0 <= epsilon < 1.0:
        raise EvopruneError(f"epsilon {epsilon} must be in [0, 1): rates span (1 +- epsilon) x target; the "
                            f"authors use 0.2-0.3.")
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise EvopruneError("alphas must be a non-empty list of finite numbers: one per gene, from block_alphas.")
    if sizes is not None and (len(sizes) != len(alphas) or min(sizes) <= 0):
        raise EvopruneError(f"sizes must give a positive parameter count for each of the {len(alphas)} genes "
                            f"(Pruner.gene_sizes()), got {len(sizes)}.")


def alpha_rates(alphas: Sequence[float], target: float, epsilon: float,
                sizes: Sequence[float] | None = None) -> list[float]:
    """AlphaPruning's rates: r_g = (1 - eps) + 2 eps (a_g - min a) / (max a - min a), times the one factor that
    makes the ``sizes``-weighted mean the target (equal sizes when None). A rate above 1 is set to 1 and the
    others are scaled up again until none is (the mean stays the target)."""
    check_allocation(alphas, target, epsilon, sizes)
    lo, hi = min(alphas), max(alphas)
    if epsilon == 0 or hi == lo:
        return [float(target)] * len(alphas)
    sizes = [1.0] * len(alphas) if sizes is None else [float(s) for s in sizes]
    rates = [(1 - epsilon) + 2 * epsilon * (a - lo) / (hi - lo) for a in alphas]
    full = [False] * len(rates)
    while True:
        budget = target * sum(sizes) - sum(s for s, f in zip(sizes, full) if f)
        scale = budget / sum(r * s for r, s, f in zip(rates, sizes, full) if not f)
        rates = [1.0 if f else r * scale for r, f in zip(rates, full)]
        if max(rates) <= 1.0:
            return rates
        full = [f or r > 1.0 for r, f in zip(rates, full)]


class EpsilonChoice(NamedTuple):
    epsilon: float
    rates: list[float]
    scores: dict[float, float]  # every epsilon tried -> its score


def best_epsilon(score: Callable[[list[float]], float], alphas: Sequence[float], target: float,
                 epsilons: Sequence[float] = EPSILONS, sizes: Sequence[float] | None = None) -> EpsilonChoice:
    """The epsilon whose rates score lowest; ``score`` maps rates to a validation objective (e.g. validation
    perplexity of the model pruned to them; never test). Ties and NaN scores go to the smaller epsilon."""
    if not epsilons:
        raise EvopruneError("best_epsilon needs at least one epsilon to try, e.g. alpha.EPSILONS.")
    scores = {float(e): float(score(alpha_rates(alphas, target, e, sizes))) for e in sorted(epsilons)}
    best = min(scores, key=lambda e: math.inf if math.isnan(scores[e]) else scores[e])
    return EpsilonChoice(best, alpha_rates(alphas, target, best, sizes), scores)
