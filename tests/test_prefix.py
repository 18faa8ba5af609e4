import pytest
import torch

from evoprune import EvopruneError, perplexity
from evoprune.models import tiny_gpt2, tiny_llama
from evoprune.prefix import PrefixScorer, block_state, genome_counts, scoring_order
from evoprune.pruning import Pruner

BUILDS = {"gpt2": (lambda: tiny_gpt2(n_layer=6).model, 257), "llama": (lambda: tiny_llama(n_layer=4), 64)}


def windows(vocab, n=3, length=48, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def scorer_for(arch, dtype=torch.float32, genes_per_block=1, every=1, **options):
    build, vocab = BUILDS[arch]
    pruner = Pruner(build(), genes_per_block=genes_per_block).in_dtype(dtype)
    return PrefixScorer(pruner, every=every, **options), vocab


def check(scorer, genome, batch, dtype, start):
    """Scores ``genome`` with reuse, expects the run to start at block ``start`` and the NLL of a full forward."""
    scorer.pruner.apply(genome)
    before = scorer.blocks_run
    reused = perplexity.token_nll(scorer.model, batch, dtype, scorer.final_hidden)
    assert scorer.blocks_run - before == scorer.n_blocks - start
    assert torch.equal(reused, perplexity.token_nll(scorer.model, batch, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16-copy"])
@pytest.mark.parametrize("arch", BUILDS)
def test_children_equal_full_evaluation_bit_for_bit(arch, dtype):
    scorer, vocab = scorer_for(arch, dtype)
    batch, n = windows(vocab), scorer.n_blocks
    parent = [0.3 + 0.05 * b for b in range(n)]
    check(scorer, parent, batch, dtype, start=0)
    check(scorer, [0.6] + parent[1:], batch, dtype, start=0)              # changed at block 0
    check(scorer, parent[:-1] + [0.1], batch, dtype, start=n - 1)         # changed at the last block
    check(scorer, parent[:2] + [0.0, 0.7] + parent[4:], batch, dtype, start=2)
    check(scorer, parent, batch, dtype, start=n)                          # unchanged: only norm and head run
    assert scorer.saved_fraction > 0


def test_two_genes_per_block_must_both_match():
    scorer, vocab = scorer_for("llama", genes_per_block=2)
    batch = windows(vocab)
    parent = [0.4] * scorer.pruner.n_genes
    check(scorer, parent, batch, torch.float32, start=0)
    mlp_of_block_2 = parent.copy()
    mlp_of_block_2[2 * 2 + 1] = 0.6
    check(scorer, mlp_of_block_2, batch, torch.float32, start=2)


def test_other_windows_or_dtype_are_not_reused():
    scorer, vocab = scorer_for("gpt2")
    genome = [0.5] * scorer.n_blocks
    check(scorer, genome, windows(vocab, seed=0), torch.float32, start=0)
    check(scorer, genome, windows(vocab, seed=1), torch.float32, start=0)
    check(scorer, genome, windows(vocab, seed=0), torch.bfloat16, start=0)
    check(scorer, genome, windows(vocab, seed=0), torch.float32, start=scorer.n_blocks)


def test_every_kth_boundary():
    scorer, vocab = scorer_for("gpt2", every=4)
    batch, n = windows(vocab), scorer.n_blocks
    parent = [0.5] * n
    check(scorer, parent, batch, torch.float32, start=0)
    assert sorted(next(iter(scorer.entries.values()))) == [4, n]
    check(scorer, parent[:5] + [0.2], batch, torch.float32, start=4)  # first change at 5: boundary 4 is kept
    check(scorer, parent[:3] + [0.2] + parent[4:], batch, torch.float32, start=0)


def test_memory_budget():
    scorer, vocab = scorer_for("gpt2")
    batch, n = windows(vocab), scorer.n_blocks
    boundary = batch.numel() * scorer.model.config.n_embd * 4
    scorer.max_bytes = n * boundary  # room for one genome's boundaries
    parent = [0.5] * n
    check(scorer, parent, batch, torch.float32, start=0)
    for b in range(1, n):  # children of the parent are not kept: the parent stays
        check(scorer, parent[:b] + [0.1] + parent[b + 1:], batch, torch.float32, start=b)
        assert scorer.cached_bytes() == scorer.max_bytes and len(scorer.entries) == 1
    other = [0.1] + parent[1:]
    check(scorer, other, batch, torch.float32, start=0)  # a new root replaces the parent
    check(scorer, other, batch, torch.float32, start=n)
    scorer.max_bytes = boundary  # too small for any run's boundaries: nothing is stored or dropped
    check(scorer, parent, batch, torch.float32, start=0)
    check(scorer, other, batch, torch.float32, start=n)


def test_scoring_order_runs_each_prefix_once():
    scorer, vocab = scorer_for("gpt2")
    batch, n = windows(vocab), scorer.n_blocks
    gen = torch.Generator().manual_seed(3)
    parent = [0.5] * n
    genomes = [parent] + [[0.2 if torch.rand(1, generator=gen) < 0.3 else g for g in parent] for _ in range(8)]
    scorer.max_bytes = 2 * n * batch.numel() * scorer.model.config.n_embd * 4  # two genomes
    for i in scoring_order(scorer.pruner, genomes):
        scorer.pruner.apply(genomes[i])
        perplexity.token_nll(scorer.model, batch, hidden=scorer.final_hidden)
    states = {block_state(scorer.pruner, genome_counts(scorer.pruner, g)) for g in genomes}
    assert scorer.blocks_run == len({s[: b + 1] for s in states for b in range(n)})


@pytest.mark.parametrize("arch", BUILDS)
def test_perplexity_and_final_hidden_drop_ins(arch):
    scorer, vocab = scorer_for(arch)
    wins = windows(vocab, n=5)
    for genome in ([0.4] * scorer.n_blocks, [0.4] * (scorer.n_blocks - 1) + [0.8]):
        scorer.pruner.apply(genome)
        for protocol in ("primary", "study"):
            expected = getattr(perplexity, protocol)(scorer.model, wins, 2)
            assert getattr(perplexity, protocol)(scorer.model, wins, 2, hidden=scorer.final_hidden) == expected
        with torch.inference_mode():
            full = perplexity.final_hidden(scorer.model, wins[:2], torch.float32)
        assert torch.equal(scorer.final_hidden(scorer.model, wins[:2], torch.float32), full)


def test_other_model_refused():
    scorer, vocab = scorer_for("gpt2")
    with pytest.raises(EvopruneError, match="its pruner's model"):
        scorer.final_hidden(tiny_gpt2(n_layer=6).model, windows(vocab), torch.float32)


def test_child_reuses_the_sibling_it_shares_most_with():
    scorer, vocab = scorer_for("gpt2")
    batch, n = windows(vocab), scorer.n_blocks
    parent = [0.5] * n
    first = parent[:2] + [0.2] + parent[3:]
    check(scorer, parent, batch, torch.float32, start=0)
    check(scorer, first, batch, torch.float32, start=2)
    check(scorer, first[:4] + [0.7] + first[5:], batch, torch.float32, start=4)  # from the sibling, not the parent
    assert block_state(scorer.pruner, genome_counts(scorer.pruner, first[:4] + [0.7] + first[5:])) == scorer.state()
