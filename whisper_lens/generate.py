"""Transcription with hooks live: greedy decoding with the model's own key/value cache.

Decoding follows openai-whisper's `decode` with `without_timestamps=True`: the prompt
<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>, blank and end-of-text suppressed at
the first step, non-speech and special tokens suppressed throughout.

Hooks registered on the model (with `model.hooks(...)` or `fwd_hooks=`) fire at every step.
The first step runs the whole prompt; each later step runs one new position, so a decoder hook
sees [batch 1 ...] activations there, and self-attention keys/values of earlier positions come
from the cache (their hooks fired when those positions were first computed). Cross-attention
keys/values are computed, and hooked, once on the first step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from whisper_lens.components import KVCache

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper


@dataclass(frozen=True)
class Transcription:
    """One decoded window."""

    text: str  # the transcript
    tokens: tuple[int, ...]  # generated tokens, prompt and end-of-text excluded
    avg_logprob: float  # mean log-probability of the generated tokens (end-of-text included)
    no_speech_prob: float  # probability of <|nospeech|> at the start-of-transcript position
    language: str | None  # language of the prompt (None for English-only models)


def suppress_tokens(model: HookedWhisper) -> list[int]:
    """openai-whisper's default suppression ("-1"): non-speech tokens plus task/special tokens."""
    tok = model.tokenizer
    ids = set(tok.non_speech_tokens)
    ids.update([tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm])
    if tok.no_speech is not None:
        ids.add(tok.no_speech)
    return sorted(ids)


@torch.no_grad()
def greedy_decode(
    model: HookedWhisper,
    audio: Any = None,
    *,
    encoder_out: Tensor | None = None,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
    fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
) -> list[Transcription]:
    """Greedy (temperature 0) decoding of one 30 s window per item, hooks live."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        if (audio is None) == (encoder_out is None):
            raise ValueError("pass exactly one of `audio` and `encoder_out`")
        if encoder_out is None:
            encoder_out = model.encode(audio)
        prompt = model.sot_sequence(language=language, task=task)
        n_batch = encoder_out.shape[0]
        tokens = torch.tensor([prompt] * n_batch, device=model.device)
        tok = model.tokenizer
        eot = tok.eot
        suppress = torch.tensor(suppress_tokens(model), device=model.device)
        blank = torch.tensor(tok.encode(" ") + [eot], device=model.device)
        max_new = max_new_tokens or model.dims.n_text_ctx // 2
        cache = KVCache()
        sum_logprobs = torch.zeros(n_batch, device=model.device)
        n_generated = torch.zeros(n_batch, device=model.device)
        done = torch.zeros(n_batch, dtype=torch.bool, device=model.device)
        step_input = tokens
        no_speech = torch.full((n_batch,), float("nan"))
        for step in range(max_new):
            logits = model.decode(step_input, encoder_out, kv_cache=cache)
            if step == 0 and tok.no_speech is not None:
                no_speech = logits[:, tok.sot_sequence.index(tok.sot)].softmax(-1)[:, tok.no_speech].cpu()
            logits = logits[:, -1].float()
            logits[:, suppress] = float("-inf")
            if step == 0:
                logits[:, blank] = float("-inf")
            next_tokens = logits.argmax(-1)
            logprobs = logits.log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0]
            sum_logprobs += logprobs * ~done
            n_generated += ~done
            next_tokens = torch.where(done, torch.full_like(next_tokens, eot), next_tokens)
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
            done |= next_tokens == eot
            if bool(done.all()) or tokens.shape[1] >= model.dims.n_text_ctx:
                break
            step_input = next_tokens[:, None]
    results = []
    for i in range(n_batch):
        generated = tokens[i, len(prompt):].tolist()
        if eot in generated:
            generated = generated[: generated.index(eot)]
        results.append(Transcription(
            text=tok.decode(generated).strip(),
            tokens=tuple(generated),
            avg_logprob=float(sum_logprobs[i] / max(n_generated[i].item(), 1)),
            no_speech_prob=float(no_speech[i]),
            language=(language or "en") if model.dims.is_multilingual else None,
        ))
    return results

