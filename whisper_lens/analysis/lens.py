"""Lenses: read the next token off every decoder layer (logit lens), and transcribe from every
encoder layer (encoder lens).

    ll = logit_lens(model, batch)            # batch = model.prepare(clips) with transcripts
    ll.accuracy_vs_final, ll.ref_prob        # per layer
    el = encoder_lens(model, clips)          # pandas frame: layer, transcript, WER, cross-entropy

The logit lens applies the decoder's final layer norm afresh to each layer's residual stream
(nostalgebraist's lens), then the unembedding. The encoder lens ("Beyond Transcription", aiOla
2025) feeds the residual stream after k encoder blocks, through the encoder's final layer norm,
to the whole decoder in place of the real encoder output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from whisper_lens.audio import as_clips
from whisper_lens.metrics import word_error_rate
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    import pandas as pd

    from whisper_lens.audio import AudioBatch
    from whisper_lens.model import HookedWhisper


@dataclass(frozen=True)
class LogitLens:
    labels: list[str]  # one per layer: "embed", "block 0", ..., "block n-1" (= the model's output)
    top_tokens: Int[Tensor, "layer batch text_pos k"]  # most likely next tokens per layer
    top_probs: Float[Tensor, "layer batch text_pos k"]
    ref_rank: Int[Tensor, "layer batch text_pos"]  # rank of the reference next token (0 = top)
    ref_prob: Float[Tensor, "layer batch text_pos"]  # its probability
    mask: Bool[Tensor, "batch text_pos"]  # positions whose next token is a transcript token
    accuracy_vs_final: Float[Tensor, "layer"]  # top-1 agreement with the last layer, over `mask`
    accuracy_vs_reference: Float[Tensor, "layer"]  # top-1 equals the reference next token

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        m = self.mask
        return pd.DataFrame({
            "layer": self.labels,
            "accuracy_vs_final": self.accuracy_vs_final.tolist(),
            "accuracy_vs_reference": self.accuracy_vs_reference.tolist(),
            "mean_ref_prob": [float(p[m].mean()) for p in self.ref_prob],
            "median_ref_rank": [float(r[m].float().median()) for r in self.ref_rank],
        })


@torch.no_grad()
def logit_lens(model: HookedWhisper, batch: AudioBatch, *, k: int = 5, encoder_batch_size: int = 4) -> LogitLens:
    """Next-token distributions read from the residual stream after each decoder block (and the
    embeddings) at every transcript position of `batch` (built with transcripts). The encoder
    runs `encoder_batch_size` windows at a time and the vocabulary distributions one layer at a
    time, so memory is about the encoder's for that many windows plus one [batch pos vocab]."""
    if batch.tokens is None:
        raise ValueError("logit_lens needs transcripts: build the batch with model.prepare(audio, text)")
    names = ["hook_embed", "hook_pos_embed"] + [get_act_name("resid_post", l, "decoder")
                                               for l in range(model.dims.n_text_layer)]
    xa = model.encode(batch.mel, batch_size=encoder_batch_size)
    _, cache = model.run_with_cache(encoder_out=xa, decoder_input=batch.tokens, names_filter=names)
    resid = [cache["hook_embed"] + cache["hook_pos_embed"]]
    resid += [cache[get_act_name("resid_post", l, "decoder")] for l in range(model.dims.n_text_layer)]
    target = torch.zeros_like(batch.tokens)
    target[:, :-1] = batch.tokens[:, 1:]
    mask = torch.zeros_like(batch.transcript_mask)
    mask[:, :-1] = batch.transcript_mask[:, 1:]
    top_probs, top_tokens, ref_prob, ref_rank = [], [], [], []
    for x in resid:  # one layer at a time: a [batch pos vocab] distribution each, not all at once
        probs = (model.decoder_ln_final(x) @ model.W_U).float().softmax(-1)
        values, tokens = probs.topk(k, dim=-1)
        ref = probs.gather(-1, target[..., None])[..., 0]
        top_probs.append(values)
        top_tokens.append(tokens)
        ref_prob.append(ref)
        ref_rank.append((probs > ref[..., None]).sum(-1))
        del probs
    top_probs, top_tokens = torch.stack(top_probs), torch.stack(top_tokens)
    ref_prob, ref_rank = torch.stack(ref_prob), torch.stack(ref_rank)
    top1 = top_tokens[..., 0]
    n = mask.sum().clamp(min=1)
    acc_final = torch.stack([((t == top1[-1]) & mask).sum() / n for t in top1])
    acc_ref = torch.stack([((t == target) & mask).sum() / n for t in top1])
    labels = ["embed"] + [f"block {l}" for l in range(model.dims.n_text_layer)]
    return LogitLens(labels, top_tokens, top_probs, ref_rank, ref_prob, mask, acc_final.float(), acc_ref.float())


@torch.no_grad()
def encoder_lens(
    model: HookedWhisper,
    clips: Any,
    *,
    layers: list[int] | None = None,
    texts: list[str] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Transcribe from the residual stream after k encoder blocks, for each k in `layers`
    (default 0..n_audio_layer; k=0 is the conv stem's output, k=n the full model).

    Returns a frame with, per layer: `transcripts`, `wer_vs_reference` (when transcripts are
    known), `wer_vs_full` (against the full model's transcripts) and `cross_entropy` (teacher-
    forced, nats per transcript token). Clips run `batch_size` at a time, so memory does not grow
    with their number."""
    import pandas as pd

    n = model.dims.n_audio_layer
    layers = list(range(n + 1)) if layers is None else list(layers)
    if any(not 0 <= k <= n for k in layers):
        raise ValueError(f"encoder_lens layers must be in 0..{n} (blocks applied), got {layers}")
    clips = list(as_clips(clips, texts))
    with_refs = all(getattr(c, "text", None) is not None for c in clips)
    hyps: dict[int, list[str]] = {k: [] for k in layers}
    full: list[str] = []
    nll = dict.fromkeys(layers, 0.0)
    n_targets = 0
    for start in range(0, len(clips), batch_size):  # memory grows with batch_size, not the clips
        batch = model.prepare(clips[start : start + batch_size])
        resid = [model.encode(batch, stop_at_layer=0)]  # after k blocks, each block run once
        for block in range(n):
            resid.append(model.encode(resid[-1], start_at_layer=block, stop_at_layer=block + 1))
        full_xa = model.hook_encoder_out(model.encoder_ln_final(resid[n]))
        full += [t.text for t in model.transcribe(encoder_out=full_xa, max_new_tokens=max_new_tokens)]
        for k in layers:
            xa = full_xa if k == n else model.hook_encoder_out(model.encoder_ln_final(resid[k]))
            hyps[k] += [t.text for t in model.transcribe(encoder_out=xa, max_new_tokens=max_new_tokens)]
            if with_refs:
                nll[k] += float(model(encoder_out=xa, decoder_input=batch.tokens, return_type="loss",
                                      loss_per_token=True, loss_mask=batch.transcript_mask).sum())
        if with_refs:
            n_targets += int(batch.transcript_mask[:, 1:].sum())
    refs = [c.text for c in clips] if with_refs else None
    rows = []
    for k in layers:
        row: dict[str, Any] = {"layer": k, "transcripts": hyps[k], "wer_vs_full": word_error_rate(full, hyps[k])}
        if refs is not None:
            row["wer_vs_reference"] = word_error_rate(refs, hyps[k])
            row["cross_entropy"] = nll[k] / max(n_targets, 1)
        rows.append(row)
    return pd.DataFrame(rows)
