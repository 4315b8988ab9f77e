"""Fraction of encoder positions that hold real speech, one clip per window against packed.

    uv run python benchmarks/packing.py [--gap 0.2]
"""

from __future__ import annotations

import argparse

from whisper_lens.audio import AudioBatch
from whisper_lens.data import length_stats, load_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gap", type=float, default=0.2, help="silence between packed clips, seconds")
    args = parser.parse_args()
    examples = list(load_samples())
    print(length_stats(examples))
    plain = AudioBatch.from_audio(examples)
    packed = AudioBatch.pack(examples, gap_s=args.gap)
    real = int(plain.audio_mask.sum())
    print(f"one clip per window: {len(plain)} windows, {plain.real_fraction:.1%} real, "
          f"{real / len(plain):.0f} real positions per window")
    print(f"packed (gap {args.gap} s): {len(packed)} windows, {packed.real_fraction:.1%} real, "
          f"{real / len(packed):.0f} real positions per window")
    full = packed.audio_mask[:-1]
    print(f"packed, full windows only (last one is partial): {full.float().mean():.1%} real")
    print(f"real positions per forward pass: {len(plain) / len(packed):.1f}x more when packed")


if __name__ == "__main__":
    main()
