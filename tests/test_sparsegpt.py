"""SparseGPT against a plain column-by-column OBS reference, and the level database: build, reuse, resume,
identity, apply/undo bit for bit, the genome -> level rule, for GPT-2 Conv1D and Llama layouts."""
import numpy as np
import pytest
import torch

from evoprune import EvopruneError, levels
from evoprune.grid import move_levels, snap_to_grid
from evoprune.levels import LevelDatabase, LevelPruner, build
from evoprune.models import prunable_matrices, tiny_gpt2, tiny_llama
from evoprune.pruning import count_for
from evoprune.sparsegpt import HessianHooks, block_counts, block_masks, prune, prune_levels, prune_sequential

GRID = (0.0, 0.25, 0.5, 0.75)


def reference_obs(w, h, sparsity, blocksize, percdamp=0.01):
    """The published algorithm written plainly in float64: for every column, the exact inverse of the dampened
    Hessian over the columns not yet processed (no Cholesky, no lazy block updates); the mask of a column block
    is chosen at its start by w^2 / [H_F^-1]_ii, with the block's exact share of the count."""
    w, h = w.double().clone(), h.double().clone()
    h.diagonal().add_(percdamp * h.diagonal().mean())
    rows, cols = w.shape
    mask = torch.zeros_like(w, dtype=torch.bool)
    for b, start in enumerate(range(0, cols, blocksize)):
        end = min(start + blocksize, cols)
        diag = torch.stack([torch.linalg.inv(h[i:, i:])[0, 0] for i in range(start, end)])
        scores = (w[:, start:end] ** 2 / diag).flatten()
        chosen = torch.zeros(scores.numel(), dtype=torch.bool)
        chosen[scores.argsort(stable=True)[: block_counts(sparsity, rows, cols, blocksize)[b]]] = True
        mask[:, start:end] = chosen.view(rows, -1)
        for i in range(start, end):
            inverse = torch.linalg.inv(h[i:, i:])
            q = w[:, i].masked_fill(mask[:, i], 0.0)
            w[:, i:] -= ((w[:, i] - q) / inverse[0, 0]).unsqueeze(1) * inverse[0]
            w[:, i] = q
    return w


def layer(rows=12, cols=40, tokens=300, seed=0):
    """A weight and correlated inputs with a few loud features, as in language models."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g)
    x[:, :3] *= 10
    return torch.randn(rows, cols, generator=g), x


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("blocksize", [16, 128])
def test_blocked_reconstruction_equals_plain_obs(sparsity, blocksize):
    w, x = layer()
    h = 2 / len(x) * x.t() @ x
    expected = reference_obs(w, h, sparsity, blocksize)
    got64 = prune(w.double(), h.double(), sparsity, blocksize)
    got32 = prune(w, h, sparsity, blocksize)
    assert torch.equal(got64 == 0, expected == 0)
    torch.testing.assert_close(got64, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-3, atol=1e-3)
    assert int((got32 == 0).sum()) == count_for(sparsity, w.numel())


def test_dead_inputs_are_pruned_first_and_levels_share_one_pass():
    w, x = layer()
    x[:, 7] = 0  # an input no token reaches
    h = 2 / len(x) * x.t() @ x
    stacked = prune_levels(w, h, [0.0, 0.25, 0.5], 16)
    assert (stacked[1:, :, 7] == 0).all()
    assert torch.equal(stacked[0][:, [i for i in range(40) if i != 7]], w[:, [i for i in range(40) if i != 7]])
    for k, s in enumerate([0.25, 0.5], start=1):
        torch.testing.assert_close(stacked[k], prune(w, h, s, 16), rtol=1e-5, atol=1e-5)


def test_mask_takes_exact_counts_with_ties_by_position_per_level():
    wt = torch.ones(2, 2 * 3)  # a block of 2 columns, 2 levels x 3 rows, all scores equal
    wt[1, 3:] = 0.5             # level 1: column 1 scores lower
    mask = block_masks(wt, torch.ones(2), [2, 4])
    assert mask[:, :3].t().tolist() == [[True, True], [False, False], [False, False]]  # level 0: row 0 first
    assert mask[:, 3:].t().tolist() == [[True, True], [False, True], [False, True]]  # level 1: column 1, then row 0


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_reconstruction_beats_magnitude_on_layer_output_error(sparsity):
    w, x = layer(rows=32, cols=64, tokens=512, seed=1)
    h = 2 / len(x) * x.t() @ x
    magnitude = w.clone()
    magnitude.view(-1)[w.abs().flatten().argsort()[: count_for(sparsity, w.numel())]] = 0
    error = lambda v: torch.linalg.norm((w - v) @ x.t()).item()  # noqa: E731
    assert error(prune(w, h, sparsity, 16)) < 0.7 * error(magnitude)


def test_hessian_hooks_give_2_over_n_xxt_and_share_one_input():
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    matrices = [m for m in prunable_matrices(model) if m.block == 1]
    captured = {}
    handle = model.get_submodule(matrices[0].name).register_forward_pre_hook(
        lambda mod, args: captured.update(x=args[0].reshape(-1, args[0].shape[-1]).clone()))
    with HessianHooks(model, matrices) as hooks, torch.no_grad():
        model(ids)
    handle.remove()
    x = captured["x"]
    torch.testing.assert_close(hooks.hessian(matrices[0].name), 2 / len(x) * x.t() @ x)
    assert hooks.shares == {"model.layers.1.self_attn.k_proj": "model.layers.1.self_attn.q_proj",
                            "model.layers.1.self_attn.v_proj": "model.layers.1.self_attn.q_proj",
                            "model.layers.1.mlp.up_proj": "model.layers.1.mlp.gate_proj"}


# --- the level database --------------------------------------------------------------------------------------

def calibration(seed=0, n=4, seq_len=64, vocab=256):
    return torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tiny():
    """tiny-gpt2 (GPT-2 Conv1D layout) with 3 blocks, so databases build fast."""
    return tiny_gpt2(n_layer=3)


@pytest.fixture
def gpt2_db(tiny, tmp_path):
    return tiny.model, build(tiny.model, calibration(), GRID, tmp_path, blocksize=32, progress=False)


def test_build_is_reused_and_levels_have_exact_counts(gpt2_db, tmp_path, monkeypatch):
    model, db = gpt2_db
    assert db.complete() and db.identity["calibration_windows"] == 4 and db.identity["seq_len"] == 64
    monkeypatch.setattr(levels, "prune_levels", lambda *a, **k: pytest.fail("a finished database was rebuilt"))
    again = build(model, calibration(), GRID, tmp_path, blocksize=32, progress=False)
    assert again.path == db.path
    m = prunable_matrices(model)[5]
    assert db.level(m.name, 2).shape == m.weight.shape  # Conv1D layout, (in, out)
    for k in (1, 2, 3):
        assert int((db.level(m.name, k) == 0).sum()) == count_for(GRID[k], m.numel)


def test_apply_copies_levels_and_restore_is_bit_exact(gpt2_db):
    model, db = gpt2_db
    dense = [m.weight.data.clone() for m in prunable_matrices(model)]
    pruner = LevelPruner(model, db, genes_per_block=2)
    genome = [GRID[(g * 7) % 4] for g in range(pruner.n_genes)]
    pruner.apply(genome)
    assert pruner.genome == genome
    for m in pruner.matrices:
        k = GRID.index(genome[pruner.gene_of(m)])
        assert torch.equal(m.weight.data, dense[pruner.matrices.index(m)] if k == 0 else db.level(m.name, k))
    pruner.apply(0.5)
    fresh = [m.weight.data.clone() for m in pruner.matrices]
    pruner.restore()
    assert all(torch.equal(m.weight.data, d) for m, d in zip(pruner.matrices, dense))
    pruner.apply(0.5)
    assert all(torch.equal(m.weight.data, f) for m, f in zip(pruner.matrices, fresh))
    assert pruner.zeros() == sum(count_for(0.5, m.numel) for m in pruner.matrices)
    pruner.restore()


def test_bfloat16_twin_prunes_the_same_weights_and_restores(gpt2_db):
    model, db = gpt2_db
    pruner = LevelPruner(model, db).in_dtype(torch.bfloat16)
    dense = [m.weight.data.clone() for m in pruner.matrices]
    pruner.apply(0.75)
    assert pruner.removed == [count_for(0.75, m.numel) for m in pruner.matrices]
    assert all(torch.equal(m.weight.data, db.level(m.name, 3).to(torch.bfloat16)) for m in pruner.matrices)
    pruner.restore()
    assert all(torch.equal(m.weight.data, d) for m, d in zip(pruner.matrices, dense))


def test_rate_between_levels_is_refused_and_snapping_meets_the_target(gpt2_db):
    model, db = gpt2_db
    pruner = LevelPruner(model, db)
    with pytest.raises(EvopruneError, match="snap_to_grid"):
        pruner.apply(0.3)
    with pytest.raises(EvopruneError, match=r"\[0, 0.75\]"):
        pruner.apply(0.9)
    rng = np.random.default_rng(0)
    with pytest.raises(EvopruneError, match="not a level"):
        snap_to_grid([0.5] * pruner.n_genes, pruner.gene_sizes(), 0.4, GRID)
    genome = snap_to_grid(rng.uniform(0.2, 0.75, pruner.n_genes), pruner.gene_sizes(), 0.5, GRID)
    pruner.apply(genome)
    assert pruner.target_sparsity(genome) == pytest.approx(0.5, abs=1e-12)
    total = sum(m.numel for m in pruner.matrices)
    assert pruner.zeros() == sum(count_for(genome[pruner.gene_of(m)], m.numel) for m in pruner.matrices)
    assert abs(pruner.zeros() - 0.5 * total) <= 0.5 * len(pruner.matrices)
    pruner.restore()


@pytest.mark.parametrize("genes", [2, 7])
def test_snapping_with_unequal_gene_sizes_is_exact_and_level_moves_keep_it(tmp_path, genes):
    model = tiny_llama()
    db = build(model, calibration(vocab=64), GRID, tmp_path, blocksize=16, progress=False)
    pruner = LevelPruner(model, db, genes_per_block=genes)
    sizes = pruner.gene_sizes()
    assert len(set(sizes)) > 1
    rng = np.random.default_rng(1)
    for target in (0.25, 0.5):
        genome = snap_to_grid(rng.uniform(0.0, 0.75, pruner.n_genes), sizes, target, GRID)
        assert sum(s * round(g / 0.25) for s, g in zip(sizes, genome)) == round(target / 0.25) * sum(sizes)
        moved = move_levels(genome, sizes, rng, 5, GRID)
        assert moved != genome
        assert sum(s * round(g / 0.25) for s, g in zip(sizes, moved)) == round(target / 0.25) * sum(sizes)


def test_one_gene_per_llama_matrix_and_restore(tmp_path):
    model = tiny_llama()
    dense = [m.weight.data.clone() for m in prunable_matrices(model)]
    db = build(model, calibration(vocab=64), GRID, tmp_path, blocksize=16, progress=False)
    pruner = LevelPruner(model, db, genes_per_block=7)
    assert pruner.n_genes == 21 and [pruner.gene_of(m) for m in pruner.matrices] == list(range(21))
    genome = [GRID[i % 4] for i in range(21)]
    pruner.apply(genome)
    assert pruner.removed == [count_for(genome[i], m.numel) for i, m in enumerate(pruner.matrices)]
    pruner.restore()
    assert all(torch.equal(m.weight.data, d) for m, d in zip(pruner.matrices, dense))
    with pytest.raises(EvopruneError, match="genes_per_block"):
        LevelPruner(model, db, genes_per_block=3)


def test_killed_build_resumes_from_finished_blocks(tiny, tmp_path, monkeypatch):
    whole = build(tiny.model, calibration(), GRID, tmp_path / "whole", blocksize=32, progress=False)
    real_save, saved = levels.save_block, []

    def save_then_die(path, tensors):
        if len(saved) == 1:
            raise KeyboardInterrupt
        saved.append(path.name)
        real_save(path, tensors)

    monkeypatch.setattr(levels, "save_block", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build(tiny.model, calibration(), GRID, tmp_path / "killed", blocksize=32, progress=False)
    monkeypatch.setattr(levels, "save_block", lambda path, tensors: (saved.append(path.name),
                                                                     real_save(path, tensors)))
    db = build(tiny.model, calibration(), GRID, tmp_path / "killed", blocksize=32, progress=False)
    assert saved == [f"block-{b:03d}.safetensors" for b in range(3)]  # block 0 once, before the kill
    for m in prunable_matrices(tiny.model):
        assert all(torch.equal(db.level(m.name, k), whole.level(m.name, k)) for k in (1, 2, 3))


def test_other_calibration_grid_or_weights_are_not_reused(gpt2_db, tmp_path):
    model, db = gpt2_db
    other_calibration = build(model, calibration(seed=1), GRID, tmp_path, blocksize=32, progress=False)
    other_grid = build(model, calibration(), (0.0, 0.3, 0.6), tmp_path, blocksize=32, progress=False)
    assert len({db.path, other_calibration.path, other_grid.path}) == 3
    with pytest.raises(EvopruneError, match="calibration_sha256"):
        LevelDatabase(db.path, levels.identity(model, calibration(seed=1), GRID, 32))
    with pytest.raises(EvopruneError, match="grid"):
        LevelDatabase(db.path, levels.identity(model, calibration(), (0.0, 0.3, 0.6), 32))
    with pytest.raises(EvopruneError, match="grid"):
        build(model, calibration(), (0.0, 0.3, 0.5), tmp_path)
    with torch.no_grad():
        prunable_matrices(model)[0].weight[0, 0] += 1
    with pytest.raises(EvopruneError, match="other weights"):
        LevelPruner(model, db)


@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_sequential_mode_prunes_every_matrix_and_its_first_block_matches_the_database(tmp_path, layout):
    model = tiny_gpt2(n_layer=2).model if layout == "gpt2" else tiny_llama()
    ids = calibration(vocab=64)
    db = build(model, ids, GRID, tmp_path, blocksize=16, progress=False)
    prune_sequential(model, ids, 0.5, blocksize=16)
    for m in prunable_matrices(model):
        assert int((m.weight == 0).sum()) == count_for(0.5, m.numel)
        if m.block == 0:  # block 0 sees the same dense inputs in both modes
            torch.testing.assert_close(m.weight.data, db.level(m.name, 2), rtol=1e-5, atol=1e-6)
