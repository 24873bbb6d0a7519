"""The challenge's metric, val_bpb: summed cross-entropy in bits over the UTF-8 bytes of the text.

Bytes per target token follow openai/parameter-golf `train_gpt.py::eval_val`: the piece's own
bytes plus one for its leading "▁", except right after a boundary token (BOS), so a document's
first word gets no phantom space. Sums are float64 and reduced over ranks once, at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgolf.dist import all_reduce_sum_
from pgolf.tokenizer import ByteLuts

LN2 = math.log(2.0)


def target_byte_counts(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLuts) -> torch.Tensor:
    """UTF-8 bytes each target token adds to the text; int64, shaped like the ids."""
    base = luts.base_bytes[target_ids].long()  # (...)
    space = luts.has_leading_space[target_ids] & ~luts.is_boundary[prev_ids]  # (...)
    return base + space.long()


@dataclass
class BpbTotals:
    """Running float64 sums of the metric on one device (this rank's share until `all_reduce`)."""

    nll_sum: torch.Tensor  # () float64, nats
    token_count: torch.Tensor  # () float64
    byte_count: torch.Tensor  # () float64

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> BpbTotals:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in range(3)))

    def add(self, nll: torch.Tensor, prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLuts,
            mask: torch.Tensor | None = None) -> None:
        """Accumulate per-target nll (nats, any shape like the ids) and the bytes of those targets.

        `mask` (bool, same shape) keeps only some targets without boolean indexing, which would
        make the host wait for the device on every batch.
        """
        num_bytes = target_byte_counts(prev_ids, target_ids, luts)  # (...)
        if mask is None:
            self.nll_sum += nll.double().sum()
            self.token_count += nll.numel()
        else:
            self.nll_sum += torch.where(mask, nll.double(), 0.0).sum()
            self.token_count += mask.sum()
            num_bytes = num_bytes * mask
        self.byte_count += num_bytes.sum().double()

    def all_reduce(self) -> None:
        """Sum over ranks in one collective (no-op on one process)."""
        stacked = all_reduce_sum_(torch.stack([self.nll_sum, self.token_count, self.byte_count]))  # (3,)
        self.nll_sum, self.token_count, self.byte_count = stacked.unbind(0)

    @property
    def loss(self) -> float:
        """Mean nll in nats per token."""
        return float(self.nll_sum / self.token_count)

    @property
    def bits_per_token(self) -> float:
        return self.loss / LN2

    @property
    def bpb(self) -> float:
        return bits_per_byte(float(self.nll_sum), float(self.byte_count))


def bits_per_byte(nll_sum_nats: float, byte_count: float) -> float:
    """Total nats converted to bits, per byte of text."""
    return nll_sum_nats / LN2 / byte_count
