"""One rate per matrix (``--genes matrix``: four genes per GPT-2 block, seven per Llama block) beside one per block
and attention/MLP per block: pruning, detection from a genome's length, the rules, a race, and the records' views."""
import json

import pytest
import torch

from evoprune import EvopruneError, alpha, genes
from evoprune.cli import main
from evoprune.experiments import genome_table
from evoprune.models import architecture_of, prunable_matrices, tiny_gpt2, tiny_llama
from evoprune.objective import split_settings
from evoprune.plots import layer_profile
from evoprune.pruning import Pruner, count_for, genes_per_block, layout_genes
from evoprune.search_runs import rule_allocations
from evoprune.session import Session
from evoprune.stats import layer_profiles
from evoprune.strategies import project, weighted_mean

MODELS = {"gpt2": lambda: tiny_gpt2().model, "llama": tiny_llama}


def calibration(model, n=2, seq_len=16):
    return torch.randint(0, model.config.vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(0))


def matrix_pruner(arch, criterion="magnitude"):
    model = MODELS[arch]()
    per_matrix = layout_genes("matrix", model)
    return Pruner(model, criterion, per_matrix, calibration(model) if criterion == "wanda" else None)


def distinct_rates(n_genes, seed=0):
    return (torch.rand(n_genes, generator=torch.Generator().manual_seed(seed)) * 0.9).tolist()


@pytest.mark.parametrize("arch, per_block", [("gpt2", 4), ("llama", 7)])
def test_one_gene_per_matrix_in_the_blocks_order(arch, per_block):
    pruner = matrix_pruner(arch)
    assert pruner.genes_per_block == per_block and pruner.n_genes == per_block * pruner.n_blocks
    assert [pruner.gene_of(m) for m in pruner.matrices] == list(range(pruner.n_genes))
    assert pruner.gene_sizes() == [m.numel for m in pruner.matrices]
    assert sum(pruner.gene_sizes()) == sum(m.numel for m in prunable_matrices(pruner.model))
    names = architecture_of(pruner.model).matrices
    assert pruner.gene_names()[:per_block + 1] == [f"0.{n}" for n in names] + [f"1.{names[0]}"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_a_per_matrix_genome_prunes_each_matrix_to_its_rate_and_restores_bit_for_bit(arch, criterion):
    pruner = matrix_pruner(arch, criterion)
    dense = [m.weight.detach().clone() for m in pruner.matrices]
    genome = distinct_rates(pruner.n_genes)
    pruner.apply(genome)
    for m, rate in zip(pruner.matrices, genome):
        assert m.numel - int(torch.count_nonzero(m.weight)) == count_for(rate, m.numel), m.name
    pruner.restore()
    assert all(torch.equal(m.weight, d) for m, d in zip(pruner.matrices, dense))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_weighted_mean_of_a_per_matrix_genome_is_its_block_sparsity(arch):
    pruner = matrix_pruner(arch)
    sizes = pruner.gene_sizes()
    genome = project(distinct_rates(pruner.n_genes, seed=1), sizes, 0.5, 1.0).tolist()
    assert weighted_mean(genome, sizes) == pytest.approx(0.5, abs=1e-12)
    pruner.apply(genome)
    achieved = pruner.rates_of(pruner.removed)  # each matrix rounds its own count
    assert pruner.target_sparsity(achieved) == pytest.approx(pruner.block_sparsity(), abs=1e-12)
    assert abs(pruner.block_sparsity() - 0.5) <= len(sizes) / sum(sizes)


def test_a_genomes_length_names_its_layout():
    gpt2, llama = tiny_gpt2().model, tiny_llama()
    assert [genes_per_block(g, gpt2) for g in ([0.5] * 12, [0.5] * 24, [0.5] * 48, 0.5, [0.5] * 13)] == [1, 2, 4, 1, 1]
    assert [genes_per_block([0.5] * n, llama) for n in (3, 6, 21)] == [1, 2, 7]
    assert [layout_genes(layout, llama) for layout in genes.GENES] == [1, 2, 7]
    with pytest.raises(EvopruneError, match="block, group, matrix"):
        layout_genes("neuron", llama)
    with pytest.raises(EvopruneError, match="genes_per_block"):
        Pruner(llama, genes_per_block=4)


def test_alphas_per_matrix_are_each_matrixs_own():
    model = tiny_llama()
    per_matrix = alpha.block_alphas(model, genes_per_block=7)
    assert per_matrix == [alpha.matrix_alpha(m.weight) for m in prunable_matrices(model)]
    per_block = alpha.block_alphas(model)
    assert per_block[1] == pytest.approx(sum(per_matrix[7:14]) / 7)


@pytest.fixture(scope="module")
def session(data_dir):
    return Session("tiny-gpt2", data_dir)


def test_the_session_applies_a_per_matrix_genome_with_the_matrix_layout(session):
    genome = distinct_rates(48)
    pruner = session.apply(genome, "wanda")
    assert pruner.genes_per_block == 4 and pruner.genome == genome
    session.restore()
    assert pruner.zeros() == 0


def test_rules_give_each_matrix_its_blocks_rate_and_alphapruning_a_rate_per_matrix(session):
    sensitivity = [float(b % 5) for b in range(12)]
    per_block = rule_allocations(session, 0.5, "block", sensitivity)
    assert all(int(torch.count_nonzero(m.weight)) == m.numel for m in prunable_matrices(session.model))  # dense again
    per_matrix = rule_allocations(session, 0.5, "matrix", sensitivity)
    assert set(per_matrix) == {"OWL", "sensitivity", "AlphaPruning"}
    for rule in ("OWL", "sensitivity"):
        assert per_matrix[rule] == [rate for rate in per_block[rule] for _ in range(4)]
    sizes = session.pruner("magnitude", 4).gene_sizes()
    assert len(per_matrix["AlphaPruning"]) == 48
    assert weighted_mean(per_matrix["AlphaPruning"], sizes) == pytest.approx(0.5, abs=1e-9)


def test_a_race_over_matrix_genes_through_the_cli_ends_exactly_at_the_target(session, data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--model", "tiny-gpt2", "--data", data_dir, "--target", "0.5", "--strategy", "race",
                 "--genes", "matrix", "--generations", "2", "--offspring", "3", "--stages", "2", "--promote", "2",
                 "--seq-len", "128", "--test-windows", "1", "--study-windows", "0", "--dtype", "float32",
                 "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    sizes = session.pruner("magnitude", 4).gene_sizes()
    assert len(result["genome"]) == 48 and result["config"]["genes"] == "matrix"
    assert weighted_mean(result["genome"], sizes) == pytest.approx(0.5, abs=1e-9)
    assert result["test"]["block_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert {"uniform", "OWL", "AlphaPruning"} <= set(result["start"])


def test_bad_gene_layouts_are_refused_with_the_choices():
    with pytest.raises(EvopruneError, match="block, group, matrix"):
        split_settings({"model": "tiny-gpt2", "target": 0.5, "strategy": "race", "genes": "neuron"})


# --- the records' views: no model ---------------------------------------------------------------------------------

GPT2_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def test_a_per_matrix_search_gives_a_profile_per_matrix_in_the_figure_and_the_table():
    genome = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # two GPT-2 blocks, four matrices each
    row = {"run": "race-s0", "genome": genome, "test_ppl": 90.0,
           "config": {"strategy": "race", "target": 0.45, "seed": 0, "genes": "matrix"}}
    profiles = layer_profiles({"ga": [row], "parameter_counts": {"n_blocks": 2}})
    assert profiles == {f"race-s0 {name}": [[genome[i], genome[4 + i]]] for i, name in enumerate(GPT2_MATRICES)}
    assert len(layer_profile(profiles, 0.45).axes[0].lines) == 4 + 1  # a line per matrix, and uniform
    assert genome_table([row], 2) == [{"block": b, **{f"GA race-s0 {name}": genome[4 * b + i]
                                                      for i, name in enumerate(GPT2_MATRICES)}} for b in range(2)]


def test_gene_labels_and_profiles_of_every_layout():
    assert [genes.label(g, 1) for g in (0, 5)] == ["block 0", "block 5"]
    assert [genes.label(g, 2) for g in (2, 3)] == ["1.attn", "1.mlp"]
    assert genes.label(9, 7) == "1.self_attn.v_proj" and genes.label(5, 3) == "1.matrix 2"
    assert genes.profiles([[0.1, 0.2]], 2) == {"": [[0.1, 0.2]]}
    assert genes.profiles([[0.1, 0.2, 0.3, 0.4]], 2) == {"attention": [[0.1, 0.3]], "MLP": [[0.2, 0.4]]}
    with pytest.raises(EvopruneError, match="fits no gene layout"):
        genes.profiles([[0.1, 0.2, 0.3]], 2)


def test_the_panel_shows_a_row_of_matrix_sliders_per_block():
    from evoprune.widgets import PrunePanel
    model = tiny_llama()
    panel = PrunePanel(model, calibration(model), Pruner(model, genes_per_block=7), debounce_s=0, initial=[0.0] * 21)
    rows = panel.blocks.children[0].children
    names = architecture_of(model).matrices
    assert [[s.description for s in row.children] for row in rows] == [[f"{b}.{n}" for n in names] for b in range(3)]
    rows[1].children[6].value = 0.5  # block 1's down_proj
    assert panel.genome[13] == 0.5 and panel.block_sparsity() > 0
