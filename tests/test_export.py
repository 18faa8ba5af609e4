"""Export: the dense directory and the compressed-tensors sparse-bitmask one reload to the same logits, and the
compressed one is smaller by what the zeros took."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune import EvopruneError
from evoprune.cli import main
from evoprune.export import bitmask_compress, bitmask_decompress, export, load_compressed
from evoprune.models import prunable_matrices, tiny_gpt2, tiny_llama

pytest.importorskip("compressed_tensors")


def pruned(make, rate: float, dtype: torch.dtype):
    model = make().to(dtype)
    for matrix in prunable_matrices(model):
        w = matrix.weight.data
        w[w.abs() <= w.abs().float().quantile(rate).to(dtype)] = 0
    return model


@pytest.mark.parametrize("shape", [(5, 13), (8, 8), (1, 1)])
def test_bitmask_round_trip_is_exact(shape):
    weight = torch.randn(shape)
    weight[torch.rand(shape) < 0.6] = 0
    parts = bitmask_compress(weight)
    assert parts["compressed"].numel() == int(torch.count_nonzero(weight))
    assert parts["bitmask"].shape == (shape[0], (shape[1] + 7) // 8) and parts["bitmask"].dtype == torch.uint8
    assert torch.equal(bitmask_decompress(parts), weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("make", [lambda: tiny_gpt2().model, tiny_llama], ids=["gpt2", "llama"])
def test_compressed_reloads_to_the_dense_exports_logits(tmp_path, make, dtype):
    model = pruned(make, 0.7, dtype)
    dense = export(model, tmp_path / "dense")
    compressed = export(model, tmp_path / "compressed", format="compressed")
    assert compressed["nonzero_parameters"] == dense["nonzero_parameters"]
    assert compressed["bytes_on_disk"] < 0.75 * dense["bytes_on_disk"]
    config = json.loads((tmp_path / "compressed" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "sparse-bitmask"
    assert config["sparsity_config"]["format"] == "sparse-bitmask"
    assert config["sparsity_config"]["global_sparsity"] == pytest.approx(0.7, abs=0.01)
    ids = torch.arange(48).remainder(model.config.vocab_size).view(1, -1)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    reloaded = load_compressed(tmp_path / "compressed")
    assert next(reloaded.parameters()).dtype == dtype
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, reference(ids).logits)
        if dtype == torch.float32:  # a model cast to bfloat16 in memory has its rotary table in bfloat16 too
            assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_a_plain_from_pretrained_refuses_the_compressed_directory_instead_of_random_weights(tmp_path):
    export(pruned(tiny_llama, 0.5, torch.float32), tmp_path / "compressed", format="compressed")
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(tmp_path / "compressed")
    assert load_compressed(tmp_path / "compressed") is not None


def test_a_dense_directory_is_not_read_as_compressed(tmp_path):
    export(tiny_llama(), tmp_path / "dense")
    with pytest.raises(EvopruneError, match="not a sparse-bitmask export"):
        load_compressed(tmp_path / "dense")


def test_export_command_writes_the_compressed_format(capsys, data_dir, tmp_path):
    args = ["export", "--model", "tiny-gpt2", "--data", data_dir, "--rates", "0.7", "--remove-blocks", "3"]
    assert main([*args, "--out", str(tmp_path / "dense")]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert main([*args, "--format", "compressed", "--out", str(tmp_path / "small")]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["format"] == "compressed" and small["bytes_on_disk"] < dense["bytes_on_disk"]
    ids = torch.arange(64).view(1, -1)
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "small")(ids).logits,
                           AutoModelForCausalLM.from_pretrained(tmp_path / "dense")(ids).logits)


def test_bad_format_leaves_nothing(capsys, tmp_path):
    assert main(["export", "--model", "tiny-gpt2", "--format", "zip", "--out", str(tmp_path / "m")]) == 2
    assert "unknown --format 'zip'" in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.mark.real
def test_smollm2_at_70_percent_compresses_to_at_most_six_tenths(tmp_path):
    from evoprune.models import load_model
    model = load_model("smollm2-135m").model
    for matrix in prunable_matrices(model):
        w = matrix.weight.data
        w[w.abs() <= w.abs().quantile(0.7)] = 0
    dense = export(model, tmp_path / "dense")
    compressed = export(model, tmp_path / "compressed", format="compressed")
    assert compressed["bytes_on_disk"] <= 0.6 * dense["bytes_on_disk"]
    ids = torch.arange(128).view(1, -1)
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "compressed")(ids).logits, model(ids).logits)
