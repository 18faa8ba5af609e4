import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evoprune import EvopruneError, models, private_tmp
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


def attention_inputs(dtype, heads=6, kv_heads=2, length=300, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, h, length, dim, generator=gen).to(dtype) for h in (heads, kv_heads, kv_heads))
    return q, k + 3.0, v  # a shared offset in the keys, as real models have: centring must not change the result


class GroupedAttention(torch.nn.Module):
    is_causal, num_key_value_groups = True, 3


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_blocked_causal_attention_matches_sdpa(dtype, tolerance):
    """300 positions: blocks of 128 plus a partial one; 6 query heads over 2 KV heads (grouped queries)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    q, k, v = attention_inputs(dtype)
    reference, _ = sdpa_attention_forward(GroupedAttention(), q.float(), k.float(), v.float(), None)
    blocked, _ = models.blocked_causal_attention(GroupedAttention(), q, k, v, None)
    assert blocked.shape == reference.shape == (2, 300, 6, 16) and blocked.dtype == dtype
    assert torch.allclose(blocked.float(), reference, atol=tolerance, rtol=0)


def test_blocked_attention_leaves_masked_input_to_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    q, k, v = attention_inputs(torch.float32, length=40)
    mask = torch.ones(40, 40, dtype=torch.bool).tril().view(1, 1, 40, 40).clone()
    mask[..., :5] = False  # padding at the start: not plain causal
    mask[..., torch.arange(5), torch.arange(5)] = True
    expected, _ = sdpa_attention_forward(GroupedAttention(), q, k, v, mask)
    got, _ = models.blocked_causal_attention(GroupedAttention(), q, k, v, mask)
    assert torch.equal(got, expected)


def test_each_process_writes_cache_files_under_its_own_scratch_name():
    # pytest workers and worker pools fill one cache at once: a shared scratch name let one process
    # rename another's half-written file away (the CI failure of stop 22)
    target = Path("data/cache/tokens/t.pt")
    child = subprocess.run([sys.executable, "-c", "from pathlib import Path; from evoprune import private_tmp;"
                            f"print(private_tmp(Path('{target}')))"], capture_output=True, text=True, check=True)
    mine = private_tmp(target)
    assert mine.parent == target.parent and mine != target
    assert Path(child.stdout.strip()) != mine
