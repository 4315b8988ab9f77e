"""Audio in: loading, log-mel, and batches that know which frames are real.

    load_audio(path or array) -> 16 kHz mono float32
    AudioBatch.from_audio(items)          one clip per 30 s window (padding masked)
    AudioBatch.from_audio(items, chunk=True)   long clips split into consecutive windows
    AudioBatch.pack(items, gap_s=0.2)     several short clips per window, each clip's span recorded

A typical clip fills 10-20% of Whisper's 30 s window; `audio_mask` marks the encoder positions
(50 per second) that hold real audio, and everything downstream takes its mask from here.

openai-whisper's `log_mel_spectrogram` clamps every value to (max - 8) where the max is taken
over the whole tensor, so items in a batch change each other. Here the max is per item, which
equals openai-whisper's result for each item computed alone.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, mel_filters

from whisper_lens.errors import AudioInputError

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
AUDIO_POS_PER_SECOND = FRAMES_PER_SECOND // 2  # 50 encoder positions per second (conv2 stride 2)

__all__ = ["SAMPLE_RATE", "HOP_LENGTH", "N_FFT", "N_SAMPLES", "FRAMES_PER_SECOND", "AUDIO_POS_PER_SECOND",
           "load_audio", "log_mel_spectrogram", "pad_or_trim", "AudioBatch", "Span"]


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


# ---------------------------------------------------------------------------- loading
def load_audio(source: str | os.PathLike | np.ndarray | Tensor, *, sample_rate: int | None = None,
               name: str | None = None) -> Float[np.ndarray, "samples"]:
    """16 kHz mono float32 from a file (wav/flac/ogg/mp3 through soundfile; other formats through
    ffmpeg when it is installed) or an array (`sample_rate` defaults to 16000 for arrays).

    Stereo is averaged, integer PCM scaled to [-1, 1), other rates resampled with soxr."""
    if isinstance(source, (str, os.PathLike)):
        audio, rate = _read_file(Path(source))
        label = str(source)
        if sample_rate is not None and sample_rate != rate:
            raise ValueError(f"{label}: the file says {rate} Hz but sample_rate={sample_rate} was passed; "
                             "drop sample_rate (files carry their own)")
    else:
        label = name or "audio array"
        audio, rate = _as_float(np.asarray(source.cpu() if isinstance(source, Tensor) else source), label), \
            sample_rate or SAMPLE_RATE
    if audio.size == 0:
        raise AudioInputError(f"{label}: the audio is empty; give at least one sample")
    if not np.isfinite(audio).all():
        raise AudioInputError(f"{label}: the audio has {int((~np.isfinite(audio)).sum())} NaN or infinite samples; "
                              "replace them (np.nan_to_num) or drop the clip")
    if rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: the file is empty (0 bytes); record, copy or download it again")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        return data.mean(axis=1), rate
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        if shutil.which("ffmpeg") is None:
            raise ValueError(
                f"{path}: soundfile cannot read this {path.suffix or 'file'} ({err}); it reads wav, flac, ogg "
                "and mp3. Install ffmpeg (e.g. apt-get install ffmpeg) for other formats, or convert the file."
            ) from err
    cmd = ["ffmpeg", "-nostdin", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        raise ValueError(f"{path}: ffmpeg could not decode it: {result.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(result.stdout, np.int16).astype(np.float32) / 32768.0, SAMPLE_RATE


INT16_SCALE = 32768.0  # integer audio, whatever its dtype, is int16 PCM: x / 32768


def pcm_to_float(samples: Tensor, label: str) -> Tensor:
    """Float samples from integer PCM (any integer dtype, int16 scale), checked to be in range."""
    if samples.numel() and (int(samples.max()) > 32767 or int(samples.min()) < -32768):
        raise AudioInputError(
            f"{label}: integer audio is read as int16 PCM, but values reach {int(samples.abs().max())}, beyond "
            "[-32768, 32767]; pass a float waveform in [-1, 1] (int32 PCM: samples / 2**31)")
    return samples.float() / INT16_SCALE


def _as_float(array: np.ndarray, label: str) -> np.ndarray:
    """Float32 mono from a float or integer-PCM array, 1-D or [samples channels] (either order)."""
    if array.ndim not in (1, 2):
        raise AudioInputError(f"{label}: expected a 1-D waveform or [samples channels], got shape {array.shape}")
    if array.dtype.kind == "f":
        out = array.astype(np.float32)
    elif array.dtype.kind == "i":
        out = pcm_to_float(torch.from_numpy(np.ascontiguousarray(array)), label).numpy()
    elif array.dtype == np.uint8:  # 8-bit WAV samples are unsigned
        out = (array.astype(np.float32) - 128.0) / 128.0
    else:
        raise AudioInputError(f"{label}: cannot read audio samples of dtype {array.dtype}; pass float32 in [-1, 1]")
    if out.ndim == 2:  # channels are on the shorter axis
        out = out.mean(axis=0 if out.shape[0] < out.shape[1] else 1)
    return out


# ---------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class Span:
    """Where one clip sits in a window."""

    id: str  # the clip
    start_s: float  # start within the window, seconds
    end_s: float  # end within the window, seconds
    text: str | None = None  # its transcript, if known


@dataclass(frozen=True)
class AudioBatch:
    """Log-mel windows plus which of their frames are real audio."""

    mel: Float[Tensor, "batch n_mels mel_frame"]  # one window per row
    n_samples: Int[Tensor, "batch"]  # real samples per window (end of the last clip when packed)
    n_frames: Int[Tensor, "batch"]  # real mel frames (100 per second, rounded up)
    audio_mask: Bool[Tensor, "batch audio_pos"]  # real encoder positions (50 per second, rounded up)
    ids: tuple[str, ...]  # source id of each window (packed: ids joined with "+")
    offsets: tuple[float, ...]  # where each window starts in its source, seconds (chunked clips)
    spans: tuple[tuple[Span, ...], ...]  # the clips inside each window
    tokens: Int[Tensor, "batch text_pos"] | None = None  # decoder input (prompt + transcript), if text given
    text_mask: Bool[Tensor, "batch text_pos"] | None = None  # real token positions (not padding)
    text_start: int | None = None  # index of the first transcript token (after the prompt)
    skipped: int = 0  # bad items left out (only with skip_bad=True)

    def __len__(self) -> int:
        return self.mel.shape[0]

    @property
    def texts(self) -> list[str | None]:
        """Each window's transcript: its clips' texts joined (None if any is unknown)."""
        out = []
        for spans in self.spans:
            parts = [s.text for s in spans]
            out.append(None if any(p is None for p in parts) else " ".join(p.strip() for p in parts))
        return out

    @property
    def transcript_mask(self) -> Bool[Tensor, "batch text_pos"]:
        """Token positions that hold transcript text: not the prompt, not padding."""
        if self.tokens is None or self.text_mask is None or self.text_start is None:
            raise ValueError("this batch has no tokens; build it with text (model.prepare(audio, text))")
        mask = self.text_mask.clone()
        mask[:, : self.text_start] = False
        return mask

    @property
    def real_fraction(self) -> float:
        """Fraction of encoder positions that hold real audio."""
        return float(self.audio_mask.float().mean())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> AudioBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, mel=self.mel.to(device, dtype or self.mel.dtype), n_samples=move(self.n_samples),
                       n_frames=move(self.n_frames), audio_mask=move(self.audio_mask), tokens=move(self.tokens),
                       text_mask=move(self.text_mask))

    @classmethod
    def from_audio(cls, items: Iterable[Any], *, n_mels: int = 80, chunk: bool = False,
                   window_samples: int = N_SAMPLES, skip_bad: bool = False) -> AudioBatch:
        """One window per clip (or, with `chunk=True`, consecutive windows per long clip).

        Items are file paths, arrays at 16 kHz, or records with `.id`, `.audio`, `.sample_rate`
        and `.text` (like `whisper_lens.data.AudioExample`). With `skip_bad=True`, unreadable or
        invalid items are skipped with a warning (the count is in `skipped`) instead of raising."""
        windows: list[tuple[np.ndarray, str, float, tuple[Span, ...]]] = []
        clips, skipped = _clips(items, skip_bad)
        for clip_id, audio, text in clips:
            seconds = len(audio) / SAMPLE_RATE
            if len(audio) > window_samples and not chunk:
                raise ValueError(
                    f"{clip_id} is {seconds:.1f} s, longer than one {window_samples / SAMPLE_RATE:.0f} s window; "
                    "pass chunk=True to split it into consecutive windows (their offsets are recorded), "
                    "or trim it"
                )
            starts = window_starts(audio, window_samples)
            for start, end in zip(starts, [*starts[1:], len(audio)]):
                piece = audio[start:max(end, start + 1)]
                offset = start / SAMPLE_RATE
                span = Span(clip_id, 0.0, len(piece) / SAMPLE_RATE, text if len(audio) <= window_samples else None)
                windows.append((piece, clip_id, offset, (span,)))
        return cls._build(windows, n_mels, window_samples, skipped)

    @classmethod
    def pack(cls, items: Iterable[Any], *, gap_s: float = 0.2, n_mels: int = 80,
             window_samples: int = N_SAMPLES, skip_bad: bool = False) -> AudioBatch:
        """Concatenate consecutive short clips (with `gap_s` of silence between them) into full
        windows, in order, recording each clip's span. The silence gaps are not marked real."""
        clips, skipped = _clips(items, skip_bad)
        gap_n = int(round(gap_s * SAMPLE_RATE))
        windows = []
        for group in plan_windows([len(a) for _, a, _ in clips], gap_n, window_samples):
            pieces, spans, used = [], [], 0
            for k in group:
                clip_id, audio, text = clips[k]
                if pieces:
                    pieces.append(np.zeros(gap_n, dtype=np.float32))
                    used += gap_n
                pieces.append(audio)
                spans.append(Span(clip_id, used / SAMPLE_RATE, (used + len(audio)) / SAMPLE_RATE, text))
                used += len(audio)
            windows.append((np.concatenate(pieces), "+".join(s.id for s in spans), 0.0, tuple(spans)))
        return cls._build(windows, n_mels, window_samples, skipped)

    @classmethod
    def _build(cls, windows, n_mels: int, window_samples: int, skipped: int = 0) -> AudioBatch:
        if not windows:
            raise ValueError("no audio given")
        waves = torch.stack([pad_or_trim(torch.from_numpy(w[0]), window_samples) for w in windows])
        mel = log_mel_spectrogram(waves, n_mels)
        n_pos = window_samples // HOP_LENGTH // 2
        mask = torch.zeros(len(windows), n_pos, dtype=torch.bool)
        for row, (_, _, _, spans) in enumerate(windows):
            for span in spans:
                mask[row, _pos(span.start_s, math.floor):_pos(span.end_s, math.ceil)] = True
        n_samples = torch.tensor([len(w[0]) for w in windows])
        return cls(
            mel=mel, n_samples=n_samples, n_frames=(n_samples + HOP_LENGTH - 1) // HOP_LENGTH,
            audio_mask=mask, ids=tuple(w[1] for w in windows), offsets=tuple(w[2] for w in windows),
            spans=tuple(w[3] for w in windows), skipped=skipped,
        )


CUT_SEARCH_S = 5.0  # a long clip is cut at the quietest moment of the last 5 s of each window
_CUT_FRAME = SAMPLE_RATE // 50  # 20 ms energy frames


def window_starts(audio: np.ndarray, window_samples: int, search_s: float = CUT_SEARCH_S) -> list[int]:
    """Where each window of a long clip starts: every cut is at the quietest 20 ms of the last
    `search_s` seconds before the window would end, so a word is not split between two windows
    (which would lose it from both transcripts) wherever the speech pauses; audio with no quieter
    moment (half the energy of the window's end) is cut where the window ends."""
    starts = [0]
    search = min(int(search_s * SAMPLE_RATE), window_samples // 2)
    while len(audio) - starts[-1] > window_samples:
        end = starts[-1] + window_samples
        region = audio[end - search:end]
        n = len(region) // _CUT_FRAME
        energy = np.square(region[: n * _CUT_FRAME].reshape(n, _CUT_FRAME)).mean(axis=1)
        quietest = n - 1 - int(np.argmin(energy[::-1]))  # the latest of equally quiet frames
        if energy[quietest] >= 0.5 * energy[-1]:  # no pause to cut in: cut where the window ends
            starts.append(end)
        else:
            starts.append(end - search + quietest * _CUT_FRAME + _CUT_FRAME // 2)
    return starts


def _pos(seconds: float, rounding) -> int:
    return int(rounding(round(seconds * AUDIO_POS_PER_SECOND, 6)))


def plan_windows(lengths: Sequence[int], gap: int, window: int) -> list[list[int]]:
    """Greedy in-order packing: which clips (by index) share each window."""
    groups: list[list[int]] = []
    used = 0
    for i, length in enumerate(lengths):
        if length > window:
            raise ValueError(f"clip {i} is {length / SAMPLE_RATE:.1f} s, longer than a window; "
                             "split it first (AudioBatch.from_audio(..., chunk=True))")
        if groups and used + gap + length <= window:
            groups[-1].append(i)
            used += gap + length
        else:
            groups.append([i])
            used = length
    return groups


@dataclass(frozen=True)
class Clip:
    """An audio item with what came beside it: an id, a transcript, the rate of an array."""

    id: str
    audio: Any  # a path, or samples at `sample_rate`
    text: str | None = None
    sample_rate: int | None = None


def as_clips(audio: Any, text: str | Sequence[str] | None = None, *, sample_rate: int | None = None,
             argument: str = "audio") -> list[Any]:
    """The items of a user's audio argument: one path, 1-D array or tensor or `AudioExample`-like
    record, or a sequence of them; `text` and an array's `sample_rate` are attached.

    A 2-D array is a batch of waveforms [batch samples]; one that looks like [samples channels]
    (many more rows than columns, at most 8 columns) is refused rather than read as thousands of clips."""
    if isinstance(audio, (str, os.PathLike)) or getattr(audio, "ndim", None) == 1 or hasattr(audio, "audio"):
        items = [audio]
    elif getattr(audio, "ndim", None) == 2:
        refuse_channels_last(tuple(audio.shape), argument)
        items = list(audio)
    elif isinstance(audio, (bytes, dict)) or not isinstance(audio, Iterable):
        raise AudioInputError(f"{argument} must be a path, a waveform, or a list of them, not {type(audio).__name__}")
    else:
        items = list(audio)
    if text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) != len(items):
            raise ValueError(f"{len(items)} audio items but {len(texts)} transcripts; give one text per item")
        items = [_with(item, i, text=t, sample_rate=sample_rate) for i, (item, t) in enumerate(zip(items, texts))]
    elif sample_rate is not None:
        items = [_with(item, i, sample_rate=sample_rate) for i, item in enumerate(items)]
    return items


def refuse_channels_last(shape: tuple[int, ...], argument: str) -> None:
    """Refuse a 2-D array shaped like [samples channels] (many more rows than columns, at most 8
    columns): read as [batch samples] it would be thousands of one-sample clips."""
    if len(shape) == 2 and shape[1] <= 8 < shape[0]:
        raise AudioInputError(
            f"{argument} has shape {shape}, which looks like [samples channels]; mix it to mono "
            f"({argument}.mean(axis=1)) or pass the file path, or pass [batch samples] for a batch")


def _with(item: Any, index: int, *, text: str | None = None, sample_rate: int | None = None) -> Any:
    """`item` with a transcript and (for arrays) a sample rate attached."""
    if hasattr(item, "audio"):
        return Clip(item_id(item, index), item.audio, text if text is not None else getattr(item, "text", None),
                    getattr(item, "sample_rate", None))
    rate = None if isinstance(item, (str, os.PathLike)) else sample_rate
    return Clip(item_id(item, index), item, text, rate)


def item_id(item: Any, index: int) -> str:
    """A stable id: the record's `id`, a file's stem, else the position."""
    if hasattr(item, "id"):
        return str(item.id)
    if isinstance(item, (str, os.PathLike)):
        return Path(item).stem
    return str(index)


def _clips(items: Iterable[Any], skip_bad: bool) -> tuple[list[tuple[str, np.ndarray, str | None]], int]:
    clips, skipped = [], 0
    for i, item in enumerate(items):
        try:
            clips.append(_clip(item, i))
        except (ValueError, FileNotFoundError) as err:
            if not skip_bad:
                raise
            skipped += 1
            warnings.warn(f"skipping item {i}: {err}", stacklevel=3)
    if skipped:
        warnings.warn(f"skipped {skipped} bad item(s) of {skipped + len(clips)}", stacklevel=3)
    return clips, skipped


def _clip(item: Any, index: int) -> tuple[str, np.ndarray, str | None]:
    """(id, 16 kHz waveform, text) from a path, an array or an AudioExample-like record."""
    clip_id = item_id(item, index)
    if hasattr(item, "audio"):
        return clip_id, load_audio(item.audio, sample_rate=getattr(item, "sample_rate", None), name=clip_id), \
            getattr(item, "text", None)
    if isinstance(item, (str, os.PathLike)):
        return clip_id, load_audio(item), None
    return clip_id, load_audio(item, name=f"audio item {index}"), None


def frame_mask(batch: AudioBatch, n_frames: int) -> Bool[Tensor, "batch mel_frame"]:
    """Real mel frames (for `hook_conv1`), from the audio-position mask."""
    return batch.audio_mask.repeat_interleave(2, dim=1)[:, :n_frames]

