import math

import pytest
import torch

from evoprune import perplexity
from evoprune.models import tiny_gpt2


def uniform_model():
    """tiny-gpt2 with a zero (tied) embedding: every logit is 0, so every next-token distribution is uniform."""
    model = tiny_gpt2().model
    model.transformer.wte.weight.data.zero_()
    return model


def random_ids(n, vocab=257, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("protocol", perplexity.PROTOCOLS)
def test_uniform_logits_give_vocabulary_size(protocol):
    result = perplexity.measure(uniform_model(), random_ids(4096), protocol, seq_len=256, max_windows=6, stride=128)
    assert result.ppl == pytest.approx(257, rel=1e-5)


def test_stride_equal_to_seq_len_equals_non_overlapping():
    model, ids = tiny_gpt2().model, random_ids(128 * 6)
    plain = perplexity.measure(model, ids, "primary", seq_len=128)
    strided = perplexity.measure(model, ids, "sliding", seq_len=128, stride=128)
    assert (strided.n_windows, strided.n_tokens) == (plain.n_windows, plain.n_tokens) == (6, 6 * 127)
    assert strided.ppl == pytest.approx(plain.ppl, rel=1e-6)


def test_sliding_scores_every_token_once():
    result = perplexity.measure(tiny_gpt2().model, random_ids(1000), "sliding", seq_len=256, stride=100)
    assert result.n_tokens == 999  # each token after the first is predicted exactly once


def test_primary_drops_tail_and_counts_predictions():
    result = perplexity.measure(tiny_gpt2().model, random_ids(1000), "primary", seq_len=256)
    assert (result.n_windows, result.n_tokens) == (3, 3 * 255)


def test_study_windows_are_seeded_full_and_on_the_stride():
    ids = torch.arange(20_000)
    wins = perplexity.study_windows(ids, seq_len=1024, stride=512, n=16, seed=365)
    assert wins.shape == (16, 1024)
    assert all(int(w[0]) % 512 == 0 and int(w[-1]) - int(w[0]) == 1023 for w in wins)
    assert torch.equal(wins, perplexity.study_windows(ids, 1024, 512, 16, 365))
    assert not torch.equal(wins, perplexity.study_windows(ids, 1024, 512, 16, 366))


def test_study_protocol_is_exp_of_mean_window_loss():
    model, wins = tiny_gpt2().model, random_ids(128 * 4).view(4, 128)
    losses = [torch.nn.functional.cross_entropy(model(w[None]).logits[0, :-1], w[1:]).item() for w in wins]
    assert perplexity.study(model, wins).ppl == pytest.approx(math.exp(sum(losses) / 4), rel=1e-5)


def test_batching_does_not_change_the_result():
    model, wins = tiny_gpt2().model, random_ids(128 * 5).view(5, 128)
    assert perplexity.primary(model, wins, batch_size=1).ppl == pytest.approx(
        perplexity.primary(model, wins, batch_size=4).ppl, rel=1e-6)


def test_bfloat16_is_close_to_float32():
    model, wins = tiny_gpt2().model, random_ids(256 * 2).view(2, 256)
    fp32 = perplexity.primary(model, wins).ppl
    assert perplexity.primary(model, wins, dtype=torch.bfloat16).ppl == pytest.approx(fp32, rel=0.02)


def test_measurement_log_reads_back_the_same_measurement_only(tmp_path, monkeypatch):
    """A logged perplexity is read back for the same pruned state and measured anew for any other state; a line
    cut short by a kill is measured again."""
    from evoprune.data import Tokens
    from evoprune.measurements import MeasurementLog
    from evoprune.session import Session
    session = Session("tiny-gpt2")
    session._tokens["test"] = Tokens(random_ids(128 * 4), "random", "test", "sha")
    path = tmp_path / "measurements.jsonl"
    calls = []
    measure = perplexity.measure
    monkeypatch.setattr(perplexity, "measure", lambda *a, **k: calls.append(1) or measure(*a, **k))

    def logged(log, rate):
        session.log = log
        return session.measure(session.apply(rate), "primary", 2, seq_len=128)

    first = logged(MeasurementLog(path), 0.3)
    assert logged(MeasurementLog(path), 0.3) == first and len(calls) == 1
    assert logged(MeasurementLog(path), 0.5).ppl != first.ppl and len(calls) == 2
    assert logged(MeasurementLog(None), 0.3) == first and len(calls) == 3  # no log: always measured
    with path.open("a") as f:
        f.write('{"key": "cut sh')
    assert logged(MeasurementLog(path), 0.5).ppl > first.ppl and len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_head_loss_equals_whole_row_cross_entropy(monkeypatch, dtype):
    """The LM-head tiles (several row and vocabulary tiles, a ragged last one, a bias) give each target's NLL as
    whole-row cross-entropy over the same logits does, up to float32 rounding."""
    monkeypatch.setattr(perplexity, "NLL_TILE", (7, 50))  # 257-entry vocabulary: 6 tiles, the last of 7 entries
    model = tiny_gpt2().model
    model.lm_head.bias = torch.nn.Parameter(torch.randn(257))
    batch = random_ids(3 * 40).view(3, 40)
    with torch.inference_mode():
        hidden = perplexity.final_hidden(model, batch, dtype)
        targets = batch[:, 1:].reshape(-1)
        tiled = perplexity.head_nll(model, hidden, targets, dtype)
        whole = torch.cat([torch.nn.functional.cross_entropy(logits, targets[start: start + len(logits)],
                                                             reduction="none")
                           for start, logits in perplexity.chunk_logits(model, hidden, dtype)])
    assert tiled.shape == whole.shape == (3 * 39,)
    assert torch.allclose(tiled, whole, rtol=1e-5, atol=1e-5)


def test_final_hidden_states_hold_no_autograd_graph_even_outside_inference_mode():
    """KL's dense reference is kept across a generation's stages: with a graph, each sample held every block's
    activations (GBs on SmolLM2)."""
    model = tiny_gpt2().model
    assert any(p.requires_grad for p in model.parameters())
    hidden = perplexity.final_hidden(model, random_ids(64).view(2, 32), torch.float32)
    assert hidden.shape == (2, 31, model.config.n_embd) and not hidden.requires_grad and hidden.grad_fn is None
