"""Transcription with hooks live: greedy, sampled or beam-search decoding with the model's own
key/value cache, language detection, and long audio window by window.

Decoding follows openai-whisper's `decode` with `without_timestamps=True`: the prompt
<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>, blank and end-of-text suppressed at
the first step, non-speech and special tokens suppressed throughout, beams ranked by
length-normalised log-probability.

Hooks registered on the model (with `model.hooks(...)` or `fwd_hooks=`) fire at every step.
The first step runs the whole prompt; each later step runs one new position, so a decoder hook
sees [batch 1 ...] activations there (batch = items x beams), and self-attention keys/values of
earlier positions come from the cache (their hooks fired when those positions were computed).
Cross-attention keys/values are computed, and hooked, once on the first step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from whisper_lens.audio import HOP_LENGTH, AudioBatch
from whisper_lens.components import KVCache
from whisper_lens.timing import WordTiming, window_word_timings

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper


@dataclass(frozen=True)
class Transcription:
    """The transcript of one input (its windows joined, for long audio)."""

    text: str  # the transcript
    tokens: tuple[int, ...]  # generated tokens, prompt and end-of-text excluded
    avg_logprob: float  # mean log-probability per generated token (end-of-text included)
    no_speech_prob: float  # probability of <|nospeech|> at the start-of-transcript position
    language: str | None  # language of the prompt (None for English-only models)
    words: tuple[WordTiming, ...] | None = None  # with word_timestamps=True (openai-whisper's fields)


def suppress_tokens(model: HookedWhisper) -> list[int]:
    """openai-whisper's default suppression ("-1"): non-speech tokens plus task/special tokens."""
    tok = model.tokenizer
    ids = set(tok.non_speech_tokens)
    ids.update([tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm])
    if tok.no_speech is not None:
        ids.add(tok.no_speech)
    return sorted(ids)


@torch.no_grad()
def detect_language(model: HookedWhisper, encoder_out: Tensor) -> tuple[list[str], list[dict[str, float]]]:
    """Most likely language per item, and the language probabilities, from the logits after
    <|startoftranscript|> (multilingual models only)."""
    if not model.dims.is_multilingual:
        raise ValueError(f"{model.model_name} is English-only: it has no language tokens to detect")
    tok = model.tokenizer
    sot = torch.full((encoder_out.shape[0], 1), tok.sot, device=model.device)
    logits = model.decode(sot, encoder_out)[:, 0]
    lang_ids = list(tok.all_language_tokens)
    probs = logits[:, lang_ids].float().softmax(-1).cpu()
    codes = list(tok.all_language_codes)
    return [codes[i] for i in probs.argmax(-1).tolist()], [dict(zip(codes, p.tolist())) for p in probs]


class _Filters:
    """Logit filters applied at every step, as openai-whisper applies them."""

    def __init__(self, model: HookedWhisper):
        tok = model.tokenizer
        self.suppress = torch.tensor(suppress_tokens(model), device=model.device)
        self.blank = torch.tensor(tok.encode(" ") + [tok.eot], device=model.device)

    def __call__(self, logits: Tensor, step: int) -> Tensor:
        logits[:, self.suppress] = float("-inf")
        if step == 0:
            logits[:, self.blank] = float("-inf")
        return logits


def _sample(model, encoder_out, prompts, max_new, temperature, filters) -> tuple[list[list[int]], list[float], Tensor]:
    eot = model.tokenizer.eot
    n = prompts.shape[0]
    cache, done = KVCache(), torch.zeros(n, dtype=torch.bool, device=model.device)
    sum_lp = torch.zeros(n, device=model.device)
    out: list[Tensor] = []
    step_input, no_speech = prompts, None
    for step in range(max_new):
        logits = model.decode(step_input, encoder_out, kv_cache=cache)
        if step == 0:
            no_speech = _no_speech(model, logits)
        logits = filters(logits[:, -1].float(), step)
        if temperature == 0:
            next_tokens = logits.argmax(-1)
        else:
            next_tokens = torch.distributions.Categorical(logits=logits / temperature).sample()
        sum_lp += logits.log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0] * ~done
        next_tokens = torch.where(done, torch.full_like(next_tokens, eot), next_tokens)
        out.append(next_tokens)
        done |= next_tokens == eot
        if bool(done.all()) or prompts.shape[1] + len(out) >= model.dims.n_text_ctx:
            break
        step_input = next_tokens[:, None]
    generated = torch.stack(out, 1).tolist() if out else [[] for _ in range(n)]
    seqs = [g[: g.index(eot)] if eot in g else g for g in generated]
    return seqs, sum_lp.tolist(), no_speech


def _beam(model, encoder_out, prompts, max_new, beam_size, filters, patience=1.0):
    eot = model.tokenizer.eot
    n, prompt_len = prompts.shape
    max_candidates = round(beam_size * patience)
    encoder_out = encoder_out.repeat_interleave(beam_size, 0)
    tokens = prompts.repeat_interleave(beam_size, 0)
    sum_lp = torch.zeros(n * beam_size)
    finished: list[dict[tuple, float]] = [{} for _ in range(n)]
    cache, step_input, no_speech = KVCache(), tokens, None
    for step in range(max_new):
        logits = model.decode(step_input, encoder_out, kv_cache=cache)
        if step == 0:
            no_speech = _no_speech(model, logits)[::beam_size]
        logprobs = filters(logits[:, -1].float(), step).log_softmax(-1).cpu()
        next_seqs, sources, new_lp = [], [], []
        for i in range(n):
            scores, origin = {}, {}
            for j in range(beam_size):
                idx = i * beam_size + j
                prefix = tokens[idx].tolist()
                for lp, token in zip(*logprobs[idx].topk(beam_size + 1)):
                    seq = tuple(prefix + [int(token)])
                    scores[seq], origin[seq] = float(sum_lp[idx] + lp), idx
            kept = 0
            for seq in sorted(scores, key=scores.get, reverse=True):
                if seq[-1] == eot:
                    if len(finished[i]) < max_candidates:
                        finished[i][seq] = scores[seq]
                else:
                    next_seqs.append(seq)
                    sources.append(origin[seq])
                    new_lp.append(scores[seq])
                    kept += 1
                    if kept == beam_size:
                        break
        tokens = torch.tensor(next_seqs, device=model.device)
        sum_lp = torch.tensor(new_lp)
        cache.reorder(torch.tensor(sources, device=model.device))
        if all(len(f) >= max_candidates for f in finished) or tokens.shape[1] >= model.dims.n_text_ctx:
            break
        step_input = tokens[:, -1:]
    seqs, lps = [], []
    for i in range(n):
        candidates = dict(finished[i])
        if len(candidates) < beam_size:  # not enough finished: take the best live beams too
            order = sum_lp[i * beam_size:(i + 1) * beam_size].argsort(descending=True).tolist()
            for j in order:
                candidates.setdefault(tuple(tokens[i * beam_size + j].tolist()) + (eot,), float(sum_lp[i * beam_size + j]))
                if len(candidates) >= beam_size:
                    break
        # openai-whisper's ranking: log-probability divided by length (no length penalty)
        best = max(candidates, key=lambda s: candidates[s] / max(len(_strip(s, prompt_len, eot)), 1))
        seqs.append(_strip(best, prompt_len, eot))
        lps.append(candidates[best])
    return seqs, lps, no_speech


def _strip(seq: tuple, prompt_len: int, eot: int) -> list[int]:
    body = list(seq[prompt_len:])
    return body[: body.index(eot)] if eot in body else body


def _no_speech(model, logits: Tensor) -> Tensor:
    tok = model.tokenizer
    if tok.no_speech is None:
        return torch.full((logits.shape[0],), float("nan"))
    return logits[:, 0].float().softmax(-1)[:, tok.no_speech].cpu()


@torch.no_grad()
def transcribe(
    model: HookedWhisper,
    audio: Any = None,
    *,
    encoder_out: Tensor | None = None,
    language: str | None = None,
    task: str = "transcribe",
    beam_size: int | None = None,
    temperature: float = 0.0,
    fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
    max_new_tokens: int | None = None,
    sample_rate: int | None = None,
    encoder_batch_size: int | None = None,
    word_timestamps: bool = False,
    alignment_heads: Sequence[tuple[int, int]] | Tensor | None = None,
) -> list[Transcription]:
    """Transcribe each input: clips of any length (split into 30 s windows and joined), a list of
    waveforms or paths, an `AudioBatch`, a log-mel batch [batch n_mels 3000], or (instead of
    audio) a precomputed `encoder_out` [batch audio_pos d_model], one window per row.
    Arrays are 16 kHz unless `sample_rate` says otherwise; files carry their own rate.

    `encoder_batch_size` runs the encoder on at most that many windows per call (decoding still
    runs on all of them at once): it bounds memory when hooks materialise encoder attention
    patterns (tiny.en: 54 MB per window, layer and tensor). Encoder hooks then fire once per
    group of windows.

    `word_timestamps=True` adds `.words` (`word`, `start`, `end`, `probability`), computed as
    openai-whisper computes them (see `whisper_lens.timing`), from `alignment_heads` (default:
    the model's table; e.g. `find_alignment_heads(...)` for a checkpoint without one)."""
    if (audio is None) == (encoder_out is None):
        raise ValueError("pass exactly one of `audio` and `encoder_out`")
    if beam_size is not None and (beam_size < 1 or temperature > 0):
        raise ValueError("beam_size must be >= 1 and needs temperature=0")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if word_timestamps and (encoder_out is not None or task == "translate"):
        raise ValueError("word_timestamps needs the audio (not encoder_out) and task='transcribe'")
    n_frames: list[int] | None = None  # real mel frames per window, for word timestamps
    if encoder_out is not None:
        mel, offsets = None, [0.0] * encoder_out.shape[0]
    elif isinstance(audio, Tensor) and audio.is_floating_point() and audio.ndim == 3:
        mel, offsets = audio, [0.0] * audio.shape[0]
    else:
        batch = audio if isinstance(audio, AudioBatch) else model.prepare(audio, chunk=True, sample_rate=sample_rate)
        mel, offsets = batch.mel, list(batch.offsets)
        n_frames = (batch.n_samples // HOP_LENGTH).tolist()
    max_new = max_new_tokens or model.dims.n_text_ctx // 2
    filters = _Filters(model)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        if encoder_out is None:
            encoder_out = model.encode(mel, batch_size=encoder_batch_size)
        if model.dims.is_multilingual and language is None:
            languages = detect_language(model, encoder_out)[0]
        else:
            languages = [language] * encoder_out.shape[0]
        prompts = torch.tensor([model.sot_sequence(language=lang, task=task) for lang in languages],
                               device=model.device)
        if beam_size:
            seqs, lps, no_speech = _beam(model, encoder_out, prompts, max_new, beam_size, filters)
        else:
            seqs, lps, no_speech = _sample(model, encoder_out, prompts, max_new, temperature, filters)
        words = None
        if word_timestamps:
            assert mel is not None
            frames = n_frames or [mel.shape[-1]] * len(seqs)
            words, last = [], 0.0
            for k, seq in enumerate(seqs):
                if offsets[k] == 0:
                    last = 0.0  # a new source
                window = mel[k].clone()
                window[:, frames[k]:] = 0  # openai-whisper's transcribe zero-pads the log-mel after the audio
                found, last = window_word_timings(model, seq, window, frames[k], offset=offsets[k], last_speech=last,
                                                  heads=alignment_heads, language=languages[k], task=task)
                words.append(found)
    return _join_windows(model, offsets, seqs, lps, no_speech, languages, words)


def _join_windows(model, offsets, seqs, lps, no_speech, languages, words=None) -> list[Transcription]:
    """Consecutive windows of one source (offset > 0 continues a clip) become one transcript."""
    results: list[Transcription] = []
    start = 0
    while start < len(offsets):
        end = start + 1
        while end < len(offsets) and offsets[end] > 0:
            end += 1
        tokens = [t for k in range(start, end) for t in seqs[k]]
        n_scored = sum(len(seqs[k]) + 1 for k in range(start, end))
        results.append(Transcription(
            text=" ".join(model.tokenizer.decode(seqs[k]).strip() for k in range(start, end)).strip(),
            tokens=tuple(tokens),
            avg_logprob=sum(lps[start:end]) / n_scored,
            no_speech_prob=float(no_speech[start]),
            language=languages[start] if model.dims.is_multilingual else None,
            words=tuple(w for k in range(start, end) for w in words[k]) if words is not None else None,
        ))
        start = end
    return results


def transcribe_texts(model: HookedWhisper, clips: Sequence[Any], *, batch_size: int = 8, **kwargs: Any) -> list[str]:
    """The transcript text of each clip, `batch_size` clips per call to `transcribe` (keyword
    arguments such as `fwd_hooks` and `max_new_tokens` are passed on)."""
    clips = list(clips)
    texts: list[str] = []
    for start in range(0, len(clips), batch_size):
        texts += [t.text for t in transcribe(model, clips[start : start + batch_size], **kwargs)]
    return texts
