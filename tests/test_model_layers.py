"""Reference checks of the technique building blocks: grouped XSA against a repeat_interleave
reference, partial RoPE and the NTK base rescale, the BigramHash hashes against plain integer
arithmetic, the document-masked attention paths (mask, varlen with a stand-in kernel, the choice
between them), the MLP activation and width, LN scale, and OrthoInit."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import build, randomize, tiny, tokens

from pgolf.model import documents
from pgolf.model.attention import attend, exclusive_self_attention, math_attention
from pgolf.model.documents import block_causal_mask, choose_path, cu_seqlens, locate_documents, varlen_attention
from pgolf.model.embeddings import bigram_hash, trigram_hash
from pgolf.model.layers import Rotary, apply_rotary, inverse_frequencies, ntk_base
from pgolf.tokenizer import BOS_ID


@pytest.mark.parametrize("num_kv", [1, 2, 4])
def test_xsa_grouped_form_equals_the_repeated_reference(num_kv: int) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 7, 4, 8, generator=g)  # (B, T, H, D)
    v = torch.randn(2, 7, num_kv, 8, generator=g)  # (B, T, KV, D)
    v_rep = v.repeat_interleave(4 // num_kv, dim=2)  # query head h reads kv head h // group
    v_hat = v_rep / v_rep.norm(dim=-1, keepdim=True)
    ref = y - (y * v_hat).sum(-1, keepdim=True) * v_hat
    out = exclusive_self_attention(y, v)
    assert torch.allclose(out, ref, atol=1e-6)
    assert (out * v_hat).sum(-1).abs().max() < 1e-5  # nothing left along the token's own value


def test_ntk_base_formula() -> None:
    assert ntk_base(10000.0, 16, 2048, 1024) == pytest.approx(10000.0 * 2.0 ** (16 / 14))
    assert ntk_base(10000.0, 16, 1024, 1024) == 10000.0  # not beyond the training length
    assert ntk_base(10000.0, 16, 4096, 0) == 10000.0  # rescale off
    assert ntk_base(500.0, 64, 3000, 1000) == pytest.approx(500.0 * 3.0 ** (64 / 62))


def test_rotary_rescales_from_the_length_seen_at_forward() -> None:
    rot = Rotary(16, 10000.0, train_seq_len=1024)
    for T in (1024, 2048, 1500):
        cos, sin = rot(T, torch.float32)
        inv = inverse_frequencies(16, ntk_base(10000.0, 16, T, 1024))
        t = torch.arange(T, dtype=torch.float32)[:, None]
        assert cos.shape == (1, 1, T, 8)
        assert torch.allclose(cos[0, 0], (t * inv).cos(), atol=1e-6)
        assert torch.allclose(sin[0, 0], (t * inv).sin(), atol=1e-6)
    short, _ = rot(100, torch.float32)  # back within the training length: the plain table again
    assert torch.allclose(short[0, 0], (torch.arange(100.0)[:, None] * inverse_frequencies(16, 10000.0)).cos())


def test_model_beyond_training_length_uses_the_rescaled_base() -> None:
    # A model trained at 8 tokens evaluated at 16 equals the same weights with the rescaled base and no rescale.
    cfg = tiny(rope_dims=4, rope_train_seq_len=8)
    model = randomize(build(cfg))
    fixed = build(tiny(rope_dims=4, rope_base=ntk_base(10000.0, 4, 16, 8)))
    fixed.load_state_dict(model.state_dict())
    plain = build(tiny(rope_dims=4))
    plain.load_state_dict(model.state_dict())
    x = tokens(2, 16, seed=1)
    assert torch.equal(model.forward_logits(x), fixed.forward_logits(x))
    assert not torch.allclose(model.forward_logits(x), plain.forward_logits(x), atol=1e-4)
    assert torch.equal(model.forward_logits(x[:, :8]), plain.forward_logits(x[:, :8]))


def test_partial_rope_rotates_only_the_leading_dims() -> None:
    x = torch.randn(2, 3, 5, 16)  # (B, H, T, D)
    cos, sin = Rotary(4, 10000.0)(5, torch.float32)
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert torch.equal(out[..., :4], apply_rotary(x[..., :4].contiguous(), cos, sin))
    # pairs (0, 2) and (1, 3) are rotated: norms of each pair are kept, position 0 is unrotated
    assert torch.allclose(out[..., [0, 2]].norm(dim=-1), x[..., [0, 2]].norm(dim=-1), atol=1e-5)
    assert torch.equal(out[:, :, 0], x[:, :, 0])


def test_full_rope_dims_is_the_default() -> None:
    model = randomize(build(tiny()))
    full = build(tiny(rope_dims=8))
    full.load_state_dict(model.state_dict())
    x = tokens(1, 12)
    assert torch.equal(model.forward_logits(x), full.forward_logits(x))


def _wrap32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def test_bigram_and_trigram_hashes_follow_the_records_integer_arithmetic() -> None:
    ids = torch.tensor([[5, 17, 1023, 60001, 65535, 2, 40000, 9]])
    B = 2048
    bi, tri = bigram_hash(ids, B)[0].tolist(), trigram_hash(ids, B)[0].tolist()
    t = ids[0].tolist()
    assert bi[0] == tri[0] == tri[1] == B - 1
    for i in range(1, len(t)):
        assert bi[i] == (_wrap32(36313 * t[i]) ^ _wrap32(27191 * t[i - 1])) % (B - 1)
    for i in range(2, len(t)):
        assert tri[i] == (_wrap32(36313 * t[i]) ^ _wrap32(27191 * t[i - 1]) ^ _wrap32(51497 * t[i - 2])) % (B - 1)
    assert all(0 <= h < B for h in bi + tri)


def test_block_causal_mask_and_cu_seqlens() -> None:
    ids = torch.tensor([[5, BOS_ID, 7, 8], [BOS_ID, 3, BOS_ID, 4]])
    mask = block_causal_mask(ids)
    doc = [[0, 1, 1, 1], [1, 1, 2, 2]]
    for b in range(2):
        for t in range(4):
            for s in range(4):
                assert mask[b, 0, t, s].item() == (s <= t and doc[b][s] == doc[b][t])
    assert cu_seqlens(ids).tolist() == [0, 1, 4, 6, 8] and cu_seqlens(ids).dtype == torch.int32


def segment_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                      causal: bool) -> torch.Tensor:
    """A stand-in for flash_attn_varlen_func: causal attention inside each packed segment."""
    assert q.dim() == 3 and cu_seqlens_q.dtype == torch.int32 and causal
    out = torch.empty_like(q)
    bounds = cu_seqlens_q.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert hi - lo <= max_seqlen_q
        seg = [t[lo:hi].transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, L, D)
        out[lo:hi] = math_attention(*seg)[0].transpose(0, 1)
    return out


def test_varlen_path_equals_the_masked_path() -> None:
    g = torch.Generator().manual_seed(0)
    ids = tokens(2, 12, seed=2)
    ids[0, 4], ids[1, 7], ids[1, 9] = BOS_ID, BOS_ID, BOS_ID
    q = torch.randn(2, 4, 12, 8, generator=g)
    k, v = torch.randn(2, 2, 12, 8, generator=g), torch.randn(2, 2, 12, 8, generator=g)
    masked = math_attention(q, k, v, block_causal_mask(ids))
    varlen = varlen_attention(q, k, v, cu_seqlens(ids), fn=segment_reference)
    assert torch.allclose(masked, varlen, atol=1e-5)
    docs = locate_documents(ids, "sdpa")
    assert docs.cu_seqlens is None and torch.allclose(attend(q, k, v, "sdpa", docs), masked, atol=1e-5)
    no_bos = tokens(2, 12, seed=3)  # one document per row: plain causal attention
    assert torch.allclose(attend(q, k, v, "sdpa", locate_documents(no_bos, "sdpa")), attend(q, k, v, "sdpa"), atol=1e-5)


def test_model_takes_the_varlen_path_when_it_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    model = randomize(build(tiny(doc_mask=True)))
    x = tokens(2, 16, seed=4)
    x[:, 6] = BOS_ID
    masked = model.forward_logits(x)
    calls: list[int] = []

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return segment_reference(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(documents, "varlen_function", lambda: counted)
    monkeypatch.setattr(documents, "choose_path", lambda *args: "varlen")
    assert torch.allclose(model.forward_logits(x), masked, atol=1e-5)
    assert len(calls) == 3  # one packed call per layer


def test_choice_between_varlen_and_mask() -> None:
    assert choose_path("cuda", True, "auto", True) == "varlen"
    assert choose_path("cuda", True, "flash", True) == "varlen"
    assert choose_path("cuda", True, "auto", False) == "mask"  # no flash-attention package
    assert choose_path("cuda", False, "auto", True) == "mask"  # fp32: the flash kernel needs half precision
    assert choose_path("cuda", True, "sdpa", True) == "mask"
    assert choose_path("cuda", True, "math", True) == "mask"
    assert choose_path("cpu", True, "auto", True) == "mask"
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert locate_documents(tokens(1, 4), "auto").mask is not None  # CPU always masks


@pytest.mark.parametrize("kind", ["relu2", "leaky_relu2"])
def test_mlp_activation_and_width(kind: str) -> None:
    model = randomize(build(tiny(mlp_hidden=40, mlp_activation=kind)))
    mlp = model.blocks[0].mlp
    assert mlp.fc.weight.shape == (40, 32) and mlp.proj.weight.shape == (32, 40)
    x = torch.randn(3, 32)
    h = x @ mlp.fc.weight.T
    act = torch.where(h > 0, h, 0.5 * h if kind == "leaky_relu2" else torch.zeros_like(h)).square()
    assert torch.allclose(mlp(x), act @ mlp.proj.weight.T, atol=1e-5)
    assert build(tiny(mlp_mult=3.0)).blocks[0].mlp.fc.weight.shape == (96, 32)


def test_ln_scale_scales_both_sublayer_inputs_by_the_physical_index() -> None:
    model = randomize(build(tiny(num_layers=4, ln_scale=True, num_loops=1, loop_start=1, loop_end=2)))
    seen: dict[tuple[int, str], list[float]] = {}
    for i, block in enumerate(model.blocks):
        for name in ("attn", "mlp"):
            def record(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], key: tuple[int, str] = (i, name)) -> None:
                seen.setdefault(key, []).append(args[0].pow(2).mean(-1).sqrt().mean().item())

            getattr(block, name).register_forward_pre_hook(record)
    model.forward_logits(tokens(2, 8))
    assert len(seen[(1, "attn")]) == 2  # block 1 runs twice in the looped plan, with the same factor
    for (i, _), rms in seen.items():
        assert all(r == pytest.approx(1 / math.sqrt(i + 1), rel=1e-3) for r in rms)


def test_ortho_init() -> None:
    cfg = tiny(model_dim=64, num_kv_heads=4, ortho_init=True, bigram_buckets=37, bigram_dim=96,
               value_embed_layers=(1,), value_embed_dim=96)
    model = build(cfg)
    eye = torch.eye(64)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    for w in (attn.c_q.weight, attn.c_k.weight, attn.c_v.weight):
        assert torch.allclose(w @ w.T, eye, atol=1e-5)
    assert torch.allclose(mlp.fc.weight.T @ mlp.fc.weight, eye, atol=1e-5)  # (128, 64): orthonormal columns
    for w in (attn.proj.weight, mlp.proj.weight):
        assert torch.count_nonzero(w) == 0  # the block output projections stay at zero
    scale = 1 / math.sqrt(2 * 3)
    for w in (model.bigram.proj.weight, model.value_embed.proj.weight):  # (64, 96): side projections, scaled
        assert torch.allclose(w @ w.T, scale**2 * eye, atol=1e-5)
    assert torch.count_nonzero(model.bigram.table.weight) == 0
    small = build(tiny(ortho_init=True))  # below 64x64 nothing changes: the default init stays
    assert not torch.allclose(small.blocks[0].attn.c_q.weight @ small.blocks[0].attn.c_q.weight.T, torch.eye(32),
                              atol=1e-2)
