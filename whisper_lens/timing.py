"""Word timestamps, computed the way openai-whisper computes them.

    [t] = model.transcribe(audio, word_timestamps=True)
    t.words[0].word, t.words[0].start, t.words[0].end, t.words[0].probability

For each 30 s window: teacher-force the transcript after `<|notimestamps|>`, read the
cross-attention scores of the alignment heads (`decoder_blocks.{l}.cross_attn.hook_attn_scores`),
softmax them over the window's real frames, standardise each head over tokens, median-filter
along time, average the heads, and align tokens to frames with DTW; word boundaries are the
token jumps at word starts. Punctuation is merged into its neighbour and over-long words at
sentence boundaries are cut, as in openai-whisper's `add_word_timestamps`. The numeric pieces
(DTW, median filter, punctuation merging) are openai-whisper's own functions.

The heads are the model's `alignment_heads` (the table shipped with OpenAI's checkpoints) unless
others are passed, e.g. from `whisper_lens.analysis.find_alignment_heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from whisper_lens.audio import HOP_LENGTH, SAMPLE_RATE
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper

TOKENS_PER_SECOND = SAMPLE_RATE / (2 * HOP_LENGTH)  # encoder positions per second (50)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class WordTiming:
    """One word of a transcript, with openai-whisper's field names."""

    word: str  # as decoded, with its leading space and merged punctuation
    start: float  # seconds from the start of the clip
    end: float
    probability: float  # mean probability of the word's tokens, teacher-forced
    tokens: tuple[int, ...] = ()


def heads_of(model: HookedWhisper, heads: Sequence[tuple[int, int]] | Tensor | None) -> list[tuple[int, int]]:
    """(layer, head) pairs: the given ones, else the model's alignment-heads table."""
    if heads is None:
        heads = model.alignment_heads
    if isinstance(heads, Tensor):
        heads = [tuple(x) for x in heads.to_dense().nonzero().tolist()] if heads.dtype == torch.bool \
            else [tuple(x) for x in heads.tolist()]
    pairs = [(int(l), int(h)) for l, h in heads]
    if not pairs:
        raise ValueError("no alignment heads: this model has no table; pass heads=... (e.g. from "
                         "whisper_lens.analysis.find_alignment_heads)")
    n_layers, n_heads = model.dims.n_text_layer, model.dims.n_text_head
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ValueError(f"alignment heads {bad} do not exist: the decoder has {n_layers} layers of {n_heads} heads")
    return pairs


@torch.no_grad()
def find_alignment(model: HookedWhisper, text_tokens: Sequence[int], mel: Tensor, num_frames: int, *,
                   heads: Sequence[tuple[int, int]] | Tensor | None = None, language: str | None = None,
                   task: str = "transcribe", medfilt_width: int = 7, qk_scale: float = 1.0) -> list[Any]:
    """openai-whisper's `find_alignment` on HookedWhisper: one window's log-mel [n_mels frames]
    and its transcript tokens -> `whisper.timing.WordTiming`s (times within the window)."""
    from whisper.timing import WordTiming as OpenAIWordTiming
    from whisper.timing import dtw, median_filter

    text_tokens = list(text_tokens)
    if not text_tokens:
        return []
    tok = model.tokenizer
    sot = model.sot_sequence(language=language, task=task, timestamps=True)  # no <|notimestamps|> yet
    tokens = torch.tensor([[*sot, tok.no_timestamps, *text_tokens, tok.eot]], device=model.device)
    pairs = heads_of(model, heads)
    scores: dict[int, Tensor] = {}
    hooks = [(get_act_name("cross_attn_scores", layer, "decoder"),
              lambda act, hook, layer=layer: scores.__setitem__(layer, act[0].float()))
             for layer in sorted({l for l, _ in pairs})]
    logits = model.run_with_hooks(mel[None].to(model.dtype), tokens, fwd_hooks=hooks)[0]
    token_probs = logits[len(sot):, : tok.eot].float().softmax(-1)
    text_token_probs = token_probs[np.arange(len(text_tokens)), text_tokens].tolist()

    weights = torch.stack([scores[l][h] for l, h in pairs])  # [head token frame]
    weights = weights[:, :, : num_frames // 2]
    weights = (weights * qk_scale).softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(axis=0)[len(sot) : -1]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tok.split_to_word_tokens(text_tokens + [tok.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    probs = [np.mean(text_token_probs[i:j]) for i, j in zip(boundaries[:-1], boundaries[1:])]
    return [OpenAIWordTiming(w, t, s, e, p) for w, t, s, e, p in zip(words, word_tokens, starts, ends, probs)]


def window_word_timings(model: HookedWhisper, text_tokens: Sequence[int], mel: Tensor, num_frames: int, *,
                        offset: float = 0.0, last_speech: float = 0.0, **options: Any) -> tuple[list[WordTiming], float]:
    """Word timings of one window as openai-whisper's `add_word_timestamps` gives them for a
    window decoded as one segment; returns them (in clip time) and the new last-speech time."""
    from whisper.timing import merge_punctuations

    alignment = find_alignment(model, [t for t in text_tokens if t < model.tokenizer.eot], mel, num_frames,
                               **options)
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):  # truncate long words at sentence boundaries
        marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in marks:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in marks:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    words = [dict(word=t.word, start=round(offset + t.start, 2), end=round(offset + t.end, 2),
                  probability=float(t.probability), tokens=tuple(t.tokens)) for t in alignment if t.word]
    if words:  # the first words after a pause are no longer than twice the median word
        if words[0]["end"] - last_speech > median * 4 and (
                words[0]["end"] - words[0]["start"] > longest
                or (len(words) > 1 and words[1]["end"] - words[0]["start"] > longest * 2)):
            if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
                boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
                words[0]["end"] = words[1]["start"] = boundary
            words[0]["start"] = max(0, words[0]["end"] - longest)
        last_speech = words[-1]["end"]
    return [WordTiming(**w) for w in words], last_speech
