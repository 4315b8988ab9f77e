"""What `model.with_audio` costs on tiny.en, measured side by side in one run.

    uv run python benchmarks/bench_view.py

Prints the encoder's time on one clip, the first view (encoder + weight processing), a second
view (the processed weights are shared, so about the encoder alone), and a teacher-forced pass
of the view against HookedWhisper's own decoder on the same tokens.
"""

from __future__ import annotations

import time
import warnings

import torch

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples


def seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    warnings.filterwarnings("ignore")
    model = HookedWhisper.from_pretrained("tiny.en", device="cpu")
    clip = next(load_samples())
    batch = model.prepare([clip])
    with torch.no_grad():
        encoder = seconds(lambda: model.encode(batch.mel))
        start = time.perf_counter()
        view = model.with_audio(batch)
        first = time.perf_counter() - start
        again = seconds(lambda: model.with_audio(batch))
        tokens = view.to_tokens(" " + clip.text)
        encoder_out = model.encode(batch.mel)
        view_pass = seconds(lambda: view(tokens))
        model_pass = seconds(lambda: model.decode(tokens, encoder_out))
    print(f"encoder {encoder:.3f} s; first view {first:.3f} s; next view {again:.3f} s "
          f"({again / encoder:.2f}x the encoder)")
    print(f"teacher-forced pass over {tokens.shape[1]} tokens: view {view_pass * 1e3:.1f} ms, "
          f"HookedWhisper's decoder {model_pass * 1e3:.1f} ms ({view_pass / model_pass:.2f}x)")


if __name__ == "__main__":
    main()
