"""Transcription quality and decoding speed of tiny.en on the bundled samples, HookedWhisper
against openai-whisper with the same weights, measured side by side.

    uv run python benchmarks/bench_transcribe.py [--batch-size 8] [--repeats 3]

Word error rate uses openai-whisper's English text normaliser. Decoding speed is greedy
(temperature 0, no timestamps) tokens per second over the corpus, encoder excluded (both
implementations decode from the same precomputed mel; the encoder pass is timed separately),
medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import whisper

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples
from whisper_lens.loading.convert import hooked_to_openai
from whisper_lens.metrics import word_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = HookedWhisper.from_pretrained("tiny.en", device="cpu")
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**model.dims.to_dict()))
    ref.load_state_dict(hooked_to_openai(model.state_dict()))
    ref.eval()
    examples = list(load_samples())
    batches = [examples[i:i + args.batch_size] for i in range(0, len(examples), args.batch_size)]
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)

    with torch.no_grad():
        feats = [model.encode(model.prepare(b).mel) for b in batches]

    def ours():
        return [r for f in feats for r in model.transcribe(encoder_out=f, language="en")]

    def theirs():
        return [r for f in feats for r in whisper.decode(ref, f, options)]

    times = {"ours": [], "openai": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("openai", theirs)):
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    n_tokens = {k: sum(len(r.tokens) + 1 for r in v) for k, v in outputs.items()}
    same = sum(tuple(a.tokens) == tuple(b.tokens) for a, b in zip(outputs["ours"], outputs["openai"]))
    errors = words = 0
    for ex, res in zip(examples, outputs["ours"]):
        e, w = word_errors(ex.text, res.text)
        errors, words = errors + e, words + w
    print(f"tiny.en on {len(examples)} bundled samples ({sum(e.seconds for e in examples):.0f} s of speech)")
    print(f"word error rate: {errors / words:.1%} ({errors}/{words} words); "
          f"transcripts identical to openai-whisper: {same}/{len(examples)}")
    for name in ("ours", "openai"):
        t = statistics.median(times[name])
        print(f"{name:7} greedy decoding, batch {args.batch_size}: {n_tokens[name] / t:7.1f} tokens/s ({t:.2f} s)")
    ratio = statistics.median(times["ours"]) / statistics.median(times["openai"])
    print(f"HookedWhisper / openai-whisper decoding time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
