"""Measure the tiny.en findings recorded in docs/findings.md (offline, CPU, a few minutes).

    uv run python scripts/findings.py [--clips 16] [--sae runs/quality_tiny_en_encoder_l2/sae]

Prints markdown: alignment heads found from word timings (against OpenAI's table), the
strongest heads of each kind, the encoder-lens curve, the attention-window sweep, and, with an
SAE, a steering example.
"""

from __future__ import annotations

import argparse

import torch

from whisper_lens import HookedWhisper
from whisper_lens.analysis import (
    alignment_head_table, attention_window_sweep, compare_alignment_heads, encoder_lens, find_alignment_heads,
    head_scores,
)
from whisper_lens.data import load_samples, load_word_samples


def table(frame, columns, digits: int = 3) -> str:
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, r in frame[columns].astype(object).iterrows():
        rows.append("| " + " | ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--clips", type=int, default=16, help="bundled clips for head scores and lenses")
    parser.add_argument("--sae", default=None, help="an encoder SAE (SAELens format) for the ablation example")
    parser.add_argument("--only-sae", action="store_true", help="only the SAE ablation example")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = HookedWhisper.from_pretrained(args.model, device="cpu")
    clips = list(load_samples(limit=args.clips))
    words = list(load_word_samples())
    if args.sae:
        from sae_lens import SAE

        sae = SAE.load_from_disk(args.sae)
        with torch.no_grad():
            word_latent_ablation(model, sae, words[0], word_index=2)
        if args.only_sae:
            return

    print(f"## Alignment heads of {model.model_name}\n")
    tab = alignment_head_table(model, words)
    found = find_alignment_heads(model, words)
    score = compare_alignment_heads(found, model.alignment_heads)
    ref = [tuple(x) for x in model.alignment_heads.nonzero().tolist()]
    print(f"{tab.n_words.iloc[0]} words in {len(words)} clips. Found (hit rate >= 0.5): {found}")
    print(f"OpenAI's table: {ref}. Precision {score['precision']:.2f}, recall {score['recall']:.2f} "
          f"({score['overlap']} shared).\n")
    print(table(tab.head(10), ["layer", "head", "hit_rate", "mean_error_s"]) + "\n")

    print("## Head kinds\n")
    df = head_scores(model, clips)
    for stack, metric, ascending in (("encoder", "locality", False), ("encoder", "padding_mass", False),
                                     ("decoder", "bos_mass", False), ("decoder", "prev_mass", False),
                                     ("cross", "monotonicity", False), ("cross", "real_mass", True)):
        part = df[df["stack"] == stack].sort_values(metric, ascending=ascending).head(3)
        heads = ", ".join(f"L{r.layer}H{r.head} {getattr(r, metric):.2f}" for r in part.itertuples())
        print(f"- {stack} {metric} ({'lowest' if ascending else 'highest'}): {heads}")
    print()

    print("## Encoder lens\n")
    lens = encoder_lens(model, clips)
    print(table(lens, ["layer", "wer_vs_reference", "wer_vs_full", "cross_entropy"]) + "\n")
    for row in lens.itertuples():
        print(f"- after {row.layer} blocks: \"{row.transcripts[0]}\"")
    print()

    print("## Attention window (encoder self-attention, +-k positions, 20 ms each)\n")
    sweep = attention_window_sweep(model, clips, windows=[2, 5, 10, 25, 50, 75, 150, None])
    print(table(sweep, ["window", "wer_vs_reference", "wer_vs_full"]))


def word_latent_ablation(model, sae, clip, word_index: int, n_latents: int = 8) -> None:
    """Remove the latents most selective for one word's frames, only at those frames."""
    from whisper_lens.analysis import ablate_latents

    hook = sae.cfg.metadata.hook_name
    batch = model.prepare([clip.audio])
    _, cache = model.run_with_cache(batch.mel, names_filter=[hook])
    n_real = int(batch.audio_mask[0].sum())
    acts = sae.encode(cache[hook][0, :n_real]).detach()
    word = clip.words[word_index]
    lo, hi = int(word.start * 50), int(round(word.end * 50))
    inside, outside = acts[lo:hi].mean(0), torch.cat([acts[:lo], acts[hi:]]).mean(0)
    latents = (inside - outside).topk(n_latents).indices.tolist()
    clean = model.transcribe([clip.audio])[0].text
    ablated = model.transcribe([clip.audio], fwd_hooks=ablate_latents(sae, latents, positions=slice(lo, hi)))[0].text
    print(f"\n## SAE latent ablation at {hook}\n")
    print(f"Clip {clip.id} ({clip.text!r}), word {word.word!r} at {word.start:.2f}-{word.end:.2f} s; "
          f"the {n_latents} latents most active there relative to the rest of the clip: {latents}")
    print(f"- clean:   \"{clean}\"\n- ablated at those frames only: \"{ablated}\"")


if __name__ == "__main__":
    main()
