"""Activation patching between a clean and a corrupted input, in TransformerLens's style.

    setup = patching_setup(model, clean_audio, corrupted_audio, "The birch canoe slid.",
                           "The birch kayak slid.")        # or the same text with noisy audio
    patch_resid(model, setup, stack="decoder")         # [layer text_pos]
    patch_block_outputs(model, setup)                  # [component layer] per stack
    patch_heads(model, setup, stack="cross")           # [layer head]
    patch_encoder_time(model, setup, bin_s=0.2)        # [layer time_bin]

Clean activations are written into the corrupted run (denoising), one site at a time. The
metric is the logit difference between the clean and the corrupted next token at the first
position where the two transcripts differ, normalised so the corrupted run scores 0 and the
clean run 1. Every result is a `Patched` tensor with named, labelled axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from whisper_lens.activations import is_decoder_hook, real_positions
from whisper_lens.audio import AUDIO_POS_PER_SECOND
from whisper_lens.generate import transcribe_texts
from whisper_lens.metrics import word_error_rate
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    import pandas as pd

    from whisper_lens.audio import AudioBatch
    from whisper_lens.model import HookedWhisper


@dataclass(frozen=True)
class PatchingSetup:
    clean: AudioBatch  # one window
    corrupted: AudioBatch  # one window, same shape
    tokens: Int[Tensor, "1 text_pos"]  # decoder input: prompt + the transcript prefix both share
    answers: tuple[int, int]  # (clean, corrupted) next token after `tokens`
    clean_logit_diff: float  # logit(clean answer) - logit(corrupted answer), clean run
    corrupted_logit_diff: float  # the same, corrupted run

    def metric(self, logits: Float[Tensor, "batch text_pos d_vocab"]) -> Tensor:
        """Normalised logit difference: 0 = corrupted run, 1 = clean run."""
        diff = logits[:, -1, self.answers[0]] - logits[:, -1, self.answers[1]]
        return (diff - self.corrupted_logit_diff) / (self.clean_logit_diff - self.corrupted_logit_diff)


@dataclass(frozen=True)
class Patched:
    values: Tensor  # the metric for each patched site
    axes: tuple[str, ...]  # axis names, e.g. ("layer", "text_pos")
    labels: dict[str, list[str]]  # tick labels per axis

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        if self.values.ndim != 2:
            raise ValueError("to_frame needs a 2-D result")
        return pd.DataFrame(self.values.numpy(), index=self.labels[self.axes[0]], columns=self.labels[self.axes[1]])


@torch.no_grad()
def patching_setup(model: HookedWhisper, clean_audio: Any, corrupted_audio: Any, clean_text: str,
                   corrupted_text: str | None = None) -> PatchingSetup:
    """Prepare a clean/corrupted pair. With two different transcripts, the decoder input is their
    shared prefix and the answers are their first differing tokens. With one transcript (the
    corruption is in the audio only), the decoder input runs up to the first position where the
    corrupted run's top prediction differs from the clean run's, and those are the answers."""
    clean = model.prepare([clean_audio])
    corrupted = model.prepare([corrupted_audio])
    sot = model.sot_sequence()
    clean_tokens = model.to_tokens(clean_text, append_eot=True)[0].tolist()
    if corrupted_text is not None and corrupted_text != clean_text:
        corrupt_tokens = model.to_tokens(corrupted_text, append_eot=True)[0].tolist()
        split = next((i for i, (a, b) in enumerate(zip(clean_tokens, corrupt_tokens)) if a != b), None)
        if split is None:
            raise ValueError("the two transcripts tokenize to the same sequence; nothing to contrast")
        tokens = torch.tensor([clean_tokens[:split]], device=model.device)
        answers = (clean_tokens[split], corrupt_tokens[split])
    else:
        full = torch.tensor([clean_tokens], device=model.device)
        top_clean = model(clean.mel, full)[0].argmax(-1)
        top_corrupt = model(corrupted.mel, full)[0].argmax(-1)
        differ = (top_clean != top_corrupt).nonzero().flatten()
        differ = differ[differ >= len(sot) - 1]
        if len(differ) == 0:
            raise ValueError("the corrupted audio changes no next-token prediction; corrupt it more")
        split = int(differ[0]) + 1
        tokens = full[:, :split]
        answers = (int(top_clean[split - 1]), int(top_corrupt[split - 1]))
    diffs = []
    for batch in (clean, corrupted):
        logits = model(batch.mel, tokens)
        diffs.append(float(logits[0, -1, answers[0]] - logits[0, -1, answers[1]]))
    if abs(diffs[0] - diffs[1]) < 1e-6:
        raise ValueError("clean and corrupted runs give the same logit difference; nothing to patch")
    return PatchingSetup(clean, corrupted, tokens, answers, diffs[0], diffs[1])


def generic_patch(model: HookedWhisper, setup: PatchingSetup, sites: Sequence[tuple[str, Any]],
                  *, metric: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """For each (hook name, index) site, run the corrupted input with the clean activation
    written at `activation[index]` and return the metric, one value per site."""
    metric = metric or setup.metric
    names = sorted({name for name, _ in sites})
    _, clean_cache = model.run_with_cache(setup.clean.mel, setup.tokens, names_filter=names)
    corrupted_xa = model.encode(setup.corrupted)
    resid_before: dict[int, Tensor] = {}  # the corrupted run up to an encoder block, computed once

    def encoder_from(name: str) -> Tensor:
        layer = model.hook_dict[name].layer()
        if layer not in resid_before:
            resid_before[layer] = model.encode(setup.corrupted, stop_at_layer=layer)
        return model.encode(resid_before[layer], start_at_layer=layer)

    out = []
    with torch.no_grad():
        for name, index in sites:
            def write(act: Tensor, hook: Any, name: str = name, index: Any = index) -> Tensor:
                act = act.clone()
                act[index] = clean_cache[name][index]
                return act

            if name.startswith(("decoder", "hook_embed", "hook_pos_embed")):  # the encoder is unchanged
                logits = model.run_with_hooks(encoder_out=corrupted_xa, decoder_input=setup.tokens,
                                              fwd_hooks=[(name, write)])
            elif name.startswith("encoder_blocks."):  # blocks before the site are unchanged
                with model.hooks(fwd_hooks=[(name, write)]):
                    logits = model(encoder_out=encoder_from(name), decoder_input=setup.tokens)
            else:
                logits = model.run_with_hooks(setup.corrupted.mel, setup.tokens, fwd_hooks=[(name, write)])
            out.append(metric(logits).squeeze())
    return torch.stack(out).float().cpu()


def patch_resid(model: HookedWhisper, setup: PatchingSetup, *, stack: Literal["encoder", "decoder"] = "decoder",
                hook: str = "resid_pre", bin_s: float = 0.2) -> Patched:
    """The residual stream by layer and position (decoder: text positions; encoder: time bins of
    `bin_s` seconds over the clean clip's real frames)."""
    if stack == "encoder":
        return patch_encoder_time(model, setup, hook=hook, bin_s=bin_s)
    n_layers, n_pos = model.dims.n_text_layer, setup.tokens.shape[1]
    sites = [(get_act_name(hook, l, "decoder"), (slice(None), p)) for l in range(n_layers) for p in range(n_pos)]
    values = generic_patch(model, setup, sites).reshape(n_layers, n_pos)
    return Patched(values, ("layer", "text_pos"), {"layer": [str(l) for l in range(n_layers)],
                                                   "text_pos": model.to_str_tokens(setup.tokens[0])})


def patch_encoder_time(model: HookedWhisper, setup: PatchingSetup, *, hook: str = "resid_pre",
                       bin_s: float = 0.2) -> Patched:
    """Encoder frames in time bins: [layer time_bin], over the real part of the clean clip."""
    n_real = int(setup.clean.audio_mask[0].sum())
    width = max(1, int(round(bin_s * AUDIO_POS_PER_SECOND)))
    bins = list(range(0, n_real, width))
    n_layers = model.dims.n_audio_layer
    sites = [(get_act_name(hook, l, "encoder"), (slice(None), slice(b, min(b + width, n_real))))
             for l in range(n_layers) for b in bins]
    values = generic_patch(model, setup, sites).reshape(n_layers, len(bins))
    return Patched(values, ("layer", "time_bin"), {"layer": [str(l) for l in range(n_layers)],
                                                   "time_bin": [f"{b / AUDIO_POS_PER_SECOND:.1f}s" for b in bins]})


def patch_block_outputs(model: HookedWhisper, setup: PatchingSetup) -> dict[str, Patched]:
    """Attention, cross-attention and MLP outputs by layer, per stack (all positions)."""
    result = {}
    for stack, parts, n in (("encoder", ("attn_out", "mlp_out"), model.dims.n_audio_layer),
                            ("decoder", ("attn_out", "cross_attn_out", "mlp_out"), model.dims.n_text_layer)):
        sites = [(get_act_name(part, l, stack), (slice(None),)) for part in parts for l in range(n)]
        values = generic_patch(model, setup, sites).reshape(len(parts), n)
        result[stack] = Patched(values, ("component", "layer"), {"component": list(parts),
                                                                "layer": [str(l) for l in range(n)]})
    return result


def patch_heads(model: HookedWhisper, setup: PatchingSetup, *,
                stack: Literal["encoder", "decoder", "cross"] = "cross") -> Patched:
    """Individual heads' outputs (`hook_z`, all positions): [layer head]."""
    prefix, attn, n_layers, n_heads = {
        "encoder": ("encoder_blocks", "attn", model.dims.n_audio_layer, model.dims.n_audio_head),
        "decoder": ("decoder_blocks", "attn", model.dims.n_text_layer, model.dims.n_text_head),
        "cross": ("decoder_blocks", "cross_attn", model.dims.n_text_layer, model.dims.n_text_head),
    }[stack]
    sites = [(f"{prefix}.{l}.{attn}.hook_z", (slice(None), slice(None), h)) for l in range(n_layers)
             for h in range(n_heads)]
    values = generic_patch(model, setup, sites).reshape(n_layers, n_heads)
    return Patched(values, ("layer", "head"), {"layer": [str(l) for l in range(n_layers)],
                                               "head": [str(h) for h in range(n_heads)]})


@torch.no_grad()
def layer_ablation(model: HookedWhisper, clips: Sequence[Any], *, kinds: Sequence[str] = ("zero", "mean"),
                   batch_size: int = 8) -> pd.DataFrame:
    """Remove each block's writes to the residual stream (attention, cross-attention, MLP) by
    zeroing them or replacing them with their mean over real positions, and transcribe.
    Returns a table ranked by word error rate (most important block first)."""
    import pandas as pd

    clips = list(clips)
    refs = [c.text for c in clips] if all(getattr(c, "text", None) for c in clips) else None

    def transcribe(hooks: list) -> list[str]:
        return transcribe_texts(model, clips, batch_size=batch_size, fwd_hooks=hooks)

    parts = {"encoder": ("attn_out", "mlp_out"), "decoder": ("attn_out", "cross_attn_out", "mlp_out")}
    means: dict[str, Tensor] = {}
    if "mean" in kinds:
        names = [get_act_name(p, l, s) for s, ps in parts.items()
                 for l in range(model.stack_config(s).n_layers) for p in ps]
        batch = model.prepare(clips, pack=True)
        args = (batch.mel, batch.tokens) if refs else (batch.mel,)
        _, cache = model.run_with_cache(*args, names_filter=names)
        for name in names:
            if is_decoder_hook(name) and not refs:
                continue
            means[name] = cache[name][real_positions(batch, name, cache[name].shape[1])].mean(0)
    clean = transcribe([])
    rows = []
    for stack, ps in parts.items():
        for layer in range(model.stack_config(stack).n_layers):
            for kind in kinds:
                names = [get_act_name(p, layer, stack) for p in ps]
                if kind == "mean" and any(n not in means for n in names):
                    continue
                hooks = [(n, (lambda act, hook: torch.zeros_like(act)) if kind == "zero"
                          else (lambda act, hook, m=means[n]: m.expand_as(act).clone())) for n in names]
                hyp = transcribe(hooks)
                row = {"stack": stack, "layer": layer, "ablation": kind, "wer_vs_clean": word_error_rate(clean, hyp),
                       "example": hyp[0]}
                if refs:
                    row["wer_vs_reference"] = word_error_rate(refs, hyp)
                rows.append(row)
    return pd.DataFrame(rows).sort_values("wer_vs_clean", ascending=False).reset_index(drop=True)
