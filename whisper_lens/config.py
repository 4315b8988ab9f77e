"""Model dimensions and the TransformerLens-style per-stack configs derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformer_lens import HookedTransformerConfig


@dataclass(frozen=True)
class WhisperDims:
    """Whisper's architecture, field for field openai-whisper's `ModelDimensions`."""

    n_mels: int  # mel bins of the input spectrogram (80, or 128 from large-v3 on)
    n_audio_ctx: int  # encoder positions (1500 for a 30 s window)
    n_audio_state: int  # encoder width
    n_audio_head: int  # encoder attention heads
    n_audio_layer: int  # encoder blocks
    n_vocab: int  # vocabulary size (51864 English-only, 51865+ multilingual)
    n_text_ctx: int  # decoder positions (448)
    n_text_state: int  # decoder width
    n_text_head: int  # decoder attention heads
    n_text_layer: int  # decoder blocks

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.n_vocab - 51765 - int(self.is_multilingual)

    @property
    def n_mel_frames(self) -> int:
        """Mel frames in one window (conv2 halves them into audio positions)."""
        return 2 * self.n_audio_ctx

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class StackConfig:
    """What TransformerLens and SAELens code reads from `model.cfg`, for one stack."""

    model_name: str  # checkpoint name, e.g. "tiny.en"
    stack: Literal["encoder", "decoder"]  # which half of Whisper this describes
    n_layers: int  # blocks in this stack
    d_model: int  # residual stream width
    n_heads: int  # attention heads per layer
    d_head: int  # width of one head
    d_mlp: int  # MLP hidden width (4 * d_model)
    n_ctx: int  # positions (audio_pos for the encoder, text_pos for the decoder)
    d_vocab: int  # vocabulary size (decoder; the encoder reads no tokens but shares it)
    device: torch.device  # where the weights are now
    dtype: torch.dtype  # weight dtype
    act_fn: str = "gelu"  # exact (erf) GELU, as Whisper uses
    normalization_type: str = "LN"  # LayerNorm with weight and bias
    eps: float = 1e-5  # LayerNorm epsilon
    positional_embedding_type: str = "standard"  # "sinusoidal" (encoder) or learned (decoder)
    attn_only: bool = False  # Whisper blocks always have an MLP
    default_prepend_bos: bool = False  # Whisper prompts start with <|startoftranscript|> instead
    original_architecture: str = "Whisper"

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    def to_transformer_lens(self) -> HookedTransformerConfig:
        """This stack as a real `HookedTransformerConfig` (what TL's helpers and patching read)."""
        decoder = self.stack == "decoder"
        return HookedTransformerConfig(
            model_name=self.model_name,
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
            act_fn=self.act_fn,
            eps=self.eps,
            normalization_type=self.normalization_type,
            positional_embedding_type="standard",  # both stacks add positions to the embedding
            attention_dir="causal" if decoder else "bidirectional",
            original_architecture=f"Whisper{self.stack.capitalize()}",
            default_prepend_bos=decoder,  # the decoder's prompt starts with <|startoftranscript|>
            tokenizer_prepends_bos=False,
            init_weights=False,
            device=str(self.device),
            dtype=self.dtype,
        )
