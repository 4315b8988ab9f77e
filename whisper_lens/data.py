"""Speech datasets as a stream of `AudioExample`s.

This module starts with the bundled sample corpus (`whisper_lens/data/samples/`: Harvard
sentences spoken by a Piper voice, made by `scripts/make_samples.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"


@dataclass(frozen=True)
class AudioExample:
    """One clip with its transcript."""

    id: str  # stable identifier (file stem)
    audio: np.ndarray = field(repr=False)  # mono float32 waveform
    sample_rate: int  # Hz (16000 for everything whisper_lens loads)
    text: str | None  # reference transcript, if known

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def load_samples(*, limit: int | None = None, directory: Path = SAMPLES_DIR) -> Iterator[AudioExample]:
    """The bundled corpus, in manifest order."""
    manifest = directory / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no sample manifest at {manifest}; regenerate with scripts/make_samples.py")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for row in rows[:limit]:
        audio, rate = sf.read(directory / row["file"], dtype="float32")
        yield AudioExample(row["id"], audio, rate, row["text"])
