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


WINDOWS = 1  # of 1024 tokens: the test runs four passes over it, seconds each on a 2-core CPU


def straightforward_ppl(model, ids, n_windows=WINDOWS, seq_len=1024):
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
    wins = perplexity.windows(ids, 1024, WINDOWS)
    dense = perplexity.primary(model, wins).ppl
    pruner.apply(0.45)
    pruned = perplexity.primary(model, wins).ppl
    pruner.restore()

    assert dense == pytest.approx(straightforward_ppl(model, ids), rel=0.01)
    threshold_prune(model, 0.45)
    assert pruned == pytest.approx(straightforward_ppl(model, ids), rel=0.01)
    assert dense == pytest.approx(14.09, rel=0.005) and pruned == pytest.approx(92.73, rel=0.005)  # HF loss, 1 window


def test_bfloat16_fitness_copy_stays_within_half_a_percent_of_float32(data_dir):
    """Search fitness runs on a copy whose block matrices are stored in bf16 (Pruner.in_dtype) under autocast;
    issue 7 allows 0.5% from float32 on the same tokens. Checked dense and at 45%, where bf16 drifts most, on one
    short window: on CPUs without native bf16 (AVX2 only) bf16 matmuls are emulated and ~80x slower."""
    loaded = load_model("smollm2-135m")
    wins = perplexity.windows(load_tokens(loaded.tokenizer, data_dir, "validation").ids, 256, 1)
    pruner = Pruner(loaded.model)
    fast = pruner.in_dtype(torch.bfloat16)
    for rate in (0.0, 0.45):
        pruner.apply(rate)
        fast.apply(rate)
        fp32 = perplexity.primary(loaded.model, wins).ppl
        assert perplexity.primary(fast.model, wins, dtype=torch.bfloat16).ppl == pytest.approx(fp32, rel=0.005)
