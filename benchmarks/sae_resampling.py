"""Dead latents: TopK's auxiliary loss against dead-latent resampling, same data and steps.

    uv run python benchmarks/sae_resampling.py [--config configs/tiny_en_encoder_l2_quality.yaml]
        [--samples 600000] [--resample-every 25]

Trains three SAEs from one config (aux-k loss only, the SAELens default; resampling only; both)
and evaluates each on the held-out clips. Needs the corpus named in the config.
"""

from __future__ import annotations

import argparse
import time

from whisper_lens import HookedWhisper
from whisper_lens.sae import TrainSAEConfig, evaluate, train_sae
from whisper_lens.sae.train import load_clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_en_encoder_l2_quality.yaml")
    parser.add_argument("--samples", type=int, default=400_000, help="training activations per variant")
    parser.add_argument("--resample-every", type=int, default=25, help="steps between resampling checks")
    parser.add_argument("--out", default="runs/resampling")
    args = parser.parse_args()
    base = TrainSAEConfig.from_yaml(args.config)
    model = HookedWhisper.from_pretrained(base.model, device="cpu")
    clips = load_clips(base.data)
    train, held_out = clips[: len(clips) - base.data.eval_clips], clips[len(clips) - base.data.eval_clips:]
    variants = {
        "aux-k loss (SAELens default)": [],
        "resampling, no aux-k loss": ["sae.options.aux_loss_coefficient=0", f"training.resample_every={args.resample_every}"],
        "neither": ["sae.options.aux_loss_coefficient=0"],
    }
    rows = []
    for name, overrides in variants.items():
        slug = name.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "and")
        cfg = base.with_overrides([f"training.total_training_samples={args.samples}", "training.n_checkpoints=0",
                                   f"out_dir={args.out}/{slug}", *overrides])
        start = time.perf_counter()
        result = train_sae(cfg, model=model, clips=train, resume=False)
        ev = evaluate(model, result.sae, held_out, pack=cfg.data.pack, n_wer_clips=0, verbose=False)
        n_resampled = sum(n for _, n in result.resampled)
        train_dead = result.sae.cfg.metadata.num_dead_features
        rows.append((name, ev, train_dead, n_resampled, time.perf_counter() - start))
        print(f"{name}: {ev.summary()}", flush=True)
    d_sae = rows[0][1].density.__len__()
    print(f"\n{args.samples:,} activations per variant ({args.samples // base.training.batch_size} steps), "
          f"{d_sae} latents, held-out: {len(held_out)} clips")
    print("| variant | explained variance | dead on held-out | dead in training window | CE recovered | "
          "latents resampled | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, ev, train_dead, n_resampled, seconds in rows:
        print(f"| {name} | {ev.explained_variance:.3f} | {ev.dead_fraction:.1%} | {train_dead / d_sae:.1%} | "
              f"{ev.ce_recovered:.1%} | {n_resampled} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
