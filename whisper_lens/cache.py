"""TransformerLens's ActivationCache for Whisper's two stacks and its cross-attention.

TransformerLens's cache helpers (`accumulated_resid`, `decompose_resid`, `apply_ln_to_stack`,
`stack_head_results`, `get_full_resid_decomposition`, ...) read `blocks.{l}.*` names and a
`HookedTransformer`. Rather than rewrite them, this module runs TransformerLens's own methods:

- `DecoderActivationCache`: TL's cache, with the decoder's cross-attention added wherever
  TL decomposes the residual stream (so the parts still sum to it). The decoder view
  (`HookedWhisper.with_audio`) returns it.
- `WhisperActivationCache`: what `HookedWhisper.run_with_cache` returns. Each helper takes TL's
  arguments plus `stack="encoder"` or `"decoder"`, and runs TL's method on that stack seen under
  TL's names (a live renaming of the same tensors, nothing copied).

Short keys (`cache["resid_post", 0]`, `cache["pattern", 1, "attn"]`) follow TL's
`utils.get_act_name`, on the stack named as a last element (`cache["resid_post", 0, "encoder"]`),
else on `cache.default_stack`: the decoder, unless the cache holds no decoder activation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, MutableMapping
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformerConfig
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities import Slice

from whisper_lens import names

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper

StackName = Literal["encoder", "decoder"]
STACKS = ("encoder", "decoder")


def accumulated_bias(blocks: Any, cfg: Any, layer: int, mlp_input: bool = False,
                     include_mlp_biases: bool = True) -> Float[Tensor, "d_model"]:
    """HookedTransformer's `accumulated_bias`, counting cross-attention output biases too."""
    total = torch.zeros(cfg.d_model, device=blocks[0].attn.b_O.device, dtype=blocks[0].attn.b_O.dtype)
    for block in list(blocks)[:layer]:
        total = total + _attention_bias(block)
        if include_mlp_biases:
            total = total + block.mlp.b_out
    if mlp_input:
        if layer >= cfg.n_layers:
            raise ValueError("mlp_input=True needs a layer below n_layers (the unembed has no MLP)")
        total = total + _attention_bias(blocks[layer])
    return total


def _attention_bias(block: Any) -> Tensor:
    """The output biases of a block's self-attention and (decoder) cross-attention."""
    cross = getattr(block, "cross_attn", None)
    return block.attn.b_O + (cross.b_O if cross is not None else 0)


class _Renamed(MutableMapping):
    """A live view of a cache dict under other names (nothing is copied)."""

    def __init__(self, base: MutableMapping, to_base: Callable[[str], str | None],
                 from_base: Callable[[str], str | None]):
        self.base, self.to_base, self.from_base = base, to_base, from_base

    def _key(self, key: str) -> str:
        base = self.to_base(key) if isinstance(key, str) else None
        if base is None:
            raise KeyError(key)
        return base

    def __getitem__(self, key: str) -> Tensor:
        return self.base[self._key(key)]

    def __setitem__(self, key: str, value: Tensor) -> None:
        self.base[self._key(key)] = value

    def __delitem__(self, key: str) -> None:
        del self.base[self._key(key)]

    def __contains__(self, key: object) -> bool:
        base = self.to_base(key) if isinstance(key, str) else None
        return base is not None and base in self.base

    def __iter__(self) -> Iterator[str]:
        return (k for k in map(self.from_base, list(self.base)) if k is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# ---------------------------------------------------------------------- TL names <-> HookedWhisper names
# HookedWhisper's decoder block calls its norms ln1 (self-attn), ln2 (cross-attn), ln3 (MLP);
# TransformerLens's `ln2` is the MLP's, so the cross-attention norm is `ln_cross` under TL names.
_LN_TO_WHISPER = {"decoder": {"ln2": "ln3", "ln_cross": "ln2"}, "encoder": {}}
_EMBEDS = {"decoder": {"hook_embed": "hook_embed", "hook_pos_embed": "hook_pos_embed"},
           "encoder": {"hook_embed": "hook_audio_embed", "hook_pos_embed": "hook_audio_pos_embed"}}
_FINAL_LN = {"decoder": "decoder_ln_final", "encoder": "encoder_ln_final"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(?:(ln\w*)\.)?(.*)")


def tl_to_whisper(name: str, stack: StackName) -> str | None:
    """`blocks.0.ln2.hook_scale` -> `decoder_blocks.0.ln3.hook_scale` (decoder); None if not on the stack."""
    if name in _EMBEDS[stack]:
        return _EMBEDS[stack][name]
    if name.startswith("ln_final."):
        return f"{_FINAL_LN[stack]}.{name.removeprefix('ln_final.')}"
    if stack == "decoder" and name == "hook_encoder_out":
        return name
    match = _BLOCK.fullmatch(name)
    if match is None:
        return None
    layer, ln, rest = match.groups()
    if ln is not None:
        rest = f"{_LN_TO_WHISPER[stack].get(ln, ln)}.{rest}"
    return f"{stack}_blocks.{layer}.{rest}"


def whisper_to_tl(name: str, stack: StackName) -> str | None:
    """The inverse of `tl_to_whisper`."""
    for tl, ours in _EMBEDS[stack].items():
        if name == ours:
            return tl
    if name.startswith(_FINAL_LN[stack] + "."):
        return "ln_final." + name.removeprefix(_FINAL_LN[stack] + ".")
    if stack == "decoder" and name == "hook_encoder_out":
        return name
    prefix = f"{stack}_blocks."
    if not name.startswith(prefix):
        return None
    match = _BLOCK.fullmatch(name.removeprefix(f"{stack}_"))
    layer, ln, rest = match.groups()  # type: ignore[union-attr]
    if ln is not None:
        back = {ours: tl for tl, ours in _LN_TO_WHISPER[stack].items()}
        rest = f"{back.get(ln, ln)}.{rest}"
    return f"blocks.{layer}.{rest}"


class StackModel:
    """One of HookedWhisper's stacks with the attributes TransformerLens's cache helpers read
    (`cfg`, `blocks[l].attn.W_O`, `mlp.W_out`, `ln_final`, `accumulated_bias`, ...), over the
    model's own weights (unprocessed, as `HookedTransformer.from_pretrained_no_processing`)."""

    def __init__(self, model: HookedWhisper, stack: StackName):
        self.model, self.stack = model, stack
        self.cfg: HookedTransformerConfig = model.stack_config(stack).to_transformer_lens()
        self.blocks = [
            SimpleNamespace(attn=b.attn, mlp=b.mlp, ln1=b.ln1, ln2=b.mlp_ln,
                            cross_attn=getattr(b, "cross_attn", None),
                            ln_cross=b.ln2 if stack == "decoder" else None)
            for b in model.blocks(stack)
        ]
        self.ln_final = model.encoder_ln_final if stack == "encoder" else model.decoder_ln_final

    @property
    def W_U(self) -> Tensor:
        return self.model.W_U

    @property
    def b_U(self) -> Tensor:
        return self.model.b_U

    def tokens_to_residual_directions(self, tokens: Any) -> Tensor:
        """Unembedding directions with the final layer norm's weight applied, so `logit_attrs`
        gives each component's direct effect on the logits (the layer norm's bias aside)."""
        if self.stack != "decoder":
            raise ValueError("logit attributions need the decoder stack: pass stack='decoder'")
        return self.model.tokens_to_residual_directions(tokens) * self.ln_final.w

    def accumulated_bias(self, layer: int, mlp_input: bool = False,
                         include_mlp_biases: bool = True) -> Tensor:
        return accumulated_bias(self.blocks, self.cfg, layer, mlp_input, include_mlp_biases)


# ---------------------------------------------------------------------- the decoder, cross-attention included
class DecoderActivationCache(ActivationCache):
    """TransformerLens's ActivationCache for a decoder with cross-attention.

    Where TL decomposes the residual stream, the cross-attention terms are added so the parts
    still sum to it: `decompose_resid` adds `{l}_cross_attn_out` (and takes `mode="cross_attn"`),
    `accumulated_resid(incl_mid=True)` adds `{l}_mid_cross`, `get_full_resid_decomposition`
    adds each cross-attention head (`L{l}C{h}`) and the cross-attention output biases.
    `stack_head_results(..., cross=True)` stacks the cross-attention heads instead."""

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: Any = None, mlp_input: bool = False, return_labels: bool = False) -> Any:
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        components, labels = [], []
        for l in range(layer + 1):
            if l == n_layers:
                components.append(self[("resid_post", n_layers - 1)])
                labels.append("final_post")
                continue
            components.append(self[("resid_pre", l)])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                components += [self[("resid_mid", l)], self.cache_dict[f"blocks.{l}.hook_resid_mid_cross"]]
                labels += [f"{l}_mid", f"{l}_mid_cross"]
        stacked = torch.stack([pos_slice.apply(c, dim=-2) for c in components])
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, pos_slice=pos_slice, mlp_input=mlp_input,
                                             has_batch_dim=self.has_batch_dim,
                                             recompute_ln=layer == n_layers)
        return (stacked, labels) if return_labels else stacked

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False,
                        mode: Literal["all", "mlp", "attn", "cross_attn"] = "all", apply_ln: bool = False,
                        pos_slice: Any = None, incl_embeds: bool = True, return_labels: bool = False) -> Any:
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        if mode not in ("all", "mlp", "attn", "cross_attn"):
            raise ValueError(f"mode must be 'all', 'mlp', 'attn' or 'cross_attn', not {mode!r}")
        writers = [w for w in ("attn_out", "cross_attn_out", "mlp_out") if mode in ("all", w.removesuffix("_out"))]
        components, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if f"hook_{name}" in self.cache_dict:
                    components.append(self[name])
                    labels.append(name)
        for l in range(layer + (1 if mlp_input else 0)):
            for writer in writers:
                if writer == "mlp_out" and l == layer:
                    continue  # mlp_input: the layer's own attention outputs feed its MLP
                components.append(self.cache_dict[f"blocks.{l}.hook_{writer}"])
                labels.append(f"{l}_{writer}")
        if not components:
            raise ValueError("nothing to decompose: ask for embeddings or a later layer")
        shape = torch.broadcast_shapes(*(c.shape for c in components))
        stacked = torch.stack([pos_slice.apply(c.expand(shape), dim=-2) for c in components])
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stacked, labels) if return_labels else stacked

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: Any = None, apply_ln: bool = False, cross: bool = False) -> Any:
        if not cross:
            return super().stack_head_results(layer, return_labels, incl_remainder, pos_slice, apply_ln)
        stacked, labels = self._cross_heads().stack_head_results(layer, True, incl_remainder, pos_slice, False)
        labels = [re.sub(r"^L(\d+)H", r"L\1C", label) for label in labels]
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, pos_slice=pos_slice)
        return (stacked, labels) if return_labels else stacked

    def _cross_heads(self) -> ActivationCache:
        """This cache with each cross-attention presented as the block's attention."""
        def to_base(name: str) -> str:
            return re.sub(r"^(blocks\.\d+)\.attn\.", r"\1.cross_attn.", name)

        def from_base(name: str) -> str | None:
            return re.sub(r"^(blocks\.\d+)\.cross_attn\.", r"\1.attn.", name) if ".cross_attn." in name else None

        model = SimpleNamespace(cfg=self.model.cfg, blocks=[SimpleNamespace(attn=b.cross_attn) for b in self.model.blocks])
        return ActivationCache(_Renamed(self.cache_dict, to_base, from_base), model, self.has_batch_dim)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice: Any = None,
                                     return_labels: bool = False, project_output_onto: Tensor | None = None) -> Any:
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        stacked, labels = super().get_full_resid_decomposition(
            layer, mlp_input, expand_neurons, False, pos_slice, True, None)
        cross, cross_labels = self.stack_head_results(layer + (1 if mlp_input else 0), True, pos_slice=pos_slice,
                                                      cross=True)
        n_self = self.model.cfg.n_heads * (layer + (1 if mlp_input else 0))
        stacked = torch.cat([stacked[:n_self], cross, stacked[n_self:]])
        labels = labels[:n_self] + cross_labels + labels[n_self:]
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        if project_output_onto is not None:
            stacked = stacked @ project_output_onto
        return (stacked, labels) if return_labels else stacked

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> DecoderActivationCache:
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        return type(self)(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)


# ---------------------------------------------------------------------- HookedWhisper's cache
def _per_stack(method: str) -> Callable[..., Any]:
    def run_on_stack(self: WhisperActivationCache, *args: Any, stack: StackName | None = None, **kwargs: Any) -> Any:
        return getattr(self.stack(stack), method)(*args, **kwargs)

    run_on_stack.__name__ = method
    run_on_stack.__doc__ = (f"TransformerLens's `ActivationCache.{method}`, with its arguments, on one stack: "
                            "`stack='encoder'` or `'decoder'` (default: `default_stack`).")
    return run_on_stack


class WhisperActivationCache(ActivationCache):
    """Activations from `HookedWhisper.run_with_cache`, keyed by hook name.

    `cache["encoder_blocks.2.hook_resid_post"]`; short keys as TL's (`cache["resid_post", 2]`,
    `cache["pattern", 1, "attn"]`) on `default_stack`, or on the stack named last
    (`cache["resid_post", 2, "encoder"]`); Whisper's own short names (`cross_pattern`,
    `audio_embed`, `encoder_out`) as in `whisper_lens.get_act_name`. Every TL helper takes TL's
    arguments and `stack=`.
    """

    model: HookedWhisper

    @property
    def default_stack(self) -> StackName:
        """The decoder (what TransformerLens code means by the model), unless the cache holds no
        decoder activation (an encoder-only run)."""
        has_decoder = any(k.startswith("decoder_") or k in ("hook_embed", "hook_pos_embed") for k in self.cache_dict)
        return "decoder" if has_decoder else "encoder"

    def stack(self, stack: StackName | None = None) -> ActivationCache:
        """TransformerLens's cache of one stack under TL's names (`blocks.{l}.*`, `ln_final.*`,
        `hook_embed`), over the same tensors."""
        stack = stack or self.default_stack
        if stack not in STACKS:
            raise ValueError(f"stack must be 'encoder' or 'decoder', not {stack!r}")
        view = _Renamed(self.cache_dict, partial(tl_to_whisper, stack=stack), partial(whisper_to_tl, stack=stack))
        cls = DecoderActivationCache if stack == "decoder" else ActivationCache
        return cls(view, self.model.stack_model(stack), has_batch_dim=self.has_batch_dim)

    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        parts = [key] if isinstance(key, str) else list(key)
        stack = parts.pop() if len(parts) > 1 and parts[-1] in STACKS else None
        try:
            return self.stack(stack)[tuple(parts) if len(parts) > 1 else parts[0]]
        except (KeyError, AssertionError, ValueError):
            pass
        layer = parts[1] if len(parts) > 1 else None
        if layer is not None and layer < 0:
            layer += self.model.stack_config(stack or self.default_stack).n_layers
        try:
            name = names.get_act_name(parts[0], layer, stack or (self.default_stack if layer is not None else None))
        except ValueError as err:
            raise KeyError(str(err)) from None
        if name not in self.cache_dict:
            raise KeyError(
                f"{key!r} ({name}) is not in the cache; it holds {len(self.cache_dict)} activations, "
                f"e.g. {sorted(self.cache_dict)[:3]}. Cache it with names_filter, or name the stack: "
                "cache[name, layer, 'encoder' or 'decoder']"
            )
        return self.cache_dict[name]

    accumulated_resid = _per_stack("accumulated_resid")
    decompose_resid = _per_stack("decompose_resid")
    apply_ln_to_stack = _per_stack("apply_ln_to_stack")
    logit_attrs = _per_stack("logit_attrs")
    compute_head_results = _per_stack("compute_head_results")
    stack_head_results = _per_stack("stack_head_results")
    stack_activation = _per_stack("stack_activation")
    get_neuron_results = _per_stack("get_neuron_results")
    stack_neuron_results = _per_stack("stack_neuron_results")
    get_full_resid_decomposition = _per_stack("get_full_resid_decomposition")

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> WhisperActivationCache:
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        return WhisperActivationCache(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)
