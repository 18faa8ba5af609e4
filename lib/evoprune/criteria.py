"""Pruning criteria: the registry every part reads (the command line's choices, profile checks, the session, the
pruner and the panel). A criterion is one small registered definition.

A *scoring* criterion gives ``score(matrix, norms) -> scores``: one score per weight in (out, in) layout, higher
means more important; the pruner zeroes weights in increasing score order. ``per_row``: scores compete within an
output row only (Wanda). ``needs_calibration``: ``norms`` holds each matrix's input-feature L2 norms on the
validation calibration windows (``pruning.input_norms``), else it is None.

Adding one is a ``register(Criterion(...))`` here (or in your own module) and nothing else: the command line
offers it, profiles and the session accept it and the pruner uses it. For example::

    def signed(matrix, norms=None):  # |W| times a fixed random sign
        w = matrix.out_in().abs().float()
        return w * (torch.randint(0, 2, w.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)

    register(Criterion("signed", signed, help="|W| times a random sign"))

**Pruner hook.** A criterion that does not zero weights by a score order (SparseGPT: it swaps in reconstructed
weights from a database of levels) gives ``pruner`` instead of ``score``: a factory
``pruner(model, criterion_name, genes_per_block, calibration) -> Pruner-like`` (``apply(genome)``, ``restore()``,
``gene_sizes()``, ``genome``, ``removed``, ``on(model)``, sparsity counts, as ``pruning.Pruner``).
``pruning.build_pruner`` calls it where a scoring criterion gets a ``pruning.Pruner``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evoprune import EvopruneError
from evoprune.grid import GRID


@dataclass(frozen=True)
class Criterion:
    name: str
    score: Callable | None = None      # (matrix, norms) -> scores in (out, in) layout
    per_row: bool = False               # scores compete within an output row only
    needs_calibration: bool = False     # score or pruner needs the calibration windows
    pruner: Callable | None = None      # a factory that replaces the score-order pruner (see the module docstring)
    help: str = ""
    calibration: tuple[int, int] = (8, 1024)  # validation windows x tokens that calibrate it (and OWL's ratios)
    grid: tuple[float, ...] | None = None  # rates it takes, when only the levels of a grid (a level database)


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add (or replace) a criterion; it is a choice everywhere from then on."""
    if (criterion.score is None) == (criterion.pruner is None):
        raise EvopruneError(f"criterion {criterion.name!r}: give a score function or a pruner factory, not both.")
    CRITERIA[criterion.name] = criterion
    return criterion


def names() -> tuple[str, ...]:
    return tuple(CRITERIA)


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise EvopruneError(f"unknown criterion {name!r}: use one of {', '.join(sorted(CRITERIA))}.")
    return CRITERIA[name]


def magnitude_scores(matrix, norms: dict | None = None):
    return matrix.out_in().abs().float()


def wanda_scores(matrix, norms: dict):
    """Wanda: |W_ij| * ||X_j||_2, with X the matrix's input on calibration tokens."""
    return matrix.out_in().abs().float() * norms[matrix.name].unsqueeze(0)


register(Criterion("magnitude", magnitude_scores, help="|W|, compared across the whole matrix"))
register(Criterion("wanda", wanda_scores, per_row=True, needs_calibration=True,
                   help="|W| x input-feature norm, compared within each output row"))


def sparsegpt_pruner(model, name: str, genes_per_block: int, calibration):
    """SparseGPT (Frantar & Alistarh, 2023) through a level database: every matrix reconstructed at each level of
    a fixed grid from the dense model's inputs, built once per (model, calibration, grid) and reused from disk."""
    from evoprune import levels  # the level database builds on the pruner, which reads this registry
    return levels.LevelPruner(model, levels.build(model, calibration), genes_per_block)


register(Criterion("sparsegpt", pruner=sparsegpt_pruner, needs_calibration=True, calibration=(32, 512), grid=GRID,
                   help="optimal-brain-surgeon reconstruction (SparseGPT) from a level database; rates on its grid "
                        "0, 0.1, ..., 0.9"))
