"""The `whisper-lens` command line.

    whisper-lens demo [--out DIR]     load tiny.en offline, transcribe the bundled samples, summarise the hooks
    whisper-lens hooks MODEL          the hook table with shapes for MODEL
    whisper-lens info MODEL           dimensions, weight source and format, device
"""

from __future__ import annotations

import argparse
import sys
import time
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
    from whisper_lens.demo import DemoOptions, run_demo

    run_demo(DemoOptions(model=args.model, device=args.device, out=Path(args.out), quick=args.quick,
                         sae=not args.no_sae, limit=args.limit, batch_size=args.batch_size))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from sae_lens import SAE

    from whisper_lens.audio import load_audio
    from whisper_lens.data import AudioExample
    from whisper_lens.report import build_report

    if args.text and len(args.text) != len(args.audio):
        raise ValueError(f"{len(args.audio)} audio files but {len(args.text)} --text transcripts; give one per file")
    model = _load(args.model, args.device)
    texts = args.text or [None] * len(args.audio)
    clips = [AudioExample(Path(a).stem, load_audio(a), 16000, t) for a, t in zip(args.audio, texts)]
    patching = None
    if args.corrupted:
        if not clips[0].text:
            raise ValueError("--corrupted needs --text for the first (clean) audio file")
        from whisper_lens.analysis.patching import patching_setup

        patching = patching_setup(model, clips[0].audio, load_audio(args.corrupted), clips[0].text,
                                  args.corrupted_text)
    sae = SAE.load_from_disk(args.sae) if args.sae else None
    index = build_report(model, clips, args.out, sae=sae, patching=patching,
                         log=lambda s: print(f"  {s}", flush=True))
    print(f"report: {index.resolve()}")
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

    demo = sub.add_parser("demo", help="the main job: transcribe the bundled speech, train an SAE, write the report",
                          description="Load tiny.en offline, transcribe the bundled samples, train a small TopK SAE "
                                      "on an encoder layer, evaluate it, and write the HTML report.")
    add_model_args(demo, positional=False)
    demo.add_argument("--out", default="whisper_lens_report", help="report folder (default: whisper_lens_report)")
    demo.add_argument("--quick", action="store_true", help="a smaller SAE run and fewer analyses (for CI)")
    demo.add_argument("--no-sae", action="store_true", help="skip SAE training")
    demo.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    demo.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default: 8)")
    demo.set_defaults(func=cmd_demo)

    analyze = sub.add_parser("analyze", help="write the HTML report for your own audio",
                             description="Run the analyses on AUDIO files and write DIR/index.html.")
    analyze.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg; 16 kHz or resampled)")
    add_model_args(analyze, positional=False)
    analyze.add_argument("--text", nargs="+", default=None, help="reference transcripts, one per audio file")
    analyze.add_argument("--sae", default=None, help="an SAE saved in SAELens format, for feature dashboards")
    analyze.add_argument("--corrupted", default=None,
                         help="a corrupted version of the first audio file, for an activation-patching heat map")
    analyze.add_argument("--corrupted-text", default=None, help="its transcript, when it says something different")
    analyze.add_argument("--out", default="whisper_lens_report", help="report folder (default: whisper_lens_report)")
    analyze.set_defaults(func=cmd_analyze)

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
