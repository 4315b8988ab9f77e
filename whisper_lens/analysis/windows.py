"""Attention-window interventions (Reid, 2023): how local can the encoder's attention be?

    with restrict_attention(model, stack="encoder", window=75):
        model.transcribe(clips)
    df = attention_window_sweep(model, clips, windows=[10, 25, 50, 75, 150, None])

Each query may attend only to keys within +-`window` positions (50 per second), enforced by
setting the other attention scores to -inf before the softmax (so hooks see the masked pattern).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from whisper_lens.generate import transcribe_texts
from whisper_lens.metrics import word_error_rate
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    import pandas as pd

    from whisper_lens.model import HookedWhisper


def window_hook(window: int):
    """A hook on `hook_attn_scores` that keeps only keys within +-`window` of each query."""
    if window < 0:
        raise ValueError(f"window must be >= 0 positions, got {window}")

    def hook(scores: Tensor, hook: Any) -> Tensor:
        n_query, n_key = scores.shape[-2], scores.shape[-1]
        q = torch.arange(n_query, device=scores.device)[:, None] + (n_key - n_query)
        k = torch.arange(n_key, device=scores.device)[None, :]
        outside = (q - k).abs() > window
        if scores.requires_grad:
            return scores.masked_fill(outside, float("-inf"))
        return scores.masked_fill_(outside, float("-inf"))  # in place: no second [batch head q k] buffer

    return hook


@contextmanager
def restrict_attention(model: HookedWhisper, *, stack: Literal["encoder", "decoder"] = "encoder",
                       window: int, layers: Sequence[int] | None = None) -> Iterator[HookedWhisper]:
    """Limit self-attention in `stack` (all layers, or `layers`) to +-`window` positions."""
    n = model.dims.n_audio_layer if stack == "encoder" else model.dims.n_text_layer
    layers = range(n) if layers is None else layers
    hooks = [(get_act_name("attn_scores", l, stack), window_hook(window)) for l in layers]
    with model.hooks(fwd_hooks=hooks):
        yield model


@torch.no_grad()
def attention_window_sweep(model: HookedWhisper, clips: Sequence[Any], *,
                           windows: Sequence[int | None] = (5, 10, 25, 50, 75, 100, 150, None),
                           stack: Literal["encoder", "decoder"] = "encoder", batch_size: int = 8,
                           encoder_batch_size: int = 2, max_new_tokens: int | None = None) -> pd.DataFrame:
    """Word error rate against the window size (None = unrestricted), against the references
    (when the clips have transcripts) and against the unrestricted model's transcripts.
    `max_new_tokens` caps degenerate (looping) transcripts at small windows.

    Clips are transcribed `batch_size` at a time; the restricted encoder runs on
    `encoder_batch_size` windows at a time, since masking materialises its attention patterns
    (tiny.en: 54 MB per window, layer and tensor)."""
    import pandas as pd

    clips = list(clips)
    refs = [getattr(c, "text", None) for c in clips]

    def run() -> list[str]:
        return transcribe_texts(model, clips, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                encoder_batch_size=encoder_batch_size)

    full = run()
    rows = []
    for window in windows:
        if window is None:
            hyp = full
        else:
            with restrict_attention(model, stack=stack, window=window):
                hyp = run()
        row = {"window": window, "seconds": None if window is None else window / 50,
               "wer_vs_full": word_error_rate(full, hyp), "transcripts": hyp}
        if all(refs):
            row["wer_vs_reference"] = word_error_rate(refs, hyp)
        rows.append(row)
    return pd.DataFrame(rows)
