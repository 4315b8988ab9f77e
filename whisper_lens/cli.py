"""The `whisper-lens` command line.

    whisper-lens demo [--out DIR]     load tiny.en offline, transcribe the bundled samples, summarise the hooks
    whisper-lens hooks MODEL          the hook table with shapes for MODEL
    whisper-lens info MODEL           dimensions, weight source and format, device
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def _load(name: str, device: str):
    from whisper_lens import HookedWhisper

    return HookedWhisper.from_pretrained(name, device=device)


def _shape_for(model, name: str, shape: str, n_text: int = 3) -> str:
    d = model.dims
    enc = name.startswith(("encoder", "hook_conv1", "hook_audio"))
    width, heads = (d.n_audio_state, d.n_audio_head) if enc else (d.n_text_state, d.n_text_head)
    pos = d.n_audio_ctx if enc else "text_pos"
    sizes = {"mel_frame": d.n_mel_frames, "audio_pos": d.n_audio_ctx, "query_pos": pos, "key_pos": pos,
             "head": heads, "d_head": width // heads, "d_model": width, "d_mlp": 4 * width, "d_vocab": d.n_vocab}
    return "[" + ", ".join(str(sizes.get(axis, axis)) for axis in shape.split()) + "]"


def cmd_hooks(args: argparse.Namespace) -> int:
    from whisper_lens.names import hook_table

    model = _load(args.model, args.device)
    table = hook_table(model.dims.n_audio_layer, model.dims.n_text_layer, enabled=model.options.enabled)
    width = max(map(len, table))
    for name, spec in table.items():
        if args.filter and args.filter not in name:
            continue
        print(f"{name:<{width}}  {_shape_for(model, name, spec.shape):<28} {spec.doc}")
    print(f"\n{len(table)} hooks on {model.model_name}; shapes for one 30 s window (batch and text_pos left symbolic)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args.model, args.device)
    d = model.dims
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model        {model.model_name}")
    print(f"source       {model.source}")
    print(f"device       {model.device} ({model.dtype})")
    print(f"parameters   {n_params / 1e6:.1f} M")
    print(f"encoder      {d.n_audio_layer} blocks, d_model {d.n_audio_state}, {d.n_audio_head} heads, "
          f"{d.n_audio_ctx} positions, {d.n_mels} mel bins")
    print(f"decoder      {d.n_text_layer} blocks, d_model {d.n_text_state}, {d.n_text_head} heads, "
          f"{d.n_text_ctx} positions, vocabulary {d.n_vocab} ({'multilingual' if d.is_multilingual else 'English-only'})")
    print(f"alignment    {model.alignment_heads.nonzero().tolist()}")
    print(f"hooks        {len(model.hook_dict)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from whisper_lens.data import load_samples
    from whisper_lens.metrics import word_errors
    from whisper_lens.names import hook_table

    t0 = time.perf_counter()
    print(f"[1/3] loading {args.model} ...", flush=True)
    model = _load(args.model, args.device)
    print(f"      {model}  <- {model.source}  ({time.perf_counter() - t0:.1f} s)")
    rows = list(load_samples(limit=args.limit))
    print(f"[2/3] transcribing {len(rows)} bundled samples (greedy, hooks live) ...", flush=True)
    errors = words = 0
    t1 = time.perf_counter()
    for start in range(0, len(rows), args.batch_size):
        batch = rows[start:start + args.batch_size]
        for row, result in zip(batch, model.transcribe([r.audio for r in batch])):
            n_errors, n_words = word_errors(row.text, result.text)
            errors, words = errors + n_errors, words + n_words
            mark = " " if n_errors == 0 else "*"
            print(f"    {mark} {row.id}: {result.text}")
    print(f"      word error rate {errors / max(words, 1):.1%} over {words} words "
          f"({time.perf_counter() - t1:.1f} s)")
    print("[3/3] hooks", flush=True)
    with torch.no_grad():
        _, cache = model.run_with_cache([rows[0].audio], model.to_tokens(rows[0].text),
                                        names_filter=lambda n: "resid_post" in n or "pattern" in n)
    table = hook_table(model.dims.n_audio_layer, model.dims.n_text_layer, enabled=model.options.enabled)
    groups = Counter(name.split(".")[0] if "_blocks" in name else "stem and final" for name in table)
    print(f"      {len(table)} hook points: " + ", ".join(f"{k} {v}" for k, v in groups.items()))
    for name in ("encoder_blocks.0.attn.hook_pattern", "decoder_blocks.0.cross_attn.hook_pattern",
                 f"encoder_blocks.{model.dims.n_audio_layer - 1}.hook_resid_post"):
        print(f"      cached {name}: {tuple(cache[name].shape)}")
    print(f"done in {time.perf_counter() - t0:.1f} s. Full table: `whisper-lens hooks {args.model}`")
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    import json

    from whisper_lens.model import HookedWhisper
    from whisper_lens.runtime import resolve_device
    from whisper_lens.sae.config import TrainSAEConfig
    from whisper_lens.sae.evaluation import evaluate
    from whisper_lens.sae.train import load_clips, train_sae

    cfg = TrainSAEConfig.from_yaml(args.config, overrides=args.override)
    print(f"training an SAE at {cfg.hook_name} of {cfg.model} -> {cfg.out_dir}", flush=True)
    model = HookedWhisper.from_pretrained(cfg.model, device=resolve_device(cfg.device))
    clips = load_clips(cfg.data)
    n_eval = cfg.data.eval_clips
    train_clips, eval_clips = clips[: len(clips) - n_eval], clips[len(clips) - n_eval:]
    print(f"{len(train_clips)} training clips, {len(eval_clips)} held out", flush=True)
    result = train_sae(cfg, model=model, clips=train_clips, eval_clips=eval_clips, resume=not args.no_resume)
    print(f"trained {result.n_steps} steps on {result.n_samples} activations "
          f"({result.rows_per_second:.0f} real rows/s from the model); SAE saved to {result.sae_path}")
    if eval_clips and not args.no_eval:
        ev = evaluate(model, result.sae, eval_clips, out_dir=Path(cfg.out_dir) / "eval",
                      pack=cfg.data.pack, n_wer_clips=args.wer_clips)
        (Path(cfg.out_dir) / "eval" / "metrics.json").write_text(json.dumps(ev.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-lens", description="Mechanistic interpretability for Whisper.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_model_args(p: argparse.ArgumentParser, positional: bool) -> None:
        if positional:
            p.add_argument("model", help="OpenAI name (tiny.en, base, ...) or a checkpoint path")
        else:
            p.add_argument("--model", default="tiny.en", help="OpenAI name or checkpoint path (default: tiny.en)")
        p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")

    demo = sub.add_parser("demo", help="the main job: load tiny.en offline, transcribe the bundled samples")
    add_model_args(demo, positional=False)
    demo.add_argument("--limit", type=int, default=None, help="transcribe only the first N samples")
    demo.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default: 8)")
    demo.set_defaults(func=cmd_demo)

    hooks = sub.add_parser("hooks", help="print the hook table with shapes")
    add_model_args(hooks, positional=True)
    hooks.add_argument("--filter", default=None, help="only names containing this text")
    hooks.set_defaults(func=cmd_hooks)

    info = sub.add_parser("info", help="dimensions, weight source and device of a model")
    add_model_args(info, positional=True)
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train-sae", help="train an SAE with SAELens on Whisper activations (see configs/)",
                           description="Train an SAE as CONFIG says, resuming from its last checkpoint when "
                                       "out_dir has one, then evaluate it on the held-out clips.")
    train.add_argument("config", help="YAML config, e.g. configs/tiny_en_encoder_l2.yaml")
    train.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                       help="change a setting, e.g. --override training.lr=1e-3 --override sae.options.k=64")
    train.add_argument("--no-resume", action="store_true", help="start over even if out_dir has checkpoints")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation on held-out clips")
    train.add_argument("--wer-clips", type=int, default=16, help="held-out clips to transcribe (default: 16)")
    train.set_defaults(func=cmd_train_sae)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from whisper_lens.runtime import keep_freed_memory

    keep_freed_memory()  # long jobs: reuse freed activation buffers instead of page-faulting them in
    if getattr(args, "limit", None) is not None and args.limit < 1:
        build_parser().error("--limit must be at least 1")
    if getattr(args, "batch_size", 1) < 1:
        build_parser().error("--batch-size must be at least 1")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, FileExistsError) as err:
        print(f"whisper-lens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
