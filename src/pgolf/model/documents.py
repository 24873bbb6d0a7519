"""Document-masked attention: a token attends only to earlier tokens of its own document.

Training and validation streams are documents packed back to back, each starting with BOS
(`pgolf.tokenizer.BOS_ID`). With `model.doc_mask` the model never looks across that boundary, as
the 2026-04-10 VarLenAttn record does with FlashAttention's `flash_attn_varlen_func` and
`cu_seqlens` built from BOS positions. Two paths compute the same function:

- "varlen": CUDA, half-precision compute, and a flash-attention package importable (FA3's
  `flash_attn_interface`, else FA2's `flash_attn`): the batch is flattened to one packed sequence
  cut at every BOS and at every row start, so no (T, T) mask is ever built;
- "mask": everywhere else, a block-causal boolean mask (B, 1, T, T) for SDPA or the math reference.

`choose_path` is a pure function of the facts it needs, so tests can force either path.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from pgolf.tokenizer import BOS_ID

_VARLEN_MODULES = ("flash_attn_interface", "flash_attn")


class Documents(NamedTuple):
    """Where the documents of a batch are, in the form the chosen attention path reads."""

    mask: torch.Tensor | None
    """(B, 1, T, T) bool, True where query t may attend key s (s <= t, same document); mask path."""
    cu_seqlens: torch.Tensor | None
    """(N + 1,) int32 offsets of the N segments of the flattened batch; varlen path."""


def document_ids(input_ids: torch.Tensor, bos_id: int = BOS_ID) -> torch.Tensor:
    """(B, T) int: how many BOS tokens are at or before each position (the document's number in its row)."""
    return (input_ids == bos_id).long().cumsum(dim=1)  # (B, T)


def block_causal_mask(input_ids: torch.Tensor, bos_id: int = BOS_ID) -> torch.Tensor:
    """(B, 1, T, T) bool: causal and within one document."""
    T = input_ids.size(1)
    doc = document_ids(input_ids, bos_id)  # (B, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
    same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]  # (B, 1, T, T)


def cu_seqlens(input_ids: torch.Tensor, bos_id: int = BOS_ID) -> torch.Tensor:
    """(N + 1,) int32 segment offsets of the flattened (B*T,) batch: a segment starts at each row and each BOS."""
    starts = input_ids == bos_id  # (B, T)
    starts[:, 0] = True
    offsets = starts.flatten().nonzero().squeeze(1)  # (N,)
    end = torch.tensor([input_ids.numel()], device=input_ids.device)
    return torch.cat((offsets, end)).to(torch.int32)  # (N + 1,)


def varlen_function() -> Callable[..., Any] | None:
    """`flash_attn_varlen_func` of the first importable flash-attention package, else None."""
    for name in _VARLEN_MODULES:
        if importlib.util.find_spec(name) is not None:
            fn = getattr(importlib.import_module(name), "flash_attn_varlen_func", None)
            if fn is not None:
                return fn
    return None


def choose_path(device_type: str, half_precision: bool, backend: str, varlen_available: bool) -> str:
    """ "varlen" where the flash kernel can run (CUDA, bf16/fp16, a backend that allows flash), else "mask"."""
    flash_allowed = backend in ("auto", "flash")
    return "varlen" if device_type == "cuda" and half_precision and flash_allowed and varlen_available else "mask"


def _half_precision_compute(device_type: str) -> bool:
    """Whether attention inputs will be bf16/fp16: autocast to one of them is on for this device."""
    if not torch.is_autocast_enabled(device_type):
        return False
    return torch.get_autocast_dtype(device_type) in (torch.bfloat16, torch.float16)


def locate_documents(input_ids: torch.Tensor, backend: str) -> Documents:
    """Document layout of a batch for the attention path this device and dtype will take."""
    device_type = input_ids.device.type
    half = device_type == "cuda" and _half_precision_compute(device_type)
    path = choose_path(device_type, half, backend, device_type == "cuda" and varlen_function() is not None)
    if path == "varlen":
        return Documents(mask=None, cu_seqlens=cu_seqlens(input_ids))
    return Documents(mask=block_causal_mask(input_ids), cu_seqlens=None)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                     fn: Callable[..., Any] | None = None) -> torch.Tensor:
    """Causal attention within segments; q is (B, H, T, D), k and v (B, KV, T, D); returns (B, H, T, D).

    The flattened batch is one packed sequence; T bounds every segment's length, which spares a
    device-to-host sync for the true maximum."""
    fn = fn or varlen_function()
    assert fn is not None, "varlen attention chosen without a flash-attention package"
    B, H, T, D = q.shape
    KV = k.size(1)
    qf = q.transpose(1, 2).reshape(B * T, H, D)  # (B*T, H, D)
    kf = k.transpose(1, 2).reshape(B * T, KV, D)  # (B*T, KV, D)
    vf = v.transpose(1, 2).reshape(B * T, KV, D)  # (B*T, KV, D)
    out = fn(qf, kf, vf, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=T, max_seqlen_k=T, causal=True)
    if isinstance(out, tuple):  # some FA3 builds also return the log-sum-exp
        out = out[0]
    return out.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
