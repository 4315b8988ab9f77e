"""Attention heads of every stack, scored on real frames and tokens only.

    df = head_scores(model, clips)                       # one row per (stack, layer, head)
    heads = find_alignment_heads(model, load_word_samples())   # from data, not the checkpoint
    compare_alignment_heads(heads, model.alignment_heads)      # precision / recall

Encoder self-attention: `locality` (attention mass within +-`window` positions of the query),
`mean_distance` (seconds), `padding_mass` (attention to padding keys), `energy_corr`
(correlation of the attention a frame receives with its log-mel energy).
Decoder self-attention: `bos_mass` (to the first prompt token), `prev_mass` (to the previous
token), `mean_distance` (tokens back).
Cross-attention: `real_mass` (on real frames), `entropy` (nats, over all frames), `monotonicity`
(Spearman correlation of token order with the attention's centre of mass in time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from whisper_lens.activations import batches_of
from whisper_lens.audio import AUDIO_POS_PER_SECOND
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    import pandas as pd

    from whisper_lens.model import HookedWhisper

STACKS = ("encoder", "decoder", "cross")


class _Sums:
    """Running (sum, count) per (stack, layer, metric) over heads."""

    def __init__(self) -> None:
        self.sum: dict[tuple[str, int, str], Tensor] = defaultdict(lambda: torch.zeros(()))
        self.count: dict[tuple[str, int, str], Tensor] = defaultdict(lambda: torch.zeros(()))

    def add(self, stack: str, layer: int, metric: str, values: Tensor, weight: Tensor) -> None:
        """values [head ...], weight broadcastable [...] (1 where the query counts)."""
        key = (stack, layer, metric)
        self.sum[key] = self.sum[key] + (values.double() * weight.double()).flatten(1).sum(1).cpu()
        self.count[key] = self.count[key] + weight.double().expand_as(values[:1]).sum().cpu()

    def mean(self) -> dict[tuple[str, int, str], Tensor]:
        return {k: self.sum[k] / self.count[k].clamp(min=1) for k in self.sum}


def spearman(x: Float[Tensor, "... n"], y: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Spearman rank correlation along the last axis (ties broken by order)."""
    rx = x.argsort(-1).argsort(-1).double()
    ry = y.argsort(-1).argsort(-1).double()
    rx, ry = rx - rx.mean(-1, keepdim=True), ry - ry.mean(-1, keepdim=True)
    return (rx * ry).sum(-1) / (rx.norm(dim=-1) * ry.norm(dim=-1)).clamp(min=1e-12)


def _pearson(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Pearson correlation along the last axis over `mask`ed entries."""
    m = mask.double()
    n = m.sum(-1, keepdim=True).clamp(min=1)
    mx, my = (x * m).sum(-1, keepdim=True) / n, (y * m).sum(-1, keepdim=True) / n
    dx, dy = (x - mx) * m, (y - my) * m
    return (dx * dy).sum(-1) / (dx.norm(dim=-1) * dy.norm(dim=-1)).clamp(min=1e-12)


def encoder_head_stats(pattern: Float[Tensor, "batch head q k"], real: Bool[Tensor, "batch pos"],
                       energy: Float[Tensor, "batch pos"], window: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-head (values, weights) for the encoder metrics; values are [head batch q] or [head batch]."""
    n = pattern.shape[-1]
    pos = torch.arange(n, device=pattern.device)
    distance = (pos[:, None] - pos[None, :]).abs().to(pattern.dtype)
    p = pattern.transpose(0, 1)  # [head batch q k]
    query = real[None].to(p.dtype)  # real queries only
    local = (p * (distance <= window)).sum(-1)
    mean_dist = (p * distance).sum(-1) / AUDIO_POS_PER_SECOND
    padding = (p * (~real)[None, :, None, :]).sum(-1)
    received = (p * query[..., None]).sum(-2)  # [head batch k]: attention each key gets from real queries
    corr = _pearson(received.double(), energy[None].double().expand_as(received), real[None].expand_as(received))
    items = real.any(-1)[None].to(p.dtype)
    return {"locality": (local, query), "mean_distance": (mean_dist, query), "padding_mass": (padding, query),
            "energy_corr": (corr, items)}


def decoder_head_stats(pattern: Float[Tensor, "batch head q k"], queries: Bool[Tensor, "batch q"]):
    p = pattern.transpose(0, 1)
    n = p.shape[-1]
    pos = torch.arange(n, device=p.device)
    back = (pos[:, None] - pos[None, :]).clamp(min=0).to(p.dtype)
    prev = torch.zeros(n, n, device=p.device, dtype=p.dtype)
    prev[pos[1:], pos[:-1]] = 1
    q = queries[None].to(p.dtype)
    return {"bos_mass": (p[..., 0], q), "prev_mass": ((p * prev).sum(-1), q), "mean_distance": ((p * back).sum(-1), q)}


def cross_head_stats(pattern: Float[Tensor, "batch head q k"], queries: Bool[Tensor, "batch q"],
                     real: Bool[Tensor, "batch pos"]):
    p = pattern.transpose(0, 1)  # [head batch q k]
    q = queries[None].to(p.dtype)
    real_mass = (p * real[None, :, None, :]).sum(-1)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(-1)
    on_real = p * real[None, :, None, :]
    pos = torch.arange(p.shape[-1], device=p.device, dtype=p.dtype)
    centre = (on_real * pos).sum(-1) / on_real.sum(-1).clamp(min=1e-12)  # [head batch q]
    mono, weight = [], []
    for b in range(p.shape[1]):
        idx = queries[b].nonzero().flatten()
        if len(idx) >= 3:
            mono.append(spearman(idx.to(p.dtype).expand(p.shape[0], -1), centre[:, b, idx]))
            weight.append(1.0)
        else:
            mono.append(torch.zeros(p.shape[0], dtype=torch.float64))
            weight.append(0.0)
    return {"real_mass": (real_mass, q), "entropy": (entropy, q),
            "monotonicity": (torch.stack(mono, 1), torch.tensor(weight)[None])}


def _frame_energy(mel: Tensor, n_pos: int) -> Tensor:
    """Mean log-mel per encoder position (two mel frames each)."""
    energy = mel.float().mean(1)  # [batch mel_frame]
    return energy[:, : 2 * n_pos].reshape(energy.shape[0], n_pos, 2).mean(-1)


@torch.no_grad()
def head_scores(model: HookedWhisper, clips: Sequence[Any], *, batch_size: int = 2, window: int = 10,
                pack: bool = False) -> pd.DataFrame:
    """Score every head of every stack on `clips` (with transcripts for the decoder stacks).

    One clip per window by default (`pack=False`), so padding is what the model normally sees;
    patterns are reduced to running sums inside the hooks, one item at a time, and never cached,
    so memory does not grow with the number of clips (tiny.en: about 0.3 GB above the model at
    the default `batch_size=2`)."""
    import pandas as pd

    clips = list(clips)
    has_text = all(getattr(c, "text", None) for c in clips)
    sums = _Sums()
    for group in batches_of(model, clips, batch_size, pack, 0.2):
        batch = model.prepare(group, pack=pack)
        real = batch.audio_mask
        energy = _frame_energy(batch.mel, real.shape[1])
        hooks = []
        for layer in range(model.dims.n_audio_layer):
            def enc(pattern, hook, layer=layer):
                for b in range(len(pattern)):  # one item at a time: temporaries the size of one pattern
                    one = slice(b, b + 1)
                    for metric, (v, w) in encoder_head_stats(pattern[one], real[one], energy[one], window).items():
                        sums.add("encoder", layer, metric, v, w)
            hooks.append((get_act_name("pattern", layer, "encoder"), enc))
        if has_text:
            queries = batch.transcript_mask
            for layer in range(model.dims.n_text_layer):
                def dec(pattern, hook, layer=layer):
                    for metric, (v, w) in decoder_head_stats(pattern, queries).items():
                        sums.add("decoder", layer, metric, v, w)

                def cross(pattern, hook, layer=layer):
                    for metric, (v, w) in cross_head_stats(pattern, queries, real).items():
                        sums.add("cross", layer, metric, v, w)
                hooks += [(get_act_name("pattern", layer, "decoder"), dec),
                          (get_act_name("cross_pattern", layer, "decoder"), cross)]
            model.run_with_hooks(batch.mel, batch.tokens, fwd_hooks=hooks)
        else:
            model.run_with_hooks(batch.mel, fwd_hooks=hooks)
    rows: dict[tuple[str, int, int], dict[str, Any]] = {}
    for (stack, layer, metric), values in sums.mean().items():
        for head, value in enumerate(values.tolist()):
            rows.setdefault((stack, layer, head), {"stack": stack, "layer": layer, "head": head})[metric] = value
    order = {s: i for i, s in enumerate(STACKS)}
    return pd.DataFrame(sorted(rows.values(), key=lambda r: (order[r["stack"]], r["layer"], r["head"])))


# ------------------------------------------------------------------ alignment heads from word timings
def _word_token_rows(model: HookedWhisper, text: str) -> list[list[int]] | None:
    """For each word of `text`, the indices of its transcript tokens (None if they do not line up)."""
    tokens = model.to_tokens(text, prepend_sot=False)[0].tolist()
    pieces = [model.tokenizer.decode([t]) for t in tokens]
    words: list[list[int]] = []
    for i, piece in enumerate(pieces):
        if not words or piece.startswith(" "):
            words.append([i])
        else:
            words[-1].append(i)
    return words if len(words) == len(text.split()) else None


@torch.no_grad()
def alignment_head_table(model: HookedWhisper, clips: Sequence[Any], *, tolerance_s: float = 0.04) -> pd.DataFrame:
    """For each cross-attention head: how well its attention locates each word in time.

    For every word, the head's attention (on real frames) from the rows that predict the word's
    tokens gives a centre of mass in seconds. `hit_rate` is the fraction of words whose centre
    lies inside the word's known span (+-`tolerance_s`); `mean_error_s` the mean distance to the
    span's midpoint. Clips need `.words` (see `whisper_lens.data.load_word_samples`)."""
    import pandas as pd

    n_layers, n_heads = model.dims.n_text_layer, model.dims.n_text_head
    hits = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    errors = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    n_words = 0
    for clip in clips:
        if getattr(clip, "words", None) is None:
            raise ValueError(f"clip {getattr(clip, 'id', '?')} has no word boundaries (.words)")
        rows = _word_token_rows(model, clip.text)
        if rows is None:
            continue
        batch = model.prepare([clip])
        names = [get_act_name("cross_pattern", l, "decoder") for l in range(n_layers)]
        _, cache = model.run_with_cache(batch.mel, batch.tokens, names_filter=names)
        real = batch.audio_mask[0]
        pos = torch.arange(len(real), dtype=torch.float64)
        start = batch.text_start
        for layer, name in enumerate(names):
            pattern = cache[name][0].double() * real  # [head q k]
            for word, token_rows in zip(clip.words, rows):
                query = [start + t - 1 for t in token_rows]  # the rows that predict the word's tokens
                attn = pattern[:, query].mean(1)
                centre = (attn * pos).sum(-1) / attn.sum(-1).clamp(min=1e-12) / AUDIO_POS_PER_SECOND
                inside = (centre >= word.start - tolerance_s) & (centre <= word.end + tolerance_s)
                hits[layer] += inside.double()
                errors[layer] += (centre - (word.start + word.end) / 2).abs()
        n_words += len(rows)
    if n_words == 0:
        raise ValueError("no clip's transcript lined up with its word list")
    table = [{"layer": l, "head": h, "hit_rate": float(hits[l, h] / n_words),
              "mean_error_s": float(errors[l, h] / n_words)} for l in range(n_layers) for h in range(n_heads)]
    frame = pd.DataFrame(table).sort_values(["hit_rate", "mean_error_s"], ascending=[False, True])
    return frame.reset_index(drop=True).assign(n_words=n_words)


def find_alignment_heads(model: HookedWhisper, clips: Sequence[Any], *, top_k: int | None = None,
                         min_hit_rate: float = 0.5) -> list[tuple[int, int]]:
    """Cross-attention heads (decoder layer, head) whose attention tracks where each word is
    spoken, ranked best first, found from `clips` with known word boundaries alone (the
    checkpoint's alignment-heads table is not read). `top_k` keeps the best k; otherwise every
    head that places at least `min_hit_rate` of the words inside their spans."""
    table = alignment_head_table(model, clips)
    chosen = table.head(top_k) if top_k is not None else table[table.hit_rate >= min_hit_rate]
    return [(int(r.layer), int(r.head)) for r in chosen.itertuples()]


def compare_alignment_heads(found: Sequence[tuple[int, int]], reference: Tensor | Sequence[tuple[int, int]]
                            ) -> dict[str, float]:
    """Precision and recall of `found` against a reference set (e.g. `model.alignment_heads`,
    the dense [layer head] table shipped with OpenAI's checkpoints)."""
    if isinstance(reference, Tensor):
        reference = [tuple(x) for x in reference.nonzero().tolist()]
    ref, got = {tuple(map(int, r)) for r in reference}, {tuple(map(int, f)) for f in found}
    if not ref:
        raise ValueError("the reference set of alignment heads is empty")
    overlap = len(ref & got)
    return {"precision": overlap / len(got) if got else 0.0, "recall": overlap / len(ref),
            "found": len(got), "reference": len(ref), "overlap": overlap}
