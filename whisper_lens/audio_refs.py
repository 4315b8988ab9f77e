"""Integer rows that name audio a model holds: how SAELens's token-shaped machinery reaches audio.

SAELens's `ActivationsStore`, `run_evals` and training runner think in rows of token ids, one id
per hooked position, and call `model(rows)`. For Whisper, `whisper_lens.sae.saelens_dataset`
registers windows with the model (`HeldAudio`) and writes rows of reference ids:

- encoder rows: one id per encoder position of a window, `ENCODER_REF + window * 4096 + position`;
- decoder rows: one id per text position, `DECODER_REF + window * 2**20 + token`.

Positions that are not real (padding, packing gaps, the decoder prompt, text padding) hold the
tokenizer's `pad_token_id` instead, which SAELens's `exclude_special_tokens=True` (the default
of `run_evals`) drops. Every id is far above int16 and the vocabulary, so a row can never be
mistaken for PCM or for plain tokens. `HookedWhisper.forward` resolves such rows back to mel
windows and decoder input (`resolve_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from whisper_lens.audio import AudioBatch

ENCODER_REF = 1 << 32
DECODER_REF = 1 << 48
_POS_STRIDE = 1 << 12  # > n_audio_ctx (1500)
_TOKEN_STRIDE = 1 << 20  # > any Whisper vocabulary


def is_reference_rows(x: object) -> bool:
    """Whether `x` is an integer tensor of reference rows (see the module docstring)."""
    return (isinstance(x, Tensor) and x.ndim == 2 and not x.is_floating_point() and x.dtype != torch.bool
            and x.numel() > 0 and int(x.max()) >= ENCODER_REF)


def encoder_rows(windows: range, audio_mask: Bool[Tensor, "batch audio_pos"], pad_id: int) -> Tensor:
    """One row per window: a reference per real encoder position, `pad_id` elsewhere."""
    pos = torch.arange(audio_mask.shape[1])
    refs = ENCODER_REF + torch.tensor(list(windows))[:, None] * _POS_STRIDE + pos
    return torch.where(audio_mask.cpu(), refs, torch.full_like(refs, pad_id))


def decoder_rows(windows: range, tokens: Int[Tensor, "batch text_pos"], transcript: Bool[Tensor, "batch text_pos"],
                 pad_id: int) -> Tensor:
    """One row per window: a reference per transcript token, `pad_id` on the prompt and padding."""
    refs = DECODER_REF + torch.tensor(list(windows))[:, None] * _TOKEN_STRIDE + tokens.cpu()
    return torch.where(transcript.cpu(), refs, torch.full_like(refs, pad_id))


@dataclass(frozen=True)
class ResolvedRows:
    kind: Literal["encoder", "decoder"]
    mel: Float[Tensor, "batch n_mels mel_frame"]  # each row's window
    tokens: Int[Tensor, "batch text_pos"]  # decoder input: the window's prompt + transcript (+ padding)
    targets: Bool[Tensor, "batch text_pos"]  # transcript tokens (what the loss counts)


@dataclass
class HeldAudio:
    """Windows a model holds so that reference rows can name them (kept on the CPU)."""

    mel: list[Tensor] = field(default_factory=list)  # [n_mels mel_frame] per window
    tokens: list[Tensor] = field(default_factory=list)  # prompt + transcript per window
    targets: list[Tensor] = field(default_factory=list)  # transcript positions per window

    def add(self, batch: AudioBatch) -> range:
        """Hold a prepared batch's windows (with their transcripts); returns their window numbers."""
        if batch.tokens is None or batch.text_mask is None:
            raise ValueError("reference rows need transcripts: give the clips `.text` (or pass text=)")
        start = len(self.mel)
        for row in range(len(batch)):
            n_text = int(batch.text_mask[row].sum())
            self.mel.append(batch.mel[row].detach().cpu())
            self.tokens.append(batch.tokens[row, :n_text].cpu())
            self.targets.append(batch.transcript_mask[row, :n_text].cpu())
        return range(start, len(self.mel))

    def resolve(self, rows: Int[Tensor, "batch pos"], *, eot: int) -> ResolvedRows:
        """The windows and decoder input that reference rows name (anything below `ENCODER_REF`
        is padding; decoder input is padded with `eot`, as Whisper pads)."""
        kind = "decoder" if int(rows.max()) >= DECODER_REF else "encoder"
        base, stride = (DECODER_REF, _TOKEN_STRIDE) if kind == "decoder" else (ENCODER_REF, _POS_STRIDE)
        windows = []
        for row in rows.cpu():
            refs = row[row >= ENCODER_REF]
            found = ((refs - base) // stride).unique()
            mixed = bool(((refs >= DECODER_REF) != (kind == "decoder")).any())
            if len(refs) == 0 or len(found) != 1 or mixed:
                raise ValueError("each reference row must name exactly one window of one kind; build rows with "
                                 "whisper_lens.sae.saelens_dataset")
            window = int(found[0])
            if window >= len(self.mel):
                raise ValueError(f"row names window {window}, but this model holds {len(self.mel)}; make the "
                                 "dataset with this model (saelens_dataset(model, ...))")
            windows.append(window)
        width = rows.shape[1] if kind == "decoder" else max(len(self.tokens[w]) for w in windows)
        tokens = torch.full((len(windows), width), eot, dtype=torch.long)
        targets = torch.zeros((len(windows), width), dtype=torch.bool)
        for i, w in enumerate(windows):
            n = min(width, len(self.tokens[w]))
            tokens[i, :n], targets[i, :n] = self.tokens[w][:n], self.targets[w][:n]
        if kind == "decoder":
            named = rows.cpu() >= DECODER_REF
            if not torch.equal(tokens[named], (rows.cpu()[named] - DECODER_REF) % _TOKEN_STRIDE):
                raise ValueError("decoder rows name tokens that differ from the held transcripts")
        return ResolvedRows(kind, torch.stack([self.mel[w] for w in windows]), tokens, targets)
