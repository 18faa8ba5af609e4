"""The SparseGPT level database and a pruner that swaps matrices between its levels.

SparseGPT's surviving weights depend on the sparsity, so a search that tries many rates per matrix needs each
matrix reconstructed at many sparsities. As in EvoPress, ``build`` reconstructs every prunable matrix at every
level of a fixed, evenly spaced grid (default ``GRID``: 0.0, 0.1, ..., 0.9), with Hessians from the DENSE
model's inputs on calibration windows (validation split), and stores the levels on disk; ``LevelPruner.apply``
then copies each matrix's level into the model. A uniform genome from the database is therefore SparseGPT in
the dense-input mode, not the paper's sequential mode (``sparsegpt.prune_sequential``, where block b's Hessians
come from the already pruned blocks before it); at high sparsity the two differ, so say which mode a number is.

Layout: ``<root>/sparsegpt-<key>/identity.json`` and one ``block-NNN.safetensors`` per decoder block holding
``<matrix name>@<level index>`` for levels 1.. (level 0 is the dense weight and is never stored), float32, in the
weight's stored layout (GPT-2 Conv1D: (in, out)). ``key`` hashes the identity: format, algorithm, a hash of
sparsegpt.py and levels.py (the solver and the Hessian collection) and their parameters, the model's weights
hash, the calibration tokens' hash, window count and length, the grid and the dtype; other calibration or another grid gives another directory, and a directory whose
identity.json differs from the one asked for is refused. A block file is written atomically once its matrices
are done, so a killed build resumes from the finished blocks (only their Hessians are collected again: one
calibration forward).

Genome -> levels: a rate must be a grid level (within 1e-6) and is refused otherwise, with a message naming
``snap_to_grid``, which rounds a genome to the grid with its parameter-weighted mean exactly at a target level.
A matrix at level k has exactly ``count_for(grid[k], numel)`` pruned weights, so a genome whose weighted mean is
the target reaches the target's block sparsity up to half a weight per matrix.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from evoprune import EvopruneError, write_atomically
from evoprune.models import CACHE_DIR, blocks, prunable_matrices, weights_hash
from evoprune.pruning import Pruner, calibration_forward, check_genome, count_for
from evoprune.grid import GRID, check_grid, level_of
from evoprune.sparsegpt import BLOCKSIZE, PERCDAMP, HessianHooks, prune_levels

LEVELS_DIR = CACHE_DIR / "levels"
FORMAT = 1
STORED_DTYPE = torch.float32


def tokens_sha256(calibration: torch.Tensor) -> str:
    return hashlib.sha256(calibration.detach().cpu().to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def identity(model: nn.Module, calibration: torch.Tensor, grid: Sequence[float] = GRID,
             blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP) -> dict:
    """Everything a database's contents depend on."""
    code = hashlib.sha256(b"".join((Path(__file__).parent / name).read_bytes()
                                   for name in ("sparsegpt.py", "levels.py"))).hexdigest()[:16]
    return {"format": FORMAT, "algorithm": "sparsegpt", "code": code, "hessians": "dense model inputs",
            "blocksize": blocksize,
            "percdamp": percdamp, "weights": weights_hash(model), "calibration_sha256": tokens_sha256(calibration),
            "calibration_windows": int(calibration.shape[0]), "seq_len": int(calibration.shape[1]),
            "grid": list(check_grid(grid)), "dtype": str(STORED_DTYPE).removeprefix("torch."),
            "matrices": [[m.name, m.block] for m in prunable_matrices(model)], "n_blocks": len(blocks(model))}


def identity_key(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class LevelDatabase:
    """An opened database directory: its identity and the stored levels (read lazily from the block files)."""

    def __init__(self, path: str | Path, expected: dict | None = None):
        self.path = Path(path)
        file = self.path / "identity.json"
        if not file.is_file():
            raise EvopruneError(f"{self.path} is not a sparsegpt level database (no identity.json): build one with "
                                "evoprune.levels.build.")
        self.identity = json.loads(file.read_text())
        if expected is not None and self.identity != expected:
            changed = sorted(k for k in set(expected) | set(self.identity) if expected.get(k) != self.identity.get(k))
            raise EvopruneError(f"the level database in {self.path} was built for another {', '.join(changed)}: "
                                f"it cannot be reused; build one for this setting (evoprune.levels.build).")
        self.grid = tuple(self.identity["grid"])
        self.block_of = dict(self.identity["matrices"])
        self._handles: dict[int, object] = {}

    def file_of(self, block: int) -> Path:
        return self.path / f"block-{block:03d}.safetensors"

    def missing_blocks(self) -> list[int]:
        return [b for b in range(self.identity["n_blocks"]) if not self.file_of(b).is_file()]

    def complete(self) -> bool:
        return not self.missing_blocks()

    def level(self, name: str, k: int) -> torch.Tensor:
        """Matrix ``name`` at level index k >= 1, in the weight's stored layout."""
        block = self.block_of[name]
        if block not in self._handles:
            self._handles[block] = safe_open(str(self.file_of(block)), framework="pt")
        return self._handles[block].get_tensor(f"{name}@{k}")

    def nbytes(self) -> int:
        """Bytes on disk of the identity and the finished block files."""
        return sum(f.stat().st_size for f in [self.path / "identity.json", *self.path.glob("block-*.safetensors")])


def database_dir(ident: dict, root: str | Path = LEVELS_DIR) -> Path:
    return Path(root) / f"sparsegpt-{identity_key(ident)}"


def save_block(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp)))


@torch.no_grad()
def calibrate(model: nn.Module, matrices: list, calibration: torch.Tensor, batch_size: int) -> HessianHooks:
    """Hessians of ``matrices`` from one forward of the (dense) model over the calibration windows."""
    with HessianHooks(model, matrices) as hooks:
        calibration_forward(model, calibration, batch_size)
    return hooks


@torch.no_grad()
def build(model: nn.Module, calibration: torch.Tensor, grid: Sequence[float] = GRID, root: str | Path = LEVELS_DIR,
          blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP, batch_size: int = 4,
          progress: bool = True) -> LevelDatabase:
    """The level database of the dense ``model`` for these calibration windows (n x seq_len token ids) and grid:
    reused when built before, resumed when a build was killed, else built (tqdm progress per block)."""
    from tqdm.auto import tqdm
    ident = identity(model, calibration, grid, blocksize, percdamp)
    path = database_dir(ident, root)
    if not (path / "identity.json").is_file():
        write_atomically(path / "identity.json", lambda tmp: tmp.write_text(json.dumps(ident, indent=1)))
    db = LevelDatabase(path, ident)
    todo = db.missing_blocks()
    if not todo:
        return db
    matrices = [m for m in prunable_matrices(model) if m.block in todo]
    hooks = calibrate(model, matrices, calibration, batch_size)
    for b in tqdm(todo, desc="sparsegpt levels", unit="block", disable=not progress):
        tensors = {}
        for m in (m for m in matrices if m.block == b):
            out_in = prune_levels(m.out_in().to(STORED_DTYPE), hooks.hessian(m.name), db.grid[1:], blocksize,
                                  percdamp)
            for k, level in enumerate(out_in, start=1):
                tensors[f"{m.name}@{k}"] = (level.t() if m.transposed else level).contiguous()
        save_block(db.file_of(b), tensors)
    return db


# --- the pruner -----------------------------------------------------------------------------------------------

class LevelPruner(Pruner):
    """``pruning.Pruner``'s interface over a level database: apply(genome) copies each matrix's level (a rate on
    the grid, see ``level_of``) into the model, restore() copies the dense weights back bit for bit. Genes: one
    per block (1), attention and MLP per block (2), or one per matrix (genes_per_block = matrices per block)."""
    criterion = "sparsegpt"

    def __init__(self, model: nn.Module, database: LevelDatabase, genes_per_block: int = 1):
        self.model, self.database = model, database
        self.set_layout(genes_per_block)
        if not database.complete():
            raise EvopruneError(f"the level database {database.path} is incomplete (blocks "
                                f"{database.missing_blocks()} missing): run evoprune.levels.build again to finish it.")
        if database.identity["weights"] != weights_hash(model):
            raise EvopruneError(f"the level database {database.path} was built for other weights: build one for this "
                                "dense model.")
        self.grid = database.grid
        self.dense = [m.weight.data.clone() for m in self.matrices]
        self.levels = [0] * len(self.matrices)
        self.removed = [0] * len(self.matrices)
        self.genome = [0.0] * self.n_genes

    def apply(self, genome) -> None:
        """Prune to a genome of grid levels (one per gene, or one number for all); other rates are refused."""
        genome = check_genome(genome, self.n_genes, self.grid[-1])
        gene_levels = [level_of(g, self.grid) for g in genome]
        self.set_levels([gene_levels[self.gene_of(m)] for m in self.matrices])
        self.genome = [self.grid[k] for k in gene_levels]

    @torch.no_grad()
    def set_levels(self, levels: Sequence[int]) -> None:
        """Matrix i to level index ``levels[i]``; only matrices whose level changes are copied."""
        for i, (m, k) in enumerate(zip(self.matrices, levels)):
            if k != self.levels[i]:
                m.weight.data.copy_(self.dense[i] if k == 0 else self.database.level(m.name, k))
                self.levels[i], self.removed[i] = k, count_for(self.grid[k], m.numel)
        self.genome = self.rates_of(self.removed)

    def set_counts(self, counts: Sequence[int]) -> None:
        """Per-matrix removal counts, each of which must be a level's count."""
        levels = []
        for m, c in zip(self.matrices, counts):
            matching = [k for k, r in enumerate(self.grid) if count_for(r, m.numel) == c]
            if not matching:
                raise EvopruneError(f"{m.name}: removing {c} weights is no level of the sparsegpt database.")
            levels.append(matching[0])
        self.set_levels(levels)

    def on(self, model: nn.Module) -> "LevelPruner":
        twin = super().on(model)
        twin.levels = list(self.levels)
        return twin
