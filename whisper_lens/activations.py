"""Activations of real frames only: the source every downstream consumer (SAEs, statistics) reads.

`iter_activations` batches a dataset (packed into full windows by default), runs the model up to
the requested hook, and yields only the rows that are real: encoder positions that hold audio
(not padding, not the silence between packed clips), or decoder positions that hold transcript
tokens (teacher-forced on the reference text; prompt and padding excluded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from whisper_lens.audio import SAMPLE_RATE, AudioBatch, frame_mask, plan_windows
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper

DECODER_PREFIXES = ("decoder_blocks", "hook_embed", "hook_pos_embed", "decoder_ln_final", "unembed")


def is_decoder_hook(hook_name: str) -> bool:
    return hook_name.startswith(DECODER_PREFIXES)


def real_positions(batch: AudioBatch, hook_name: str, n_positions: int) -> Bool[Tensor, "batch pos"]:
    """Which positions of `hook_name`'s activation hold real data: transcript tokens for decoder
    hooks, real mel frames for `hook_conv1`, real encoder positions otherwise; never padding,
    packing gaps or the decoder prompt. Every reader of real rows asks here."""
    if is_decoder_hook(hook_name):
        return batch.transcript_mask
    if hook_name == get_act_name("conv1"):
        return frame_mask(batch, n_positions)
    return batch.audio_mask


@dataclass(frozen=True)
class RealActivations:
    """The real rows of one forward pass, for one or more hooks of the same stack."""

    acts: dict[str, Float[Tensor, "n_real d"]]  # hook name -> rows (per-head hooks flattened)
    token_ids: Int[Tensor, "n_real"] | None  # the input token at each row (decoder hooks), else None
    n_items: int  # dataset items that went into this forward pass


def check_hooks(model: HookedWhisper, hook_names: Sequence[str]) -> tuple[bool, int | None]:
    """Validate hooks for row-wise reading; returns (decoder stack?, stop_at_layer)."""
    if not hook_names:
        raise ValueError("give at least one hook name")
    for name in hook_names:
        if name not in model.hook_dict:
            raise ValueError(f"unknown hook {name!r}; see docs/hook_names.md or `whisper-lens hooks`")
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            raise ValueError(f"{name} has two position axes; activations are read one row per position")
    stacks = {is_decoder_hook(n) for n in hook_names}
    if len(stacks) > 1:
        raise ValueError(f"hooks {list(hook_names)} mix encoder and decoder positions; read each stack separately")
    layers = [model.hook_dict[n].layer() if "_blocks." in n else None for n in hook_names]
    stop = None if any(layer is None for layer in layers) else max(layers) + 1  # type: ignore[type-var]
    return stacks.pop(), stop


def batches_of(model: HookedWhisper, dataset: Iterable[Any], batch_size: int, pack: bool, gap_s: float):
    """Groups of dataset items that make `batch_size` windows (packed) or `batch_size` clips."""
    window = model.dims.n_mel_frames * 160
    gap = int(round(gap_s * SAMPLE_RATE))
    group: list[Any] = []
    for item in dataset:
        group.append(item)
        if not pack and len(group) == batch_size:
            yield group
            group = []
        elif pack and len(plan_windows([len(g.audio) for g in group], gap, window)) > batch_size:
            yield group[:-1]
            group = group[-1:]
    if group:
        yield group


@torch.no_grad()
def iter_real_activations(
    model: HookedWhisper,
    dataset: Iterable[Any],
    hook_names: Sequence[str],
    *,
    batch_size: int = 8,
    pack: bool = True,
    gap_s: float = 0.2,
    language: str | None = None,
) -> Iterator[RealActivations]:
    """One `RealActivations` per forward pass; all hooks are read from the same pass."""
    decoder, stop = check_hooks(model, hook_names)
    for group in batches_of(model, dataset, batch_size, pack, gap_s):
        if decoder and any(getattr(g, "text", None) is None for g in group):
            raise ValueError(f"{hook_names[0]} is a decoder hook: every item needs a transcript (.text)")
        batch = model.prepare(group, pack=pack, gap_s=gap_s, language=language)
        args = (batch.mel, batch.tokens) if decoder else (batch.mel,)
        _, cache = model.run_with_cache(*args, names_filter=list(hook_names), stop_at_layer=stop)
        acts = {}
        for name in hook_names:
            act = cache[name]
            rows = act[real_positions(batch, name, act.shape[1])]
            acts[name] = rows.reshape(rows.shape[0], -1)
        token_ids = batch.tokens[batch.transcript_mask] if decoder else None
        yield RealActivations(acts, token_ids, len(group))


def iter_activations(
    model: HookedWhisper,
    dataset: Iterable[Any],
    hook_name: str,
    *,
    batch_size: int = 8,
    pack: bool = True,
    gap_s: float = 0.2,
    language: str | None = None,
) -> Iterator[Float[Tensor, "n_real d"]]:
    """Yield [n_real_positions d] activations at `hook_name`, one tensor per forward pass.

    Items need `.audio` at 16 kHz (`whisper_lens.data.AudioExample`); decoder hooks also need
    `.text`. Per-head hooks ([batch pos head d_head]) are flattened to `head * d_head`."""
    for out in iter_real_activations(model, dataset, [hook_name], batch_size=batch_size, pack=pack,
                                     gap_s=gap_s, language=language):
        yield out.acts[hook_name]
