import math

import pytest
import torch

from evoprune import EvopruneError
from evoprune.models import architecture_of, blocks, prunable_matrices, tiny_gpt2, tiny_llama
from evoprune.pruning import Pruner, count_for, ordering


def tied_weights(model, seed=0):
    """Give every prunable matrix heavily tied, non-zero values, like de-quantized GGUF weights."""
    gen = torch.Generator().manual_seed(seed)
    for m in prunable_matrices(model):
        levels = torch.randint(1, 4, m.weight.shape, generator=gen).float() / 4
        signs = torch.randint(0, 2, m.weight.shape, generator=gen).float() * 2 - 1
        m.weight.data.copy_(levels * signs)
    return model


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.45, 0.5, 1.0])
def test_exact_count_per_matrix_on_tied_weights(rate):
    model = tied_weights(tiny_gpt2().model)
    pruner = Pruner(model)
    pruner.apply(rate)
    for m in pruner.matrices:
        zeros = m.numel - int(torch.count_nonzero(m.weight))
        assert zeros == count_for(rate, m.numel), m.name
    total = sum(m.numel for m in pruner.matrices)
    assert pruner.block_sparsity() == pytest.approx(sum(count_for(rate, m.numel) for m in pruner.matrices) / total)


def test_magnitude_prunes_smallest_first():
    model = tied_weights(tiny_gpt2().model)
    pruner = Pruner(model)
    dense = [m.weight.detach().clone() for m in pruner.matrices]
    pruner.apply(0.3)
    for m, d in zip(pruner.matrices, dense):
        kept = d[m.weight != 0].abs()
        removed = d[m.weight == 0].abs()
        assert removed.max() <= kept.min()


def test_apply_undo_round_trip_is_bit_identical():
    model = tiny_gpt2().model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = Pruner(model)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        pruner.apply(torch.rand(pruner.n_genes, generator=gen).tolist())
    pruner.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_path_independence():
    """Reaching a genome through other genomes gives the same weights as applying it directly."""
    a, b = [0.1 * (i % 9) for i in range(12)], [0.5] * 12
    direct, via = Pruner(tiny_gpt2().model), Pruner(tiny_gpt2().model)
    direct.apply(a)
    via.apply(b)
    via.apply([0.9] * 12)
    via.apply(a)
    for m1, m2 in zip(direct.matrices, via.matrices):
        assert torch.equal(m1.weight, m2.weight)


def test_only_changed_genes_touch_weights():
    pruner = Pruner(tiny_gpt2().model)
    pruner.apply(0.4)
    snapshot = [m.weight.clone() for m in pruner.matrices]
    pruner.apply([0.4] * 11 + [0.6])
    for m, s in zip(pruner.matrices, snapshot):
        assert torch.equal(m.weight, s) == (m.block != 11), m.name


def test_gpt2_conv1d_orientation():
    model = tiny_gpt2().model
    c_attn = next(m for m in prunable_matrices(model) if m.name.endswith("c_attn"))
    assert c_attn.transposed and c_attn.weight.shape == (64, 192)
    assert c_attn.out_in().shape == (192, 64)
    assert torch.equal(c_attn.out_in()[5, 7], c_attn.weight[7, 5])


@pytest.mark.parametrize("transposed", [False, True])
def test_per_row_ordering_prunes_output_rows_evenly(transposed):
    out_f, in_f = 6, 10
    scores = torch.rand(out_f, in_f)
    weight = torch.ones(in_f, out_f) if transposed else torch.ones(out_f, in_f)
    order = ordering(scores, per_row=True, transposed=transposed)
    weight.view(-1)[order[:30]] = 0
    out_in = weight.t() if transposed else weight
    assert (out_in == 0).sum(dim=1).tolist() == [5] * out_f
    # within each row, exactly the lowest-scored inputs were removed
    for r in range(out_f):
        assert set(torch.nonzero(out_in[r] == 0).flatten().tolist()) == set(scores[r].argsort()[:5].tolist())


def test_blocks_found_for_both_architectures():
    gpt2, llama = tiny_gpt2().model, tiny_llama()
    assert architecture_of(gpt2).name == "gpt2" and len(blocks(gpt2)) == 12
    assert architecture_of(llama).name == "llama" and len(blocks(llama)) == 3
    assert len(prunable_matrices(gpt2)) == 12 * 4
    assert len(prunable_matrices(llama)) == 3 * 7
    assert not any(m.transposed for m in prunable_matrices(llama))


def test_llama_exact_sparsity_and_groups():
    pruner = Pruner(tied_weights(tiny_llama()), genes_per_block=2)
    assert pruner.n_genes == 6
    pruner.apply([0.2, 0.6] * 3)
    for m in pruner.matrices:
        expected = count_for(0.6 if m.group == 1 else 0.2, m.numel)
        assert m.numel - int(torch.count_nonzero(m.weight)) == expected


def test_unsupported_architecture_is_named():
    with pytest.raises(EvopruneError, match="unsupported architecture.*gpt2.*llama"):
        architecture_of(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("genome, message", [
    ([0.5] * 11, "12"), ([0.5] * 11 + [1.5], r"\[0, 1"), ([0.5] * 11 + [-0.1], r"\[0, 1"),
    ([0.5] * 11 + [math.nan], r"\[0, 1"),
])
def test_bad_rates_are_refused(genome, message):
    pruner = Pruner(tiny_gpt2().model)
    with pytest.raises(EvopruneError, match=message):
        pruner.apply(genome)
    assert pruner.block_sparsity() == 0  # nothing applied


def test_sparsity_reports():
    model = tiny_gpt2().model
    pruner = Pruner(model)
    pruner.apply(0.45)
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(m.numel for m in pruner.matrices)
    removed = sum(count_for(0.45, m.numel) for m in pruner.matrices)
    assert abs(removed - 0.45 * prunable) <= 0.5 * len(pruner.matrices)  # per-matrix rounding only
    assert pruner.block_sparsity() == removed / prunable
    assert pruner.model_sparsity() == removed / total
    assert pruner.target_sparsity([0.45] * 12) == pytest.approx(0.45)


@pytest.mark.parametrize("build", [lambda: tiny_gpt2().model, lambda: tiny_llama()])
def test_bfloat16_twin_prunes_the_same_weights(build):
    model = build()
    pruner = Pruner(model)
    pruner.apply(0.2)
    twin = pruner.in_dtype(torch.bfloat16)
    assert twin is not pruner and all(m.weight.dtype == torch.bfloat16 for m in twin.matrices)
    assert next(model.parameters()).dtype == torch.float32  # the original is left as it was
    assert pruner.in_dtype(torch.float32) is pruner and twin.in_dtype(torch.bfloat16) is twin
    matrices = {id(m.weight) for m in twin.matrices}  # what is never pruned is shared, not copied
    shared = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert all((id(t) in shared) != (id(t) in matrices) for t in [*twin.model.parameters(), *twin.model.buffers()])
    genome = [0.1 * (b % 7) for b in range(pruner.n_genes)]
    for rates in (genome, list(reversed(genome)), 0.0):  # prune, move, and restore through the twin
        pruner.apply(rates)
        twin.apply(rates)
        for fp32, bf16 in zip(pruner.matrices, twin.matrices):
            assert torch.equal(fp32.weight == 0, bf16.weight == 0)
            assert torch.equal(fp32.weight.to(torch.bfloat16), bf16.weight)


@pytest.mark.parametrize("build", [lambda: tiny_gpt2().model, lambda: tiny_llama()])
def test_bfloat16_twin_scores_like_float32(build):
    """The twin runs its own fast path (norm outputs cast once, blocked attention): same perplexity as float32 up
    to bf16 rounding, while the original model keeps SDPA attention."""
    from evoprune import perplexity
    model = build()
    pruner = Pruner(model)
    twin = pruner.in_dtype(torch.bfloat16)
    assert twin.model.config._attn_implementation != model.config._attn_implementation
    ids = torch.randint(0, model.config.vocab_size, (4, 96), generator=torch.Generator().manual_seed(0))
    for rate in (0.0, 0.4):
        pruner.apply(rate)
        twin.apply(rate)
        fp32 = perplexity.primary(model, ids).ppl
        assert perplexity.primary(twin.model, ids, dtype=torch.bfloat16).ppl == pytest.approx(fp32, rel=0.01)
