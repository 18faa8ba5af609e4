"""The model families evoprune prunes: where each keeps its decoder blocks and which matrices of a block are pruned
(no torch, so records can be read in these terms)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """Where a family keeps its decoder blocks and which matrices in a block are pruned."""
    name: str
    blocks_path: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    transposed: bool  # GPT-2's Conv1D stores weights as (in, out)

    @property
    def matrices(self) -> tuple[str, ...]:
        """A block's prunable matrices in the order ``models.prunable_matrices`` lists them."""
        return self.attention + self.mlp


ARCHITECTURES = (
    Architecture("gpt2", "transformer.h", ("attn.c_attn", "attn.c_proj"), ("mlp.c_fc", "mlp.c_proj"), True),
    Architecture("llama", "model.layers",
                 ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
                 ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), False),
)


def block_matrix_names(count: int) -> tuple[str, ...]:
    """Names of a block's ``count`` prunable matrices: the family's with that many, else ``matrix 0``, ..."""
    known = [a.matrices for a in ARCHITECTURES if len(a.matrices) == count]
    return known[0] if len(known) == 1 else tuple(f"matrix {i}" for i in range(count))
