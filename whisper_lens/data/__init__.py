"""Speech datasets as lazy streams of `AudioExample`s.

    load_samples()                         the bundled corpus (Harvard sentences, Piper voice)
    load_word_samples()                    bundled clips with known word boundaries
    load_librispeech("LibriSpeech/dev-clean")   the standard on-disk layout
    load_hf_librispeech(split="validation")     Hugging Face `openslr/librispeech_asr`, streaming
    load_folder("clips/")                  audio files with optional same-name .txt transcripts
    load_manifest("data.jsonl")            CSV or JSONL with `path` and `text` columns

Every loader yields in a deterministic order; `shuffle(seed=...)`, `limit=` and `length_stats`
work on any of them.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from whisper_lens.audio import SAMPLE_RATE, load_audio

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"  # the bundled corpus, beside this module
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aiff", ".aif")


@dataclass(frozen=True)
class Word:
    """A word's position in its clip, known by construction."""

    word: str  # as written in the transcript (punctuation attached)
    start: float  # seconds from the start of the clip
    end: float  # seconds


@dataclass(frozen=True)
class AudioExample:
    """One clip with its transcript."""

    id: str  # stable identifier (file stem, LibriSpeech utterance id, ...)
    audio: np.ndarray = field(repr=False)  # mono float32 waveform at `sample_rate`
    sample_rate: int  # Hz (16000 for everything these loaders yield)
    text: str | None  # reference transcript, if known
    words: tuple[Word, ...] | None = None  # word boundaries, where known (load_word_samples)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def _limited(rows: Iterable[Any], limit: int | None) -> Iterable[Any]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return islice(rows, limit)


def load_samples(*, limit: int | None = None, directory: Path = SAMPLES_DIR) -> Iterator[AudioExample]:
    """The bundled corpus, in manifest order."""
    manifest = Path(directory) / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no sample manifest at {manifest}; regenerate with scripts/make_samples.py")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for row in _limited(rows, limit):
        yield AudioExample(row["id"], load_audio(Path(directory) / row["file"]), SAMPLE_RATE, row["text"])


def load_word_samples(*, limit: int | None = None, directory: Path = SAMPLES_DIR) -> Iterator[AudioExample]:
    """The bundled word-boundary set: sentences spoken a word at a time, with each word's start
    and end (made by `scripts/make_samples.py --words`)."""
    manifest = Path(directory) / "words.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no word manifest at {manifest}; make it with scripts/make_samples.py --words")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for row in _limited(rows, limit):
        words = tuple(Word(w["word"], float(w["start"]), float(w["end"])) for w in row["words"])
        yield AudioExample(row["id"], load_audio(Path(directory) / row["file"]), SAMPLE_RATE, row["text"], words)


def load_librispeech(root: str | Path, *, limit: int | None = None) -> Iterator[AudioExample]:
    """LibriSpeech's layout: `<root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with one
    `<speaker>-<chapter>.trans.txt` per chapter ("<utterance id> <TRANSCRIPT>" per line).
    `root` is a split folder (e.g. `LibriSpeech/dev-clean`). Sorted by utterance id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech split folder {root} does not exist")
    transcripts: dict[str, str] = {}
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            if line.strip():
                utt, _, text = line.partition(" ")
                transcripts[utt] = text.strip()
    if not transcripts:
        raise FileNotFoundError(f"no */*/*.trans.txt under {root}: is it a LibriSpeech split folder?")
    for utt in _limited(sorted(transcripts), limit):
        speaker, chapter, _ = utt.split("-")
        yield AudioExample(utt, load_audio(root / speaker / chapter / f"{utt}.flac"), SAMPLE_RATE, transcripts[utt])


def load_hf_librispeech(
    *, name: str = "openslr/librispeech_asr", config: str = "clean", split: str = "validation",
    streaming: bool = True, limit: int | None = None, dataset: Any = None,
) -> Iterator[AudioExample]:
    """Hugging Face LibriSpeech (columns `id`, `audio` {array, sampling_rate}, `text`), streamed
    for users who are online. Pass `dataset=` to read any dataset object with those columns."""
    if dataset is None:
        from datasets import load_dataset

        dataset = load_dataset(name, config, split=split, streaming=streaming)
    for i, row in enumerate(_limited(dataset, limit)):
        audio = row["audio"]
        if isinstance(audio, dict):
            wave = load_audio(np.asarray(audio["array"]), sample_rate=int(audio["sampling_rate"]),
                              name=str(row.get("id", i)))
        else:  # datasets' AudioDecoder objects
            samples = audio.get_all_samples()
            wave = load_audio(samples.data.mean(0).numpy(), sample_rate=samples.sample_rate)
        yield AudioExample(str(row.get("id", i)), wave, SAMPLE_RATE, row.get("text"))


def load_folder(folder: str | Path, *, limit: int | None = None, recursive: bool = True) -> Iterator[AudioExample]:
    """Audio files in a folder (sorted by path), each with an optional same-name `.txt` transcript."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {folder}")
    for path in _limited(files, limit):
        txt = path.with_suffix(".txt")
        text = txt.read_text().strip() if txt.is_file() else None
        yield AudioExample(str(path.relative_to(folder).with_suffix("")), load_audio(path), SAMPLE_RATE, text)


def load_manifest(manifest: str | Path, *, limit: int | None = None) -> Iterator[AudioExample]:
    """A CSV (header row) or JSONL manifest with a `path` (or `file`, as scripts/make_samples.py
    writes) column relative to the manifest, and an optional `text` column; `id` is taken when
    present, else the file stem."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for n, row in enumerate(_limited(rows, limit), 1):
        if "path" not in row and "file" not in row:
            raise ValueError(f"{manifest}: row {n} has no 'path' (or 'file') column (columns: {sorted(row)})")
        path = Path(row.get("path") or row["file"])
        path = path if path.is_absolute() else manifest.parent / path
        yield AudioExample(str(row.get("id") or path.stem), load_audio(path), SAMPLE_RATE, row.get("text") or None)


def shuffle(examples: Iterable[AudioExample], *, seed: int = 0) -> list[AudioExample]:
    """A seeded shuffle (loads the stream into memory)."""
    items = list(examples)
    random.Random(seed).shuffle(items)
    return items


@dataclass(frozen=True)
class LengthStats:
    """Durations of a dataset, in seconds."""

    count: int  # clips
    total_s: float  # all audio
    mean_s: float
    min_s: float
    max_s: float
    window_fill: float  # mean fraction of a 30 s window a clip fills

    def __str__(self) -> str:
        return (f"{self.count} clips, {self.total_s / 60:.1f} min, mean {self.mean_s:.1f} s "
                f"(min {self.min_s:.1f}, max {self.max_s:.1f}); a clip fills {self.window_fill:.0%} of a window")


def length_stats(examples: Iterable[AudioExample]) -> LengthStats:
    seconds = np.array([e.seconds for e in examples])
    if seconds.size == 0:
        raise ValueError("no examples")
    return LengthStats(int(seconds.size), float(seconds.sum()), float(seconds.mean()), float(seconds.min()),
                       float(seconds.max()), float(np.minimum(seconds / 30.0, 1.0).mean()))


def augment(examples: Iterable[AudioExample], *, speeds: Sequence[float] = (0.9, 1.1),
            snr_db: Sequence[float] = (20.0,), seed: int = 0) -> Iterator[AudioExample]:
    """Variants of each clip for SAE training on little speech: speed perturbation (resampled,
    so tempo and pitch change together, as Kaldi's and ESPnet's speed perturbation) and white
    noise at each signal-to-noise ratio (dB, against the clip's mean power). The originals are
    not repeated; ids get `_speed0.9` / `_snr20` suffixes and the transcript is kept."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    rng = np.random.default_rng(seed)
    for example in examples:
        audio = np.asarray(example.audio, dtype=np.float32)
        for speed in speeds:
            if speed <= 0:
                raise ValueError(f"speeds must be positive, got {speed}")
            ratio = Fraction(speed).limit_denominator(100)  # output length = input length / speed
            faster = resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)
            yield replace(example, id=f"{example.id}_speed{speed:g}", audio=faster, words=None)
        power = float(np.mean(audio**2))
        for snr in snr_db:
            noise = rng.standard_normal(len(audio)).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr / 10)))
            yield replace(example, id=f"{example.id}_snr{snr:g}", audio=audio + noise)
