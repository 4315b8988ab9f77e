"""Audio -> log-mel: Whisper's front end, per item.

openai-whisper's `log_mel_spectrogram` clamps every value to (max - 8) where the max is taken
over the whole tensor, so items in a batch change each other. Here the max is per item, which
equals openai-whisper's result for each item computed alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from whisper.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, mel_filters

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
AUDIO_POS_PER_SECOND = FRAMES_PER_SECOND // 2  # 50 encoder positions per second (conv2 stride 2)

__all__ = ["SAMPLE_RATE", "HOP_LENGTH", "N_FFT", "FRAMES_PER_SECOND", "AUDIO_POS_PER_SECOND",
           "log_mel_spectrogram", "pad_or_trim"]


@lru_cache(maxsize=8)
def _filters(n_mels: int, device: torch.device) -> Tensor:
    if n_mels not in (80, 128):
        raise ValueError(f"Whisper's mel filters exist for 80 or 128 bins, not {n_mels}")
    return mel_filters(device, n_mels)


@lru_cache(maxsize=8)
def _window(device: torch.device) -> Tensor:
    return torch.hann_window(N_FFT, device=device)


def pad_or_trim(audio: Float[Tensor, "batch samples"], length: int) -> Float[Tensor, "batch length"]:
    """Zero-pad or cut the last axis to `length` samples."""
    if audio.shape[-1] > length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))


def log_mel_spectrogram(
    audio: Float[Tensor, "batch samples"] | Float[np.ndarray, "batch samples"], n_mels: int = 80
) -> Float[Tensor, "batch n_mels mel_frame"]:
    """Whisper's log-mel spectrogram (float32), normalised per item; `samples / 160` frames."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    squeeze = audio.ndim == 1
    audio = audio.reshape(-1, audio.shape[-1])
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=_window(audio.device), return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = _filters(n_mels, audio.device) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    floor = log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0
    log_spec = (torch.maximum(log_spec, floor) + 4.0) / 4.0
    return log_spec[0] if squeeze else log_spec
