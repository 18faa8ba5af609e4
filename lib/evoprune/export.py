"""Save a pruned model as a Hugging Face model directory: ``dense`` (safetensors, the zeros stored as they are; the
default) or ``compressed``, compressed-tensors' ``sparse-bitmask`` format, where each pruned block matrix is stored
as its nonzero values, a bitmask of where they sit (one bit per weight) and its shape. At rate r a float32 matrix
then takes (1 - r) * 4 + 1/8 bytes per weight instead of 4.

The compressed directory's ``config.json`` describes the format as compressed-tensors writes it
(``quantization_config.sparsity_config``, built with the ``compressed-tensors`` package, the ``export`` extra).
compressed-tensors 0.20 and transformers 5 no longer decompress this format when loading (a plain
``from_pretrained`` would skip the compressed matrices and initialise them at random), so the weights file is named
``sparse-bitmask*.safetensors``, which ``from_pretrained`` refuses to load; reload it with ``load_compressed``
(``from_config`` plus the decompressed weights), which gives logits identical to the dense export's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evoprune import EvopruneError
from evoprune.models import plain_weights, prunable_matrices

FORMATS = ("dense", "compressed")
SPARSE_BITMASK = "sparse-bitmask"
PARTS = ("compressed", "bitmask", "shape", "row_offsets")  # compressed-tensors' names for a weight's tensors


def check_new(out: str | Path) -> Path:
    """``--out`` of an export must be new or empty (``outlock.hold`` makes it and holds it for the export)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvopruneError(f"--out {out} is not an empty directory: give a new directory.")
    return out


def bytes_on_disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).iterdir() if f.is_file())


def export(model: nn.Module, out_dir: str | Path, tokenizer=None, format: str = "dense") -> dict:
    """Save ``model`` (zeros and removed blocks as they are) in ``format`` (``FORMATS``) to ``out_dir``."""
    if format not in FORMATS:
        raise EvopruneError(f"unknown --format {format!r}: use dense or compressed.")
    out_dir = Path(out_dir)
    model = plain_weights(model)
    if format == "dense":
        model.save_pretrained(out_dir)
    else:
        save_compressed(model, out_dir)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(out_dir)
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"dir": str(out_dir), "format": format, "parameters": sum(p.numel() for p in model.parameters()),
            "nonzero_parameters": nonzero, "bytes_on_disk": bytes_on_disk(out_dir)}


# --- the sparse-bitmask format ------------------------------------------------------------------------------

def bitmask_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 2-D weight as compressed-tensors' sparse-bitmask parts: the nonzero values in row order, the mask packed
    eight weights a byte along each row (little-endian bits), the shape, and where each row's values start."""
    weight = weight.detach().cpu()
    mask = weight != 0
    counts = mask.sum(dim=-1)
    return {"compressed": weight[mask].contiguous(),
            "bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
            "shape": torch.tensor(list(weight.shape)), "row_offsets": torch.cumsum(counts, 0) - counts}


def bitmask_decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = [int(n) for n in parts["shape"]]
    mask = np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=shape[-1], bitorder="little").astype(bool)
    dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
    dense[torch.from_numpy(mask)] = parts["compressed"]
    return dense


def sparsity_config(model: nn.Module, targets: list[str]) -> dict:
    """The ``quantization_config`` compressed-tensors writes for a sparse-bitmask model."""
    try:
        import compressed_tensors
        from compressed_tensors.config import BitmaskConfig
    except ImportError:
        raise EvopruneError("--format compressed needs the compressed-tensors package: run "
                            "`pip install -e .[export]` (or `pip install compressed-tensors`), or export with "
                            "--format dense.") from None
    matrices = prunable_matrices(model)
    zeros = sum(m.numel - int(torch.count_nonzero(m.weight)) for m in matrices)
    config = BitmaskConfig(targets=targets, global_sparsity=zeros / sum(m.numel for m in matrices),
                           sparsity_structure="unstructured")
    return {"quant_method": "compressed-tensors", "format": SPARSE_BITMASK, "version": compressed_tensors.__version__,
            "sparsity_config": config.model_dump()}


def save_compressed(model: nn.Module, out_dir: Path) -> None:
    """Every pruned block matrix in the sparse-bitmask format; everything else (embeddings, norms, biases) dense."""
    names = [f"{m.name}.weight" for m in prunable_matrices(model)]
    config = sparsity_config(model, names)
    state = model.state_dict()
    for name in names:
        state.update({f"{name}.{part}": tensor for part, tensor in bitmask_compress(state.pop(name)).items()})
    model.save_pretrained(out_dir, state_dict=state)
    for file in out_dir.glob("model*.safetensors*"):  # a plain from_pretrained must fail, not load random weights
        file.rename(file.with_name(file.name.replace("model", "sparse-bitmask", 1)))
    config_file = out_dir / "config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "quantization_config": config}, indent=2, sort_keys=True))


def decompressed_state(out_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    state = {}
    for shard in sorted(Path(out_dir).glob("*.safetensors")):
        state.update(load_file(shard))
    for name in [n.removesuffix(".compressed") for n in state if n.endswith(".compressed")]:
        state[name] = bitmask_decompress({part: state.pop(f"{name}.{part}") for part in PARTS})
    return state


def load_compressed(out_dir: str | Path) -> nn.Module:
    """A model saved by ``export(..., format="compressed")``, its weights decompressed (in the saved dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(out_dir)
    if getattr(config, "quantization_config", {}).get("format") != SPARSE_BITMASK:
        raise EvopruneError(f"{out_dir} is not a sparse-bitmask export: load it with "
                            f"AutoModelForCausalLM.from_pretrained.")
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=config.dtype)
    missing, unexpected = model.load_state_dict(decompressed_state(out_dir), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise EvopruneError(f"{out_dir} does not match its config: missing {sorted(set(missing) - tied)[:3]}, "
                            f"unexpected {unexpected[:3]}.")
    model.tie_weights()
    return model.eval()
