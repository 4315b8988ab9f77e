"""Activations of real frames only: the source every downstream consumer (SAEs, statistics) reads.

`iter_activations` batches a dataset (packed into full windows by default), runs the model up to
the requested hook, and yields only the rows that are real: encoder positions that hold audio
(not padding, not the silence between packed clips), or decoder positions that hold transcript
tokens (teacher-forced on the reference text; prompt and padding excluded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from whisper_lens.audio import SAMPLE_RATE, frame_mask, plan_windows

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper

DECODER_PREFIXES = ("decoder_blocks", "hook_embed", "hook_pos_embed", "decoder_ln_final", "unembed")


def is_decoder_hook(hook_name: str) -> bool:
    return hook_name.startswith(DECODER_PREFIXES)


def _batches(model: HookedWhisper, dataset: Iterable[Any], batch_size: int, pack: bool, gap_s: float):
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
    if hook_name not in model.hook_dict:
        raise ValueError(f"unknown hook {hook_name!r}; see docs/hook_names.md or `whisper-lens hooks`")
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        raise ValueError(f"{hook_name} has two position axes; iter_activations yields one row per position")
    decoder = is_decoder_hook(hook_name)
    layer = model.hook_dict[hook_name].layer() if "_blocks." in hook_name else None
    for group in _batches(model, dataset, batch_size, pack, gap_s):
        if decoder and any(getattr(g, "text", None) is None for g in group):
            raise ValueError(f"{hook_name} is a decoder hook: every item needs a transcript (.text)")
        batch = model.prepare(group, pack=pack, gap_s=gap_s, language=language)
        args = (batch.mel, batch.tokens) if decoder else (batch.mel,)
        _, cache = model.run_with_cache(*args, names_filter=[hook_name],
                                        stop_at_layer=None if layer is None else layer + 1)
        act = cache[hook_name]
        if decoder:
            mask = batch.transcript_mask
        elif hook_name == "hook_conv1":
            mask = frame_mask(batch, act.shape[1])
        else:
            mask = batch.audio_mask
        rows = act[mask]
        yield rows.reshape(rows.shape[0], -1)
