import pytest

from evoprune import EvopruneError
from evoprune.models import load_model, parameter_counts, tiny_gpt2


def test_tiny_gpt2_is_deterministic_and_needs_no_download():
    a, b = tiny_gpt2(), tiny_gpt2()
    assert a.weights_hash == b.weights_hash
    ids = a.tokenizer("héllo", return_tensors="pt")["input_ids"]
    assert a.tokenizer.decode(ids[0]) == "héllo"


def test_parameter_counts_of_tiny_gpt2():
    counts = parameter_counts(tiny_gpt2().model)
    per_block = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64
    assert counts["prunable"] == 12 * per_block
    assert counts["n_blocks"] == 12
    assert counts["total"] == counts["prunable"] + counts["embeddings_and_head"] + counts["other"]


def test_unknown_model_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvopruneError, match="smollm2-135m"):
        load_model("no-such-org/no-such-model")


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(EvopruneError, match="not a loadable"):
        load_model(str(tmp_path))


def test_gpt2_small_counts_behind_the_readme_sparsity_note():
    """README: 45% of GPT-2's block matrices is about 30.7% of its 124.4M parameters (built from the config of
    `gpt2`, no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    counts = parameter_counts(GPT2LMHeadModel(GPT2Config()))
    assert round(counts["total"] / 1e6, 1) == 124.4
    assert round(0.45 * counts["prunable"] / counts["total"], 3) == 0.307
