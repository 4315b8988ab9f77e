"""A stack-aware ActivationCache: TransformerLens's class, taught that Whisper has two stacks.

TransformerLens's helpers hard-code `blocks.{l}`; these take `stack="encoder"` or
`stack="decoder"` and know the decoder's cross-attention terms. Everything else (dict access,
`to`, `remove_batch_dim`, ...) is TransformerLens's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities import Slice

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper

StackName = Literal["encoder", "decoder"]
_EMBEDS = {"encoder": ("hook_audio_embed", "hook_audio_pos_embed"), "decoder": ("hook_embed", "hook_pos_embed")}
_FINAL_LN = {"encoder": "encoder_ln_final", "decoder": "decoder_ln_final"}


class WhisperActivationCache(ActivationCache):
    """Activations from `HookedWhisper.run_with_cache`, keyed by hook name.

    `cache["encoder_blocks.2.hook_resid_post"]` or the short form
    `cache["resid_post", 2, "encoder"]` (name, layer, stack).
    """

    model: HookedWhisper

    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, str):
            if key in self.cache_dict:
                return self.cache_dict[key]
            raise KeyError(
                f"{key!r} is not in the cache; cached names start with "
                f"{sorted(self.cache_dict)[:3]}... (use a full hook name, or (name, layer, stack))"
            )
        name, layer, *rest = key
        if not rest or rest[0] not in ("encoder", "decoder"):
            raise KeyError(f"short keys need the stack: cache[{name!r}, {layer}, 'encoder' or 'decoder']")
        stack = rest[0]
        if layer is not None and layer < 0:
            layer += self._n_layers(stack)
        return self.cache_dict[self.model.get_act_name(name, layer, stack)]

    def _n_layers(self, stack: StackName) -> int:
        return self.model.dims.n_audio_layer if stack == "encoder" else self.model.dims.n_text_layer

    def _block(self, stack: StackName, layer: int, leaf: str) -> Tensor:
        name = f"{stack}_blocks.{layer}.{leaf}"
        if name not in self.cache_dict:
            raise KeyError(f"{name} was not cached; run_with_cache with a names_filter that includes it")
        return self.cache_dict[name]

    def accumulated_resid(
        self,
        layer: int | None = None,
        *,
        stack: StackName = "decoder",
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Slice | None = None,
        return_labels: bool = False,
    ) -> Float[Tensor, "layers_covered *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before each block up to `layer` (inclusive; `None` = all blocks and
        the final resid_post), as TransformerLens's `accumulated_resid`, for one stack."""
        n_layers = self._n_layers(stack)
        if layer is None or layer == -1:
            layer = n_layers
        mids = ["hook_resid_mid", "hook_resid_mid_cross"] if stack == "decoder" else ["hook_resid_mid"]
        components, labels = [], []
        for l in range(layer + 1):
            if l == n_layers:
                components.append(self._block(stack, n_layers - 1, "hook_resid_post"))
                labels.append("final_post")
                continue
            components.append(self._block(stack, l, "hook_resid_pre"))
            labels.append(f"{l}_pre")
            if incl_mid and l < layer:
                for mid in mids:
                    components.append(self._block(stack, l, mid))
                    labels.append(f"{l}_{mid.removeprefix('hook_resid_')}")
        stacked = torch.stack(components)
        stacked = Slice.unwrap(pos_slice).apply(stacked, dim=-2)
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, stack=stack, pos_slice=pos_slice)
        return (stacked, labels) if return_labels else stacked

    def decompose_resid(
        self,
        layer: int | None = None,
        *,
        stack: StackName = "decoder",
        mode: Literal["all", "attn", "cross_attn", "mlp"] = "all",
        apply_ln: bool = False,
        incl_embeds: bool = True,
        pos_slice: Slice | None = None,
        return_labels: bool = False,
    ) -> Float[Tensor, "components *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before block `layer` (None = after the last block) split into what
        wrote it: embeddings, then per block the self-attention, cross-attention (decoder) and MLP
        outputs. The components sum to the residual stream."""
        n_layers = self._n_layers(stack)
        if layer is None or layer == -1:
            layer = n_layers
        parts = {"attn": ["hook_attn_out"], "cross_attn": ["hook_cross_attn_out"], "mlp": ["hook_mlp_out"]}
        order = ["hook_attn_out", "hook_cross_attn_out", "hook_mlp_out"] if stack == "decoder" else [
            "hook_attn_out", "hook_mlp_out"]
        wanted = order if mode == "all" else [p for p in order if p in parts[mode]]
        components, labels = [], []
        if incl_embeds:
            for name in _EMBEDS[stack]:
                components.append(self.cache_dict[name])
                labels.append(name.removeprefix("hook_"))
        for l in range(layer):
            for leaf in wanted:
                components.append(self._block(stack, l, leaf))
                labels.append(f"{l}_{leaf.removeprefix('hook_').removesuffix('_out')}")
        batch_shape = components[-1].shape
        stacked = torch.stack([c.expand(batch_shape) for c in components])
        stacked = Slice.unwrap(pos_slice).apply(stacked, dim=-2)
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, stack=stack, pos_slice=pos_slice)
        return (stacked, labels) if return_labels else stacked

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "components *batch_and_pos d_model"],
        layer: int | None = None,
        *,
        stack: StackName = "decoder",
        mlp_input: bool = False,
        pos_slice: Slice | None = None,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "components *batch_and_pos d_model"]:
        """Centre each component and divide by the cached layer-norm scale of the layer it feeds
        (`layer == n_layers`: the stack's final layer norm), as TransformerLens does.

        The layer norm's weight and bias are not applied (TransformerLens assumes they were folded
        into the next weights; `logit_attrs` applies the final weight itself).
        `recompute_ln=True` normalises each component by its own statistics (logit lens)."""
        n_layers = self._n_layers(stack)
        if layer is None or layer == -1:
            layer = n_layers
        residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        if recompute_ln:
            eps = 1e-5
            return residual_stack / (residual_stack.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        if layer == n_layers:
            scale_name = f"{_FINAL_LN[stack]}.hook_scale"
        else:
            ln = "ln1" if not mlp_input else ("ln3" if stack == "decoder" else "ln2")
            scale_name = f"{stack}_blocks.{layer}.{ln}.hook_scale"
        if scale_name not in self.cache_dict:
            raise KeyError(f"{scale_name} was not cached; apply_ln needs it")
        scale = Slice.unwrap(pos_slice).apply(self.cache_dict[scale_name], dim=-2)
        return residual_stack / scale

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "components *batch_and_pos d_model"],
        tokens: Tensor | int | str,
        incorrect_tokens: Tensor | int | str | None = None,
        *,
        pos_slice: Slice | None = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "components *batch_and_pos"]:
        """Each decoder component's direct contribution to the logit of `tokens` (minus
        `incorrect_tokens`): through the cached final layer-norm scale, its weight, and `W_U`.

        With `decompose_resid(stack="decoder")` as the stack, the attributions plus the final
        layer norm's bias term sum to the logits."""
        del has_batch_dim  # shapes broadcast either way
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            directions = directions - self.model.tokens_to_residual_directions(incorrect_tokens)
        directions = directions * self.model.decoder_ln_final.w
        scaled = self.apply_ln_to_stack(residual_stack, None, stack="decoder", pos_slice=pos_slice)
        return (scaled * directions.to(scaled.dtype)).sum(-1)

    def stack_activation(
        self, activation_name: str, layer: int = -1, *, stack: StackName = "decoder"
    ) -> Float[Tensor, "layers *shape"]:
        """One activation stacked over blocks [0, layer) of a stack (-1: all blocks)."""
        layer = self._n_layers(stack) if layer == -1 else layer
        return torch.stack([self[activation_name, l, stack] for l in range(layer)])
