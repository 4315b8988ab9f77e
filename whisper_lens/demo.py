"""The main job, `whisper-lens demo`: tiny.en offline, the bundled speech, an SAE, the report.

    run_demo(DemoOptions(out=Path("report")))

Stages: load, transcribe, train the SAE, build the patching pair, then the report's sections.
`on_stage(name)` is called as each stage starts (and once more with "done"), which is how
`benchmarks/bench_demo.py` measures each stage's time and peak memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_lens.audio import SAMPLE_RATE


@dataclass(frozen=True)
class DemoOptions:
    model: str = "tiny.en"
    device: str = "auto"
    out: Path = Path("whisper_lens_report")
    quick: bool = False  # a smaller SAE run and fewer analyses (CI)
    sae: bool = True
    limit: int | None = None
    batch_size: int = 8


# The demo's SAE: 87 s of bundled speech is little, so it trains on the sentences (less the
# held-out ones), the word-at-a-time clips, and speed and noise variants of both
# (benchmarks/RESULTS.md, "The demo's SAE", compares the choices side by side).
HELD_OUT = 12  # held-out sentences for the report's SAE evaluation (about 1,250 frames)
EXPANSION, K = 4, 64  # 1,536 latents: about 52 expected firings each on the held-out frames
SAMPLES, RESAMPLE_EVERY = 500_000, 50  # training rows; re-initialise latents silent for 50 steps
SPEEDS, SNR_DB = (0.85, 0.9, 1.1, 1.15), (15.0, 25.0)


def noisy_word_pair(model, word_clip, word_index: int = 2):
    """A clean/corrupted pair for patching: a word-boundary clip and the same clip with noise
    over one word."""
    from whisper_lens.analysis.patching import patching_setup

    word = word_clip.words[word_index]
    noisy = word_clip.audio.copy()
    a, b = int(word.start * SAMPLE_RATE), int(word.end * SAMPLE_RATE)
    noisy[a:b] = 0.3 * np.random.default_rng(0).standard_normal(b - a).astype(np.float32)
    return patching_setup(model, word_clip.audio, noisy, word_clip.text), word


def run_demo(opts: DemoOptions, on_stage: Callable[[str], None] = lambda name: None) -> Path:
    """Run the demo and return the report's index.html."""
    from tqdm.auto import tqdm

    from whisper_lens import HookedWhisper
    from whisper_lens.data import augment, load_samples, load_word_samples, shuffle
    from whisper_lens.metrics import word_error_rate
    from whisper_lens.names import get_act_name
    from whisper_lens.report import build_report
    from whisper_lens.runtime import release_memory
    from whisper_lens.sae.config import TrainSAEConfig
    from whisper_lens.sae.train import train_sae

    t0 = time.perf_counter()
    stages = 5

    def stage(i: int, key: str, text: str) -> None:
        if i > 1:
            release_memory(model)
        on_stage(key)
        print(f"[{i}/{stages}] {text} ({time.perf_counter() - t0:.0f} s)", flush=True)

    stage(1, "load", f"loading {opts.model}")
    model = HookedWhisper.from_pretrained(opts.model, device=opts.device)
    print(f"      {model}  <- {model.source}")
    clips = list(load_samples(limit=opts.limit))
    stage(2, "transcription", f"transcribing {len(clips)} bundled samples")
    transcripts = []
    for start in tqdm(range(0, len(clips), opts.batch_size), desc="transcribing", unit="batch"):
        transcripts += model.transcribe(clips[start:start + opts.batch_size])
    hyps = [t.text for t in transcripts]
    for clip, hyp in zip(clips, hyps):
        mark = " " if word_error_rate([clip.text], [hyp]) == 0 else "*"
        print(f"    {mark} {clip.id}: {hyp}")
    print(f"      word error rate {word_error_rate([c.text for c in clips], hyps):.1%}")

    sae = None
    words = list(load_word_samples())
    held_out = clips[-HELD_OUT:] if len(clips) > 2 * HELD_OUT else clips[-2:]
    if opts.sae:
        hook = get_act_name("resid_post", min(2, model.dims.n_audio_layer - 1), "encoder")
        samples = 30_000 if opts.quick else SAMPLES
        speech = [c for c in clips if c not in held_out] + words
        train = shuffle(speech + list(augment(speech, speeds=SPEEDS, snr_db=SNR_DB)), seed=0)
        stage(3, "SAE training", f"training a TopK SAE ({EXPANSION}x, k={K}) at {hook} on {samples:,} samples of "
                                 f"{len(train)} clips ({len(speech)} spoken, with speed and noise variants)")
        cfg = TrainSAEConfig(
            model=opts.model, hook_name=hook, device=opts.device, out_dir=str(opts.out / "sae_run"),
            data={"eval_clips": 0, "buffer_batches": 4, "keep_in_memory": True, "model_batch_size": 2},
            sae={"architecture": "topk", "expansion_factor": EXPANSION, "options": {"k": K}},
            training={"total_training_samples": samples, "batch_size": 1024, "lr": 3e-3,
                      "lr_scheduler": "cosineannealing", "dead_feature_window": 20, "n_checkpoints": 0,
                      "resample_every": RESAMPLE_EVERY},
        )
        sae = train_sae(cfg, model=model, clips=train, resume=False).sae
    stage(4, "patching pair", "building the patching pair and scoring heads on word timings")
    setup, word = noisy_word_pair(model, words[0])
    print(f"      clean/corrupted: {words[0].text!r} with noise over {word.word!r}")
    stage(5, "report", f"writing the report to {opts.out}")
    bar = tqdm(total=6 + 2 * opts.sae, desc="report", unit="section")

    def progress(section: str) -> None:
        on_stage(section)
        bar.set_postfix_str(section)
        bar.update(1)

    index = build_report(model, clips, opts.out, word_clips=words, sae=sae, sae_eval_clips=held_out,
                         patching=setup, transcripts=transcripts, quick=opts.quick, log=progress)
    bar.close()
    if sae is not None:  # the SAE's folder carries its held-out metrics, as `whisper-lens train-sae` writes them
        (opts.out / "sae_run" / "eval").mkdir(parents=True, exist_ok=True)
        (opts.out / "sae_run" / "eval" / "metrics.json").write_text((opts.out / "sae_metrics.json").read_text())
    on_stage("done")
    print(f"done in {time.perf_counter() - t0:.0f} s. Open {index.resolve()}")
    return index
