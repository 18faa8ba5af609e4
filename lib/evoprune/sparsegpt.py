"""SparseGPT (Frantar & Alistarh, ICML 2023): unstructured pruning with optimal-brain-surgeon reconstruction.

A linear layer y = W x with inputs X (tokens x in) has the layer-wise Hessian H = 2/n X^T X. SparseGPT prunes W
column by column; removing (or changing) column i's weights by delta is compensated in the columns not yet
processed by the exact OBS update ``- delta / [H_F^-1]_ii * [H_F^-1]_i,F`` with F the columns from i on. All
these row-independent updates come from one upper Cholesky factor U of H^-1 (row i of U is the i-th row of
H_F^-1 scaled by 1/sqrt of its diagonal), and are applied lazily in blocks of ``blocksize`` columns. The mask is
chosen per block, at the block's start, as the weights with the smallest w^2 / U_ii^2 (``fasterprune`` in
IST-DASLab/sparsegpt, with ``blocksize`` 128 and ``percdamp`` 0.01 as there).

One deliberate difference from the published code: a block removes exactly its share of ``count_for(sparsity,
numel)`` weights (ties by position), so a matrix at a level has exactly that many pruned weights; the published
``tmp <= sorted[int(numel * sparsity)]`` removes one weight more per block (and one even at sparsity 0).

Two modes collect Hessians: from the dense model's inputs (EvoPress, what a level database needs:
``HessianHooks`` over one forward of the dense model) or the paper's sequential mode (``prune_sequential``:
block b's Hessians from the inputs that the already pruned blocks 0..b-1 produce).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evoprune import EvopruneError
from evoprune.models import Matrix, blocks, prunable_matrices
from evoprune.perplexity import count_forward

BLOCKSIZE = 128
PERCDAMP = 0.01
INNER = 16  # columns per lazy update inside a block


# --- Hessians from a layer's inputs ----------------------------------------------------------------------------

class HessianHooks:
    """``with HessianHooks(model, matrices) as hooks: <forwards>``; then ``hooks.hessian(name)`` is 2/n sum x x^T
    over the n tokens each matrix saw. Matrices that read the very same input tensor (Llama's q, k, v and gate,
    up) share one sum: it is accumulated once."""

    def __init__(self, model: nn.Module, matrices: Sequence[Matrix]):
        self.model, self.matrices = model, list(matrices)
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.shares: dict[str, str] = {}  # matrix -> the matrix whose sum it reads
        self.handles, self.last = [], (None, None)

    def __enter__(self) -> "HessianHooks":
        for m in self.matrices:
            hook = lambda module, args, name=m.name: self.add(name, args[0])  # noqa: E731
            self.handles.append(self.model.get_submodule(m.name).register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.last = [], (None, None)

    @torch.no_grad()
    def add(self, name: str, x: torch.Tensor) -> None:
        if x is self.last[0]:  # called right after another hooked matrix, on the same tensor
            self.shares[name] = self.last[1]
            return
        self.last = (x, name)
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if name not in self.sums:
            self.sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            self.tokens[name] = 0
        self.sums[name].addmm_(x.t(), x)
        self.tokens[name] += x.shape[0]

    def hessian(self, name: str) -> torch.Tensor:
        owner = self.shares.get(name, name)
        if owner not in self.sums:
            raise EvopruneError(f"no inputs reached {name}: run the calibration windows through the model inside "
                                "the HessianHooks context.")
        return self.sums[owner] * (2.0 / self.tokens[owner])


# --- the reconstruction ---------------------------------------------------------------------------------------

def inverse_factor(hessian: torch.Tensor, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U the upper Cholesky factor of (H + damp I)^-1 with damp = percdamp x mean diag H, after
    columns no input ever reached (``dead``, zero diagonal) got a unit diagonal, as the published code does."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    try:
        lower = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as err:
        raise EvopruneError("the Hessian is not positive definite even after dampening: use more calibration "
                            "windows or a larger percdamp.") from err
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True), dead


def block_counts(sparsity: float, rows: int, columns: int, blocksize: int) -> list[int]:
    """Weights each column block removes: block shares of count_for(sparsity, rows x columns) that add up to it
    exactly (the count of the first j columns is count_for(sparsity, rows x j), rounded half up)."""
    ends = list(range(0, columns, blocksize))[1:] + [columns]
    cumulative = [0] + [int(sparsity * rows * end + 0.5) for end in ends]
    return [b - a for a, b in zip(cumulative, cumulative[1:])]


def block_masks(wt: torch.Tensor, u_diag: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """For one column block of the stacked levels, (cols, levels x rows): per level the ``counts[level]``
    weights with the smallest w^2 / U_ii^2, ties at the threshold by position in (out, in) order (True: pruned).
    A k-th value and a comparison per level, not a sort: the same mask, and sorting dominated the build."""
    cols, n = wt.shape[0], len(counts)
    scores = (wt ** 2 / u_diag.unsqueeze(1) ** 2).reshape(cols, n, -1).permute(1, 2, 0).reshape(n, -1)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for level, count in enumerate(counts):
        if count > 0:
            row = scores[level]
            threshold = row.kthvalue(count).values
            below, ties = row < threshold, row == threshold
            mask[level] = below | (ties & (ties.cumsum(0) <= count - int(below.sum())))
    return mask.reshape(n, -1, cols).permute(2, 0, 1).reshape(cols, -1)


def sweep(wt: torch.Tensor, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OBS over one column block in place (``wt``: its columns as rows, levels x rows wide): each column's
    pruned weights are zeroed and its error propagated to the block's later columns; returns the errors. The
    updates inside the block are themselves lazy, ``INNER`` columns at a time (the same numbers, more matmul)."""
    errors = torch.zeros_like(wt)
    for start in range(0, len(wt), INNER):
        end = min(start + INNER, len(wt))
        for i in range(start, end):
            q = wt[i].masked_fill(mask[i], 0.0)
            errors[i] = (wt[i] - q) / u[i, i]
            wt[i + 1:end].addmm_(u[i, i + 1:end, None], errors[i, None], alpha=-1)  # (addr_ is slower)
            wt[i] = q
        wt[end:].addmm_(u[start:end, end:].t(), errors[start:end], alpha=-1)
    return errors


@torch.no_grad()
def prune_levels(weight: torch.Tensor, hessian: torch.Tensor, levels: Sequence[float], blocksize: int = BLOCKSIZE,
                 percdamp: float = PERCDAMP) -> torch.Tensor:
    """SparseGPT of an (out, in) weight at every sparsity in ``levels``: a (len(levels), out, in) tensor, in the
    weight's dtype. The levels share the Hessian's Cholesky factor and run as one pass over the columns with the
    levels' rows stacked (every update is row-wise, so each level is exactly its own separate pass). Columns are
    kept as rows (``wt``) so that each column is contiguous."""
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise EvopruneError(f"weight {tuple(weight.shape)} and Hessian {tuple(hessian.shape)} do not match: the "
                            "weight must be (out, in) and the Hessian (in, in).")
    if any(not 0.0 <= s < 1.0 for s in levels):
        raise EvopruneError(f"sparsity levels must lie in [0, 1); got {list(levels)}.")
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    u, dead = inverse_factor(hessian.to(compute), percdamp)
    rows, columns = weight.shape
    n = len(levels)
    w = weight.to(compute).clone()
    w[:, dead] = 0
    wt = w.t().repeat(1, n)  # (columns, levels x rows)
    counts = [block_counts(s, rows, columns, blocksize) for s in levels]
    for index, start in enumerate(range(0, columns, blocksize)):
        end = min(start + blocksize, columns)
        u_block = u[start:end, start:end]
        mask = block_masks(wt[start:end], torch.diag(u_block), [c[index] for c in counts])
        errors = sweep(wt[start:end], u_block, mask)
        wt[end:].addmm_(u[start:end, end:].t(), errors, alpha=-1)
    return wt.reshape(columns, n, rows).permute(1, 2, 0).to(weight.dtype).contiguous()


def prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, blocksize: int = BLOCKSIZE,
          percdamp: float = PERCDAMP) -> torch.Tensor:
    """SparseGPT of an (out, in) weight at one sparsity: the pruned and reconstructed weight."""
    return prune_levels(weight, hessian, [sparsity], blocksize, percdamp)[0]


def write_out_in(matrix: Matrix, out_in: torch.Tensor) -> None:
    """Store an (out, in) weight into a matrix of either layout."""
    matrix.weight.data.copy_(out_in.t() if matrix.transposed else out_in)


# --- the paper's sequential mode ------------------------------------------------------------------------------

class _Stop(Exception):
    pass


@torch.no_grad()
def block_inputs(model: nn.Module, calibration: torch.Tensor, batch_size: int = 4) -> list[tuple]:
    """(hidden states, keyword arguments) with which block 0 is called, one pair per batch of windows."""
    captured = []

    def catch(module, args, kwargs):
        kwargs = dict(kwargs)
        captured.append((args[0] if args else kwargs.pop("hidden_states"), kwargs))
        raise _Stop

    handle = blocks(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for start in range(0, len(calibration), batch_size):
            try:
                model.base_model(input_ids=calibration[start: start + batch_size].to(model.device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def hidden_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def prune_sequential(model: nn.Module, calibration: torch.Tensor, sparsity: float, blocksize: int = BLOCKSIZE,
                     percdamp: float = PERCDAMP, batch_size: int = 4, progress: bool = False) -> None:
    """The paper's sequential mode, in place: block by block, the block's matrices get Hessians from the inputs
    that the already pruned earlier blocks hand on (within a block, from one pass of the dense block, as the
    published ``llama_sequential``), are pruned to ``sparsity``, and the pruned block feeds the next."""
    from tqdm.auto import tqdm
    count_forward(torch.float32, calibration.numel())
    inputs = block_inputs(model, calibration, batch_size)
    matrices = prunable_matrices(model)
    for b, block in enumerate(tqdm(blocks(model), desc="sparsegpt sequential", disable=not progress)):
        mine = [m for m in matrices if m.block == b]
        with HessianHooks(model, mine) as hooks:
            for x, kwargs in inputs:
                block(x, **kwargs)
        for m in mine:
            write_out_in(m, prune(m.out_in(), hooks.hessian(m.name), sparsity, blocksize, percdamp))
        inputs = [(hidden_of(block(x, **kwargs)), kwargs) for x, kwargs in inputs]
