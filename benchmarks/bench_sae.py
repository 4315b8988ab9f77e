"""SAE training throughput on this machine, as ratios measured side by side in one run.

    uv run python benchmarks/bench_sae.py [--steps 15] [--repeats 3]

1. Real-frame activations per second at encoder block 2 of tiny.en, packed against one clip
   per window, on the bundled samples (target: packed >= 5x).
2. Training throughput (activations/s) of route 1 (`activation_provider` -> SAELens `SAETrainer`)
   with activations already in memory, against `SAETrainer` fed a plain iterator over the same
   pre-computed tensor (target: <= 1.2x the time), and, with activations produced by the model
   as training goes, which part dominates.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples
from whisper_lens.sae import activation_provider

HOOK = "encoder_blocks.2.hook_resid_post"


def rows_per_second(model, clips, pack: bool) -> float:
    start = time.perf_counter()
    n = sum(len(rows) for rows in model.iter_activations(clips, HOOK, batch_size=8, pack=pack))
    return n / (time.perf_counter() - start)


def train_seconds(provider, steps: int, batch: int, d_in: int) -> float:
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=8 * d_in, k=32))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr_end=4e-5)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider)
    start = time.perf_counter()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # tqdm
        trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="SAE steps per timing")
    parser.add_argument("--batch", type=int, default=4096, help="activations per SAE step")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians reported)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model = HookedWhisper.from_pretrained("tiny.en", device="cpu")
    clips = list(load_samples())
    d_in = model.cfg.d_model
    print(f"tiny.en on {torch.get_num_threads()} CPU threads; {len(clips)} bundled clips; hook {HOOK}")

    # 1. packed vs unpacked supply
    packed, plain = [], []
    for _ in range(args.repeats):
        packed.append(rows_per_second(model, clips, pack=True))
        plain.append(rows_per_second(model, clips, pack=False))
    p, u = statistics.median(packed), statistics.median(plain)
    print(f"\n1. real frames/s: packed {p:,.0f}, one clip per window {u:,.0f}: packed is {p / u:.1f}x")

    # 2a. route 1 with activations in memory vs SAETrainer fed the same tensor
    warm = activation_provider(model, clips, HOOK, batch_size=args.batch, keep_in_memory=True)
    while warm.epoch == 0:  # run the first epoch through the model; later batches replay memory
        next(warm)
    tensor = torch.cat(list(model.iter_activations(clips, HOOK, batch_size=8)))
    route, plain_times = [], []
    for _ in range(args.repeats):
        route.append(train_seconds(warm, args.steps, args.batch, d_in))

        def plain_iter():
            for _ in itertools.count():
                order = torch.randperm(len(tensor))
                for start in range(0, len(order) - args.batch + 1, args.batch):
                    yield tensor[order[start : start + args.batch]]

        plain_times.append(train_seconds(plain_iter(), args.steps, args.batch, d_in))
    r, s = statistics.median(route), statistics.median(plain_times)
    n = args.steps * args.batch
    print(f"2a. activations in memory: route 1 {n / r:,.0f}/s, SAETrainer on a plain tensor {n / s:,.0f}/s: "
          f"route 1 takes {r / s:.2f}x the time")

    # 2b. activations produced by the model while training
    fresh = activation_provider(model, clips, HOOK, batch_size=args.batch)
    total = train_seconds(fresh, args.steps, args.batch, d_in)
    in_model = fresh.model_seconds
    print(f"2b. activations from the model: {n / total:,.0f}/s end to end; {in_model / total:.0%} of the time is "
          f"the encoder ({fresh.n_rows_read / in_model:,.0f} frames/s), {1 - in_model / total:.0%} the SAE steps, "
          f"shuffling and bookkeeping")


if __name__ == "__main__":
    main()
