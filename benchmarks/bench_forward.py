"""Forward-pass cost of HookedWhisper against openai-whisper, measured side by side.

    uv run python benchmarks/bench_forward.py [--models tiny base] [--batches 1 8] [--repeats 5]
    uv run python benchmarks/bench_forward.py --keep-freed-memory   # glibc keeps freed buffers

For each model and batch size, each target's runs are interleaved `--repeats` times (forwards, then
backwards) and medians compared:
  openai-whisper forward (SDPA)       vs  run_with_cache, residual-stream names filter   (target <= 1.05x)
  openai-whisper forward (no SDPA)    vs  run_with_cache of every hook, patterns included (target <= 1.10x)
                                          repeated ("ours all") and after `release_buffers()` ("cold")
A forward is the encoder on one 30 s window plus a teacher-forced decoder pass over 24 tokens,
fp32 on CPU. Weights are random with the real dimensions (time does not depend on their values).
Then the memory of a full tiny cache at batch 8: bytes of the distinct storages it holds against
the sum of the cached tensors' sizes (target: within 10%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import whisper

from whisper_lens import HookedWhisper
from whisper_lens.config import WhisperDims

REAL_DIMS = {
    "tiny": WhisperDims(80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4),
    "base": WhisperDims(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6),
}


def build(name: str):
    dims = REAL_DIMS[name]
    torch.manual_seed(0)
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**dims.to_dict())).eval()
    with torch.no_grad():
        ref.decoder.positional_embedding.normal_(0, 0.01)
    return ref, HookedWhisper.from_state_dict(dims, ref.state_dict())


def timed(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def is_resid(name: str) -> bool:
    return "hook_resid" in name or name == "hook_encoder_out"


def bench(name: str, batch: int, repeats: int) -> dict[str, float]:
    ref, model = build(name)
    mel = torch.randn(batch, 80, 3000)
    tokens = torch.randint(0, 50000, (batch, 24))

    def openai_sdpa():
        ref(mel, tokens)

    def openai_explicit():
        with whisper.model.disable_sdpa():
            ref(mel, tokens)

    def ours_resid():
        model.run_with_cache(mel, tokens, names_filter=is_resid)

    def ours_all():
        model.run_with_cache(mel, tokens)

    def interleaved(runs: dict, before: dict | None = None) -> dict[str, float]:
        before = before or {}
        for key, fn in runs.items():  # warm-up
            before.get(key, lambda: None)()
            timed(fn)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(repeats):  # ABBA order: every run has each neighbour before and after it
            for key, fn in (list(runs.items()) if i % 2 == 0 else reversed(runs.items())):
                before.get(key, lambda: None)()  # untimed set-up
                times[key].append(timed(fn))
        return {k: statistics.median(v) for k, v in times.items()}

    # Each target's pair is interleaved on its own: a residual-only call frees the pattern buffers
    # that a full cache reuses, so "ours_all" is the steady state of repeated full caches, and
    # "ours_all_cold" the first call after the buffers were released.
    return interleaved({"openai_sdpa": openai_sdpa, "ours_resid": ours_resid}) | interleaved(
        {"openai_explicit": openai_explicit, "ours_all": ours_all, "ours_all_cold": ours_all},
        before={"ours_all_cold": model.release_buffers},
    )


def cache_memory(batch: int = 8) -> tuple[float, float, int]:
    _, model = build("tiny")
    mel = torch.randn(batch, 80, 3000)
    tokens = torch.randint(0, 50000, (batch, 24))
    with torch.no_grad():
        _, cache = model.run_with_cache(mel, tokens)
    tensor_bytes = sum(t.numel() * t.element_size() for t in cache.values())
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.values()}
    return tensor_bytes / 2**30, sum(storages.values()) / 2**30, len(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=sorted(REAL_DIMS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tune glibc to reuse freed buffers (whisper_lens.runtime.keep_freed_memory), "
                             "for both implementations")
    parser.add_argument("--pattern-buffer-mib", type=int, default=None,
                        help="bytes of attention buffers kept for reuse (whisper_lens.components."
                             "pattern_buffer_limit; default 512 MiB). The 2026-11-26 numbers kept every layer's, "
                             "about --pattern-buffer-mib 8192 for base at batch 8")
    args = parser.parse_args()
    if args.pattern_buffer_mib is not None:
        from whisper_lens.components import pattern_buffer_limit

        pattern_buffer_limit(args.pattern_buffer_mib << 20)
    if args.keep_freed_memory:
        from whisper_lens.runtime import keep_freed_memory

        print("allocator: keep_freed_memory()", keep_freed_memory())
    else:
        print("allocator: glibc defaults")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; medians of {args.repeats}")
    print(f"{'model':6} {'batch':>5} {'openai sdpa':>12} {'ours resid':>11} {'ratio':>6} "
          f"{'openai expl':>12} {'ours all':>9} {'ratio':>6} {'cold':>8} {'ratio':>6}")
    for name in args.models:
        for batch in args.batches:
            t = bench(name, batch, args.repeats)
            r1 = t["ours_resid"] / t["openai_sdpa"]
            r2 = t["ours_all"] / t["openai_explicit"]
            r3 = t["ours_all_cold"] / t["openai_explicit"]
            print(f"{name:6} {batch:>5} {t['openai_sdpa']:>11.3f}s {t['ours_resid']:>10.3f}s {r1:>5.2f}x "
                  f"{t['openai_explicit']:>11.3f}s {t['ours_all']:>8.3f}s {r2:>5.2f}x "
                  f"{t['ours_all_cold']:>7.3f}s {r3:>5.2f}x", flush=True)
    tensors, held, n = cache_memory()
    print(f"full tiny cache, batch 8: {n} tensors, {tensors:.2f} GiB of tensors, {held:.2f} GiB of storage held "
          f"({held / tensors:.3f}x)")


if __name__ == "__main__":
    main()
