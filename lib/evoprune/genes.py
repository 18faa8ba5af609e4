"""Gene layouts: how a rate vector maps onto a model's prunable matrices (no torch).

Genes are numbered block by block. ``block``: one rate per block; ``group``: an attention and an MLP rate per block,
in turn; ``matrix``: one rate per prunable matrix, in the block's order (``Architecture.matrices``: four per GPT-2
block, seven per Llama block, as EvoPress searches). A layout is carried as its number of genes per block: 1, 2, or
the number of matrices per block.
"""
from __future__ import annotations

from collections.abc import Sequence

from evoprune import EvopruneError
from evoprune.architectures import block_matrix_names

GENES = ("block", "group", "matrix")
GROUP_NAMES = ("attention", "MLP")


def per_block(layout: str, matrices: int) -> int:
    """Genes per block of a named layout on blocks of ``matrices`` prunable matrices."""
    if layout not in GENES:
        raise EvopruneError(f"unknown gene layout {layout!r}: use one of {', '.join(GENES)}.")
    return {"block": 1, "group": 2, "matrix": matrices}[layout]


def check_per_block(genes_per_block: int, matrices: int) -> None:
    if genes_per_block not in (1, 2, matrices):
        raise EvopruneError(f"genes_per_block must be 1 (one rate per block), 2 (attention, MLP) or {matrices} "
                            "(one rate per matrix).")


def detect(genome, n_blocks: int, matrices: int) -> int:
    """Genes per block of a rate vector from its length: 2 or ``matrices`` per block where it has that many rates,
    else 1 (a number counts as one rate per block)."""
    if isinstance(genome, (list, tuple)):
        for candidate in (2, matrices):
            if len(genome) == candidate * n_blocks:
                return candidate
    return 1


def gene_indices(matrices: Sequence, n_blocks: int, genes_per_block: int) -> list[int]:
    """The gene of each matrix (``models.prunable_matrices``' order: block by block, each block in the same
    order), under a layout of ``genes_per_block``."""
    in_block = len(matrices) // n_blocks
    check_per_block(genes_per_block, in_block)
    within = {1: lambda i, m: 0, 2: lambda i, m: m.group}.get(genes_per_block, lambda i, m: i % in_block)
    return [m.block * genes_per_block + within(i, m) for i, m in enumerate(matrices)]


def kinds(genes_per_block: int) -> tuple[str, ...]:
    """What each gene of a block stands for within it: nothing more than the block (``""``), attention and MLP, or
    each matrix's name."""
    return {1: ("",), 2: GROUP_NAMES}.get(genes_per_block) or block_matrix_names(genes_per_block)


def label(gene: int, genes_per_block: int) -> str:
    """A gene's short name: ``block 3``, ``3.attn`` or ``3.mlp.c_fc``."""
    if genes_per_block == 1:
        return f"block {gene}"
    names = ("attn", "mlp") if genes_per_block == 2 else kinds(genes_per_block)
    return f"{gene // genes_per_block}.{names[gene % genes_per_block]}"


def profiles(genomes: Sequence[Sequence[float]], n_blocks: int) -> dict[str, list[list[float]]]:
    """Genomes of one layout as per-block profiles, keyed by kind of gene (``kinds``): one profile (``""``) for
    block genes, attention and MLP for group genes, one per matrix for matrix genes."""
    per = len(genomes[0]) // n_blocks
    if per * n_blocks != len(genomes[0]):
        raise EvopruneError(f"a genome of {len(genomes[0])} rates fits no gene layout of {n_blocks} blocks.")
    return {kind: [list(g[i::per]) for g in genomes] for i, kind in enumerate(kinds(per))}
