"""The demo's SAE: which training data and size, measured side by side on the same held-out clips.

    uv run python benchmarks/demo_sae.py [--samples 500000]

tiny.en, encoder block 2 resid_post, TopK, SAELens's trainer as `whisper-lens demo` runs it
(batch 1024, lr 3e-3, cosine schedule, aux-k after 20 steps). Every variant is evaluated with
`whisper_lens.sae.evaluate` on the same 12 held-out bundled sentences (about 1,250 frames). Prints
one row per variant: training frames, seconds, explained variance, CE recovered, dead latents on
the held-out frames (and the firings per latent expected there), and WER clean / spliced.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

from whisper_lens import HookedWhisper
from whisper_lens.data import augment, load_samples, load_word_samples, shuffle
from whisper_lens.demo import HELD_OUT, SAMPLES, SNR_DB, SPEEDS
from whisper_lens.runtime import keep_freed_memory
from whisper_lens.sae.config import TrainSAEConfig
from whisper_lens.sae.evaluation import evaluate
from whisper_lens.sae.train import train_sae

VARIANTS = {  # name: (word clips too, speed/noise variants, expansion factor, k, resample every N steps)
    "sentences, 8x k32 (before)": (False, False, 8, 32, None),
    "+ words + variants, 8x k32": (True, True, 8, 32, None),
    "+ words + variants, 4x k32": (True, True, 4, 32, None),
    "+ words + variants, 4x k32, resampling": (True, True, 4, 32, 50),
    "+ words + variants, 4x k64": (True, True, 4, 64, None),
    "+ words + variants, 4x k64, resampling (demo)": (True, True, 4, 64, 50),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    keep_freed_memory()
    model = HookedWhisper.from_pretrained("tiny.en", device="cpu")
    clips = list(load_samples())
    held, sentences, words = clips[-HELD_OUT:], clips[:-HELD_OUT], list(load_word_samples())
    rows = []
    for name, (use_words, variants, expansion, k, resample) in VARIANTS.items():
        speech = sentences + (words if use_words else [])
        train = shuffle(speech + (list(augment(speech, speeds=SPEEDS, snr_db=SNR_DB)) if variants else []), seed=0)
        cfg = TrainSAEConfig(
            model="tiny.en", hook_name="encoder_blocks.2.hook_resid_post", device="cpu",
            out_dir=tempfile.mkdtemp(prefix="demo_sae_"),
            data={"eval_clips": 0, "buffer_batches": 4, "keep_in_memory": True},
            sae={"architecture": "topk", "expansion_factor": expansion, "options": {"k": k}},
            training={"total_training_samples": args.samples, "batch_size": 1024, "lr": 3e-3,
                      "lr_scheduler": "cosineannealing", "dead_feature_window": 20, "n_checkpoints": 0,
                      "resample_every": resample})
        start = time.perf_counter()
        sae = train_sae(cfg, model=model, clips=train, resume=False).sae
        seconds = time.perf_counter() - start
        ev = evaluate(model, sae, held, n_wer_clips=None, verbose=False)
        frames = sum(len(c.audio) for c in train) // 320
        rows.append((name, frames, seconds, ev))
    print(f"\n{'variant':<48}{'frames':>8}{'s':>6}{'EV':>7}{'CE rec':>8}{'dead':>7}{'exp':>6}{'WER':>7}{'spliced':>9}")
    for name, frames, seconds, ev in rows:
        print(f"{name:<48}{frames:>8}{seconds:>6.0f}{ev.explained_variance:>7.3f}{ev.ce_recovered:>8.1%}"
              f"{ev.dead_fraction:>7.1%}{ev.expected_firings:>6.0f}{ev.wer_clean:>7.1%}{ev.wer_spliced:>9.1%}")


if __name__ == "__main__":
    main()
