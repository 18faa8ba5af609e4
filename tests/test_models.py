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
