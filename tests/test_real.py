"""The pretrained SmolLM2-135M on the local raw WikiText-2 test split, checked against an independent
straightforward computation (Hugging Face's own loss, threshold pruning) and the reference values."""
import math

import pytest
import torch

from evoprune import perplexity
from evoprune.data import load_tokens
from evoprune.models import load_model, prunable_matrices
from evoprune.pruning import Pruner

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2(data_dir):
    loaded = load_model("smollm2-135m")
    tokens = load_tokens(loaded.tokenizer, data_dir, "test")
    return loaded.model, tokens.ids


def straightforward_ppl(model, ids, n_windows=4, seq_len=1024):
    with torch.no_grad():
        losses = [model(w[None], labels=w[None]).loss.item() for w in ids[: n_windows * seq_len].view(-1, seq_len)]
    return math.exp(sum(losses) / len(losses))  # equal-length windows: mean of means = overall mean


def threshold_prune(model, rate):
    for m in prunable_matrices(model):
        w = m.weight.data
        k = int(rate * w.numel())
        w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0


def test_token_count_matches_reference(smollm2):
    assert smollm2[1].numel() == 304_986


def test_dense_and_uniform_45_match_independent_computation(smollm2):
    model, ids = smollm2
    pruner = Pruner(model)
    wins = perplexity.windows(ids, 1024, 4)
    dense = perplexity.primary(model, wins).ppl
    pruner.apply(0.45)
    pruned = perplexity.primary(model, wins).ppl
    pruner.restore()

    assert dense == pytest.approx(straightforward_ppl(model, ids), rel=0.01)
    threshold_prune(model, 0.45)
    assert pruned == pytest.approx(straightforward_ppl(model, ids), rel=0.01)
    assert dense == pytest.approx(23.08, rel=0.005) and pruned == pytest.approx(131.2, rel=0.005)
