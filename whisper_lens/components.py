"""Whisper's building blocks with HookPoints: layer norm, attention, MLP, residual block, unembed.

Weights keep openai-whisper's layout (`nn.Linear` with fused heads), so loading is a renaming and
the forward pass runs the same kernels; TransformerLens's per-head views (`W_Q`, `W_O`, ...) are
properties over those weights.

Attention takes one of two paths per call and per layer: PyTorch's fused
`scaled_dot_product_attention` when nothing needs the pattern, or the explicit softmax when a
hook is registered on that layer's `hook_attn_scores` or `hook_pattern` (which is what caching
them does). Both give the same numbers; there is no global switch.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


@dataclass(frozen=True)
class HookOptions:
    """Optional TransformerLens-style hooks; each costs memory or time, so all are off by default."""

    use_attn_result: bool = False  # `attn.hook_result`: each head's output in d_model (b p h d)
    use_attn_in: bool = False  # `hook_attn_in`: the residual stream copied per head into self-attention
    use_split_qkv_input: bool = False  # `hook_{q,k,v}_input`: separate per-head inputs for q, k and v

    @property
    def enabled(self) -> frozenset[str]:
        return frozenset(name for name, on in vars(self).items() if on)


class KVCache:
    """Keys and values of earlier decoding steps, kept inside the model's own attention.

    Self-attention slots grow by the new positions at every step; cross-attention slots are
    filled once from the encoder output and reused. `offset` is the number of text positions
    already processed.
    """

    def __init__(self) -> None:
        self.slots: dict[tuple[int, str], dict[str, Tensor]] = {}
        self.offset = 0

    def layer(self, layer: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(self-attention slot, cross-attention slot) of one decoder block."""
        return (
            self.slots.setdefault((layer, "self"), {}),
            self.slots.setdefault((layer, "cross"), {}),
        )

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving beams)."""
        for slot in self.slots.values():
            for key, value in slot.items():
                slot[key] = value.index_select(0, index)


def _active(hook: nn.Module) -> bool:
    """Whether a hook point needs the explicit computation: it has hooks, or an SAE replaced it."""
    return hook.has_hooks() if isinstance(hook, HookPoint) else True


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (as openai-whisper does), with TransformerLens's hooks."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch pos 1]
        self.hook_normalized = HookPoint()  # [batch pos d_model]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        dtype = x.dtype
        if not (_active(self.hook_scale) or _active(self.hook_normalized)):
            return F.layer_norm(x.float(), self.w.shape, self.w.float(), self.b.float(), self.eps).to(dtype)
        x = x.float()
        if torch.is_grad_enabled() and x.requires_grad:  # TransformerLens's formula: grads flow through the scale
            x = x - x.mean(-1, keepdim=True)
            scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
            x = self.hook_normalized(x / scale)
        else:  # the same numbers from one fused kernel (its rstd output carries no gradient)
            x, _, rstd = torch.ops.aten.native_layer_norm(x, self.w.shape, None, None, self.eps)
            scale = self.hook_scale(rstd.reciprocal())
            x = self.hook_normalized(x)
        return torch.addcmul(self.b.float(), x, self.w.float()).to(dtype)


def _causal_mask(n_query: int, n_key: int, device: torch.device) -> Bool[Tensor, "query_pos key_pos"]:
    """True where a query may attend: key position <= the query's absolute position."""
    offset = n_key - n_query
    query_pos = torch.arange(n_query, device=device)[:, None] + offset
    return torch.arange(n_key, device=device)[None, :] <= query_pos


class Attention(nn.Module):
    """Multi-head attention (self or cross), fused projections in openai-whisper's layout."""

    def __init__(self, d_model: int, n_heads: int, *, use_attn_result: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)  # Whisper's key projection has no bias
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.hook_q = HookPoint()  # [batch query_pos head d_head]
        self.hook_k = HookPoint()  # [batch key_pos head d_head]
        self.hook_v = HookPoint()  # [batch key_pos head d_head]
        self.hook_attn_scores = HookPoint()  # [batch head query_pos key_pos]
        self.hook_pattern = HookPoint()  # [batch head query_pos key_pos]
        self.hook_z = HookPoint()  # [batch query_pos head d_head]
        if use_attn_result:
            self.hook_result = HookPoint()  # [batch query_pos head d_model]

    # TransformerLens's per-head views of the fused weights
    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return einops.rearrange(self.query.weight, "(h e) d -> h d e", h=self.n_heads)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return einops.rearrange(self.key.weight, "(h e) d -> h d e", h=self.n_heads)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return einops.rearrange(self.value.weight, "(h e) d -> h d e", h=self.n_heads)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return einops.rearrange(self.out.weight, "d (h e) -> h e d", h=self.n_heads)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return einops.rearrange(self.query.bias, "(h e) -> h e", h=self.n_heads)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self.key.weight.new_zeros(self.n_heads, self.d_head)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return einops.rearrange(self.value.bias, "(h e) -> h e", h=self.n_heads)

    @property
    def b_O(self) -> Float[Tensor, "d_model"]:
        return self.out.bias

    def _project(self, x: Tensor, linear: nn.Linear) -> Float[Tensor, "batch pos head d_head"]:
        if x.ndim == 4:  # per-head inputs [batch pos head d_model] (split qkv / attn_in)
            weight = einops.rearrange(linear.weight, "(h e) d -> h d e", h=self.n_heads)
            y = torch.einsum("bphd,hde->bphe", x, weight)
            if linear.bias is not None:
                y = y + einops.rearrange(linear.bias, "(h e) -> h e", h=self.n_heads)
            return y
        return einops.rearrange(linear(x), "b p (h e) -> b p h e", h=self.n_heads)

    def forward(
        self,
        query_input: Float[Tensor, "batch query_pos d_model"],
        key_input: Float[Tensor, "batch key_pos d_model"],
        value_input: Float[Tensor, "batch key_pos d_model"],
        *,
        causal: bool = False,
        cache: dict[str, Tensor] | None = None,
        cross: bool = False,
    ) -> Float[Tensor, "batch query_pos d_model"]:
        q = self.hook_q(self._project(query_input, self.query))
        if cross and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # computed (and hooked) on the first decoding step
        else:
            k = self.hook_k(self._project(key_input, self.key))
            v = self.hook_v(self._project(value_input, self.value))
            if cache is not None:
                if not cross and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=1)
                    v = torch.cat([cache["v"], v], dim=1)
                cache["k"], cache["v"] = k, v
        z = self.hook_z(self._attend(q, k, v, causal=causal))
        if hasattr(self, "hook_result"):
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(-2) + self.out.bias
        return self.out(einops.rearrange(z, "b q h e -> b q (h e)"))

    def _attend(
        self,
        q: Float[Tensor, "batch query_pos head d_head"],
        k: Float[Tensor, "batch key_pos head d_head"],
        v: Float[Tensor, "batch key_pos head d_head"],
        *,
        causal: bool,
    ) -> Float[Tensor, "batch query_pos head d_head"]:
        q, k, v = (einops.rearrange(t, "b p h e -> b h p e") for t in (q, k, v))
        n_query, n_key = q.shape[-2], k.shape[-2]
        mask = _causal_mask(n_query, n_key, q.device) if causal and n_query > 1 else None
        if _active(self.hook_attn_scores) or _active(self.hook_pattern):
            # Explicit path: the pattern is materialised so hooks can read or edit it.
            shape = _pattern_buffers(q, n_key) if mask is None else None
            q = q * self.d_head**-0.5
            if shape is not None:
                scores = torch.matmul(q, k.transpose(-1, -2), out=_POOL.take(self, q, shape))
            else:
                scores = q @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            scores = self.hook_attn_scores(scores.float())
            if shape is not None and (tuple(scores.shape), scores.dtype) == (shape, q.dtype):
                pattern = torch.softmax(scores, dim=-1, out=_POOL.take(self, scores, shape))
            else:  # a hook returned other scores
                pattern = F.softmax(scores, dim=-1)
            pattern = self.hook_pattern(pattern).to(q.dtype)
            z = pattern @ v
        else:
            _POOL.give_back([self])  # patterns are no longer wanted here: give back its free buffers
            z = _fused_attention(q, k, v, mask)
        return einops.rearrange(z, "b h p e -> b p h e")


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# Attention scores and patterns are the largest activations: 54 MB per item and layer for tiny's
# encoder. A fresh buffer that size is page-faulted in by the OS on every call, which made caching
# every hook 1.5-2x slower than openai-whisper's explicit attention at batch 8 on the project's
# CPU. So score and pattern buffers come from one pool shared by all layers: a buffer is written
# again once nothing else holds it (the cache that received it was dropped, or the layer that
# used it is done), so a pass that only hooks patterns reuses two buffers for every layer. The
# pool keeps at most `pattern_buffer_limit()` bytes (buffers beyond it are plain allocations);
# it is never used under autograd or off the CPU; a layer that takes the fused path gives back
# the free buffers it used last, and `HookedWhisper.release_buffers()` gives back all of them.
_MIN_SPARE_BYTES = 1 << 22  # smaller buffers come cheaply from the allocator's free lists
_POOL_LIMIT_BYTES = [512 << 20]


def pattern_buffer_limit(n_bytes: int | None = None) -> int:
    """The most bytes of score and pattern buffers kept for reuse (default 512 MiB); with
    `n_bytes`, set it (0 turns reuse off) and return the old value."""
    old = _POOL_LIMIT_BYTES[0]
    if n_bytes is not None:
        if n_bytes < 0:
            raise ValueError(f"pattern_buffer_limit must be >= 0 bytes, got {n_bytes}")
        _POOL_LIMIT_BYTES[0] = int(n_bytes)
        _POOL.shrink_to(int(n_bytes))
    return old


_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)  # private, but torch.utils.swap_tensors uses it


def _storage_users(t: Tensor) -> int | None:
    """References to `t`'s storage (counting the handle this call makes); None if torch can't say."""
    return _USE_COUNT(t.untyped_storage()._cdata) if _USE_COUNT is not None else None


class _BufferPool:
    """Score and pattern buffers kept for reuse, each with the layer that used it last."""

    def __init__(self) -> None:
        self.entries: list[tuple[Tensor, weakref.ref]] = []

    @staticmethod
    def _free(buf: Tensor) -> bool:
        return _ALONE is not None and _storage_users(buf) == _ALONE

    @property
    def nbytes(self) -> int:
        return sum(buf.nbytes for buf, _ in self.entries)

    def take(self, layer: nn.Module, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        """A kept buffer of this shape that only the pool holds, else a fresh one (kept if the
        limit allows, after giving back free buffers of other shapes)."""
        key = (shape, like.dtype, like.device)
        for i, (buf, _) in enumerate(self.entries):
            if (tuple(buf.shape), buf.dtype, buf.device) == key and self._free(buf):
                self.entries[i] = (buf, weakref.ref(layer))
                return buf.detach()  # an alias: whoever keeps it (or a view of it) raises the count
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        limit = _POOL_LIMIT_BYTES[0]
        if self.nbytes + buf.nbytes > limit:
            self.entries = [(b, o) for b, o in self.entries
                            if (tuple(b.shape), b.dtype, b.device) == key or not self._free(b)]
        if self.nbytes + buf.nbytes <= limit:
            self.entries.append((buf, weakref.ref(layer)))
        return buf.detach()

    def give_back(self, layers) -> None:
        """Forget the buffers these layers used last (their memory is freed once nobody holds it)."""
        if not self.entries:
            return
        gone = set(map(id, layers))
        self.entries = [(b, o) for b, o in self.entries if o() is not None and id(o()) not in gone]

    def shrink_to(self, limit: int) -> None:
        while self.entries and self.nbytes > limit:
            self.entries.pop(0)


_POOL = _BufferPool()


def release_spare_buffers(modules) -> None:
    """Forget the kept score and pattern buffers these modules used last."""
    _POOL.give_back(modules)


def _pattern_buffers(q: Tensor, n_key: int) -> tuple[int, ...] | None:
    """The score/pattern shape when this call may use pooled buffers, else None."""
    shape = (*q.shape[:-1], n_key)
    if torch.is_grad_enabled() or q.device.type != "cpu" or math.prod(shape) * q.element_size() < _MIN_SPARE_BYTES:
        return None  # autograd can't record `out=`; GPU allocators already cache their blocks
    return shape


_ALONE = _storage_users(torch.empty(1))  # the count for a tensor held in one place only


class MLP(nn.Module):
    """fc1 -> GELU -> fc2, with TransformerLens's `hook_pre` / `hook_post`."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.fc2 = nn.Linear(d_mlp, d_model)
        self.hook_pre = HookPoint()  # [batch pos d_mlp]
        self.hook_post = HookPoint()  # [batch pos d_mlp]

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.fc1.weight.T

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.fc1.bias

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.fc2.weight.T

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        return self.fc2.bias

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(self.fc1(x))
        post = self.hook_post(F.gelu(pre))
        return self.fc2(post)


class ResidualBlock(nn.Module):
    """One encoder block (self-attention, MLP) or decoder block (self-, cross-attention, MLP).

    Layer norms are named as in TransformerLens: `ln1` before self-attention, then `ln2` before
    the MLP (encoder) or before cross-attention with `ln3` before the MLP (decoder).
    """

    def __init__(self, d_model: int, n_heads: int, *, cross_attention: bool, options: HookOptions):
        super().__init__()
        self.n_heads = n_heads
        self.hook_resid_pre = HookPoint()  # [batch pos d_model]
        if options.use_attn_in:
            self.hook_attn_in = HookPoint()  # [batch pos head d_model]
        if options.use_split_qkv_input:
            self.hook_q_input = HookPoint()  # [batch pos head d_model]
            self.hook_k_input = HookPoint()  # [batch pos head d_model]
            self.hook_v_input = HookPoint()  # [batch pos head d_model]
        self.ln1 = LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, use_attn_result=options.use_attn_result)
        self.hook_attn_out = HookPoint()  # [batch pos d_model]
        self.hook_resid_mid = HookPoint()  # [batch pos d_model]
        self.ln2 = LayerNorm(d_model)
        if cross_attention:
            self.cross_attn = Attention(d_model, n_heads, use_attn_result=options.use_attn_result)
            self.hook_cross_attn_out = HookPoint()  # [batch text_pos d_model]
            self.hook_resid_mid_cross = HookPoint()  # [batch text_pos d_model]
            self.ln3 = LayerNorm(d_model)
        self.mlp = MLP(d_model, 4 * d_model)
        self.hook_mlp_out = HookPoint()  # [batch pos d_model]
        self.hook_resid_post = HookPoint()  # [batch pos d_model]

    @property
    def mlp_ln(self) -> LayerNorm:
        return self.ln3 if hasattr(self, "cross_attn") else self.ln2

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        xa: Float[Tensor, "batch audio_pos d_model"] | None = None,
        *,
        causal: bool = False,
        cache: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self._self_attention(x, causal, self_cache))
        x = self.hook_resid_mid(x + attn_out)
        if hasattr(self, "cross_attn"):
            if xa is None:
                raise ValueError("a decoder block needs the encoder output `xa` for cross-attention")
            query = self.ln2(x)
            cross_out = self.hook_cross_attn_out(self.cross_attn(query, xa, xa, cache=cross_cache, cross=True))
            x = self.hook_resid_mid_cross(x + cross_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.mlp_ln(x)))
        x = self.hook_resid_post(x + mlp_out)
        return x

    def _self_attention(self, x: Tensor, causal: bool, cache: dict[str, Tensor] | None) -> Tensor:
        if hasattr(self, "hook_q_input"):
            per_head = einops.repeat(x, "b p d -> b p h d", h=self.n_heads)
            q_in, k_in, v_in = self.hook_q_input(per_head), self.hook_k_input(per_head), self.hook_v_input(per_head)
            q_in, k_in, v_in = self.ln1(q_in), self.ln1(k_in), self.ln1(v_in)
        elif hasattr(self, "hook_attn_in"):
            q_in = k_in = v_in = self.ln1(self.hook_attn_in(einops.repeat(x, "b p d -> b p h d", h=self.n_heads)))
        else:
            q_in = k_in = v_in = self.ln1(x)
        return self.attn(q_in, k_in, v_in, causal=causal, cache=cache)


class Unembed(nn.Module):
    """Logits from the final residual stream through `W_U` (Whisper ties it to `W_E`)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_out = HookPoint()  # [batch text_pos d_vocab]

    def forward(
        self, x: Float[Tensor, "batch text_pos d_model"], W_U: Float[Tensor, "d_model d_vocab"]
    ) -> Float[Tensor, "batch text_pos d_vocab"]:
        return self.hook_out((x @ W_U).float())
