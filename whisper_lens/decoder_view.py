"""Whisper's decoder as a TransformerLens language model, conditioned on audio.

`model.with_audio(audio)` runs the encoder once and returns a `HookedWhisperDecoder`: a real
`HookedTransformer` (its forward, `run_with_cache`, `generate`, `to_tokens`, weight processing,
`W_Q`...`W_out`, `OV`, `QK` are TransformerLens's own) whose blocks also cross-attend to that
audio. TransformerLens code cannot tell it from a text model; hook names are HookedTransformer's:

    hook_embed, hook_pos_embed,
    blocks.{l}.hook_resid_pre -> ln1 -> attn.* -> hook_attn_out -> hook_resid_mid
        -> ln_cross -> cross_attn.* (keys and values from hook_encoder_out) -> hook_cross_attn_out
        -> hook_resid_mid_cross -> ln2 -> mlp.* -> hook_mlp_out -> hook_resid_post,
    ln_final.*, unembed

`ln2` feeds the MLP, as in every HookedTransformer (HookedWhisper's own decoder blocks call it
`ln3`, and their `ln2` is `ln_cross` here).

Rows of tokens may be one per audio or N per audio (row i reads audio i // N): the encoder
output is broadcast, never recomputed. Weights are processed as SAELens loads models
(`fold_ln=True, center_writing_weights=False, center_unembed=True, fold_value_biases=True`), so
the residual stream equals HookedWhisper's and SAEs transfer between the two; views made with the
same processing share one copy of the processed decoder weights.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import Attention, LayerNorm, LayerNormPre, TransformerBlock
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import repeat_along_head_dimension

from whisper_lens.cache import DecoderActivationCache, accumulated_bias

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper


def broadcast_audio(
    encoder_out: Float[Tensor, "n_audio audio_pos d_model"], batch: int
) -> Float[Tensor, "batch audio_pos d_model"]:
    """The encoder output for `batch` token rows: one row per audio, or N rows per audio."""
    n_audio = encoder_out.shape[0]
    if batch == n_audio:
        return encoder_out
    if n_audio == 1:
        return encoder_out.expand(batch, -1, -1)
    if batch % n_audio == 0:
        return encoder_out.repeat_interleave(batch // n_audio, dim=0)
    raise ValueError(
        f"the view holds {n_audio} audio items but the tokens have {batch} rows; pass one row per "
        f"audio, N rows per audio (row i reads audio i // N), or make a view of the audio you need"
    )


class AudioContext:
    """The audio a view's cross-attention reads; hooked once per forward pass at `hook_encoder_out`."""

    def __init__(self, encoder_out: Tensor, hook: HookPoint):
        self.encoder_out = encoder_out
        self.hook = hook
        self._this_pass: Tensor | None = None

    def reset(self) -> None:
        self._this_pass = None

    def for_batch(self, batch: int) -> Float[Tensor, "batch audio_pos d_model"]:
        if self._this_pass is None or self._this_pass.shape[0] != batch:
            self._this_pass = self.hook(broadcast_audio(self.encoder_out, batch))
        return self._this_pass


class CrossAttention(Attention):
    """TransformerLens's attention, reading keys and values from the audio and never masked."""

    def __init__(self, cfg: HookedTransformerConfig, layer_id: int):
        super().__init__(cfg, "global", layer_id)
        self._attention_dir_override = "bidirectional"


def _norm(cfg: HookedTransformerConfig) -> nn.Module:
    return LayerNormPre(cfg) if cfg.normalization_type == "LNPre" else LayerNorm(cfg)


class WhisperDecoderBlock(TransformerBlock):
    """TransformerLens's block with Whisper's cross-attention between self-attention and MLP."""

    def __init__(self, cfg: HookedTransformerConfig, block_index: int, audio: AudioContext):
        super().__init__(cfg, block_index)
        self.ln_cross = _norm(self.cfg)
        self.cross_attn = CrossAttention(self.cfg, block_index)
        self.hook_cross_attn_out = HookPoint()  # [batch text_pos d_model]
        self.hook_resid_mid_cross = HookPoint()  # [batch text_pos d_model]
        self.audio = audio

    def forward(
        self,
        resid_pre: Float[Tensor, "batch text_pos d_model"],
        shortformer_pos_embed: Tensor | None = None,
        past_kv_cache_entry: Any = None,
        attention_mask: Tensor | None = None,
    ) -> Float[Tensor, "batch text_pos d_model"]:
        del shortformer_pos_embed  # Whisper's text positions are added to the embedding
        resid_pre = self.hook_resid_pre(resid_pre)
        q_in, k_in, v_in = self._attention_inputs(resid_pre)
        attn_out = self.attn(self.ln1(q_in), self.ln1(k_in), self.ln1(v_in),
                             past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)
        x = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        x = self.hook_resid_mid_cross(x + self.hook_cross_attn_out(self._cross_attention(x)))
        mlp_in = self.hook_mlp_in(x.clone()) if self.cfg.use_hook_mlp_in else x
        return self.hook_resid_post(x + self.apply_mlp(self.ln2(mlp_in)))

    def _attention_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.cfg.use_split_qkv_input:
            per_head = repeat_along_head_dimension(x, n_heads=self.cfg.n_heads)
            return self.hook_q_input(per_head), self.hook_k_input(per_head), self.hook_v_input(per_head)
        if self.cfg.use_attn_in:
            x = self.hook_attn_in(repeat_along_head_dimension(x, n_heads=self.cfg.n_heads))
        return x, x, x

    def _cross_attention(self, x: Float[Tensor, "batch text_pos d_model"]) -> Tensor:
        query = self.ln_cross(x)
        xa = self.audio.for_batch(x.shape[0]).to(x.dtype)
        if self.cfg.use_split_qkv_input or self.cfg.use_attn_in:  # TL's attention then reads per-head inputs
            query = repeat_along_head_dimension(query, n_heads=self.cfg.n_heads)
            xa = repeat_along_head_dimension(xa, n_heads=self.cfg.n_heads)
        return self.cross_attn(query, xa, xa)


class HookedWhisperDecoder(HookedTransformer):
    """Whisper's decoder conditioned on fixed audio, as a TransformerLens `HookedTransformer`.

    Make it with `HookedWhisper.with_audio(audio)`. `to_tokens(text, prepend_bos=True)` prepends
    the start-of-transcript prompt (`<|startoftranscript|>` ... `<|notimestamps|>`); Whisper's
    transcripts start with a space, as GPT-2's words do (`" The birch canoe"`).
    """

    def __init__(self, cfg: HookedTransformerConfig, tokenizer: Any,
                 prompt: list[int], encoder_out: Tensor):
        with warnings.catch_warnings():  # TL 3 warns that HookedTransformer goes away in 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(cfg, move_to_device=False)
        self.tokenizer = tokenizer
        self.prompt = list(prompt)
        self.hook_encoder_out = HookPoint()  # [batch audio_pos d_model]
        self.audio = AudioContext(encoder_out, self.hook_encoder_out)
        self.blocks = nn.ModuleList(WhisperDecoderBlock(self.cfg, l, self.audio) for l in range(cfg.n_layers))
        nn.Module.to(self, self.cfg.device)  # TL's `to` also prints
        self.setup()

    # ------------------------------------------------------------------ forward
    def forward(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        self.audio.reset()  # the audio is hooked once per pass
        try:
            return super().forward(input, *args, **kwargs)
        finally:
            self.audio.reset()

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True,
                       remove_batch_dim: bool = False, **kwargs: Any) -> tuple[Any, Any]:
        out, cache_dict = super().run_with_cache(
            *model_args, return_cache_object=False, remove_batch_dim=remove_batch_dim, **kwargs
        )
        if return_cache_object:
            return out, DecoderActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def accumulated_bias(self, layer: int, mlp_input: bool = False,
                         include_mlp_biases: bool = True) -> Float[Tensor, "d_model"]:
        """Summed output biases of self-attention, cross-attention and (optionally) MLPs before `layer`."""
        return accumulated_bias(self.blocks, self.cfg, layer, mlp_input, include_mlp_biases)

    def load_and_process_state_dict(self, state_dict: dict[str, Tensor], fold_ln: bool = True,
                                    center_writing_weights: bool = True, center_unembed: bool = True,
                                    fold_value_biases: bool = True,
                                    refactor_factored_attn_matrices: bool = False) -> None:
        """TransformerLens's processing, plus the same folds for the cross-attention."""
        state_dict = _process_cross_attention(
            dict(state_dict), self.cfg.n_layers, fold_ln=fold_ln,
            center_writing_weights=center_writing_weights, fold_value_biases=fold_value_biases,
        )
        if fold_ln:
            for block in self.blocks:
                block.ln_cross = LayerNormPre(self.cfg)
        super().load_and_process_state_dict(
            state_dict, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
            center_unembed=center_unembed, fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None,
                  padding_side: str | None = None, move_to_device: bool = True,
                  truncate: bool = True) -> Int[Tensor, "batch text_pos"]:
        """Token ids, right-padded with `<|endoftext|>`; `prepend_bos` prepends the whole
        start-of-transcript prompt (default `cfg.default_prepend_bos`, True)."""
        texts = [input] if isinstance(input, str) else list(input)
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        side = padding_side or self.tokenizer.padding_side
        rows = [(self.prompt if prepend else []) + self.tokenizer.encode(t) for t in texts]
        if truncate:
            rows = [r[: self.cfg.n_ctx] for r in rows]
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            if side == "right":
                tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            else:
                tokens[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def to_str_tokens(self, input: Any, prepend_bos: bool | None = None,
                      padding_side: str | None = None) -> list[str] | list[list[str]]:
        if isinstance(input, list) and input and not isinstance(input[0], int):
            return [self.to_str_tokens(item, prepend_bos, padding_side) for item in input]  # type: ignore[misc]
        tokens = self.to_tokens(input, prepend_bos, padding_side)[0] if isinstance(input, str) \
            else torch.as_tensor(input)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                return [self.to_str_tokens(row) for row in tokens]  # type: ignore[misc]
            tokens = tokens[0]
        return self.tokenizer.convert_ids_to_tokens([int(t) for t in tokens.reshape(-1)])

    def __repr__(self) -> str:
        return (f"HookedWhisperDecoder({self.cfg.model_name!r}, {self.cfg.n_layers} layers, "
                f"{self.audio.encoder_out.shape[0]} audio item(s), {self.cfg.normalization_type})")


# ---------------------------------------------------------------------- building a view
def tl_state_dict(model: HookedWhisper) -> dict[str, Tensor]:
    """HookedWhisper's decoder weights under HookedTransformer's names (unprocessed)."""
    sd: dict[str, Tensor] = {
        "embed.W_E": model.W_E.detach(),
        "pos_embed.W_pos": model.W_pos.detach(),
        "ln_final.w": model.decoder_ln_final.w.detach(),
        "ln_final.b": model.decoder_ln_final.b.detach(),
        "unembed.W_U": model.W_E.detach().T,
        "unembed.b_U": model.W_E.new_zeros(model.dims.n_vocab),
    }
    for l, block in enumerate(model.decoder_blocks):
        for tl_ln, ln in (("ln1", block.ln1), ("ln_cross", block.ln2), ("ln2", block.ln3)):
            sd[f"blocks.{l}.{tl_ln}.w"], sd[f"blocks.{l}.{tl_ln}.b"] = ln.w.detach(), ln.b.detach()
        for part in ("attn", "cross_attn"):
            attn = getattr(block, part)
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
                sd[f"blocks.{l}.{part}.{name}"] = getattr(attn, name).detach()
        for name in ("W_in", "b_in", "W_out", "b_out"):
            sd[f"blocks.{l}.mlp.{name}"] = getattr(block.mlp, name).detach()
    return {k: v.clone() for k, v in sd.items()}


def _process_cross_attention(sd: dict[str, Tensor], n_layers: int, *, fold_ln: bool,
                             center_writing_weights: bool, fold_value_biases: bool) -> dict[str, Tensor]:
    """TransformerLens's folds, applied to the cross-attention TransformerLens does not know.

    Only queries read the decoder's residual stream (keys and values read the encoder output),
    so `ln_cross` folds into `W_Q`/`b_Q` alone."""
    for l in range(n_layers):
        p = f"blocks.{l}."
        if fold_ln:
            w, b = sd.pop(p + "ln_cross.w"), sd.pop(p + "ln_cross.b")
            W_Q = sd[p + "cross_attn.W_Q"]
            sd[p + "cross_attn.b_Q"] = sd[p + "cross_attn.b_Q"] + einops.einsum(W_Q, b, "h d e, d -> h e")
            W_Q = W_Q * w[None, :, None]
            sd[p + "cross_attn.W_Q"] = W_Q - W_Q.mean(1, keepdim=True)  # its input is centred
        if center_writing_weights:
            W_O = sd[p + "cross_attn.W_O"]
            sd[p + "cross_attn.W_O"] = W_O - W_O.mean(-1, keepdim=True)
            sd[p + "cross_attn.b_O"] = sd[p + "cross_attn.b_O"] - sd[p + "cross_attn.b_O"].mean()
        if fold_value_biases:
            b_V = sd[p + "cross_attn.b_V"]
            sd[p + "cross_attn.b_O"] = sd[p + "cross_attn.b_O"] + einops.einsum(
                b_V, sd[p + "cross_attn.W_O"], "h e, h e d -> d")
            sd[p + "cross_attn.b_V"] = torch.zeros_like(b_V)
    return sd


def _fingerprint(model: HookedWhisper) -> tuple:
    params = [model.W_E, model.W_pos, *model.decoder_ln_final.parameters(), *model.decoder_blocks.parameters()]
    return tuple((p.data_ptr(), p._version, p.dtype, str(p.device)) for p in params)


def make_decoder_view(model: HookedWhisper, encoder_out: Tensor, *, prompt: list[int],
                      processing: dict[str, bool]) -> HookedWhisperDecoder:
    """A view over `encoder_out`, sharing processed weights with earlier views of the same processing."""
    store: dict = model.__dict__.setdefault("_decoder_view_weights", {})
    key = tuple(sorted(processing.items()))
    fingerprint = _fingerprint(model)
    tokenizer = model.tokenizer
    kept = store.get(key)
    if kept is not None and kept[0] == fingerprint:
        _, cfg, weights = kept
        view = HookedWhisperDecoder(copy.deepcopy(cfg), tokenizer, prompt, encoder_out)
        view.load_state_dict(weights, strict=True, assign=True)
        return view
    view = HookedWhisperDecoder(model.decoder_cfg.to_transformer_lens(), tokenizer, prompt, encoder_out)
    view.load_and_process_state_dict(tl_state_dict(model), **processing)
    view.setup()
    store[key] = (fingerprint, copy.deepcopy(view.cfg), view.state_dict())
    return view
