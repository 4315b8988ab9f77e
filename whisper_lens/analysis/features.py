"""SAE features on audio: where each latent fires, what it sounds like, what it does.

    fa = feature_activations(model, sae, clips)        # top frames per latent, density
    feature_dashboard(model, sae, clips, fa, latents=[12, 80], out_dir="dash/")
    model.transcribe(audio, fwd_hooks=steer(sae, latent=12, scale=8.0))
    model.transcribe(audio, fwd_hooks=ablate_latents(sae, [12, 80], positions=slice(30, 60)))
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from whisper_lens.activations import is_decoder_hook, real_positions
from whisper_lens.audio import AUDIO_POS_PER_SECOND, SAMPLE_RATE, log_mel_spectrogram

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper


@dataclass(frozen=True)
class FeatureActivations:
    hook_name: str
    clip_ids: list[str]  # clips in the order they were read
    top_values: Float[Tensor, "d_sae n_top"]  # highest activations per latent (0 where fewer fired)
    top_clips: Int[Tensor, "d_sae n_top"]  # index into clip_ids
    top_positions: Int[Tensor, "d_sae n_top"]  # encoder position (50 per second) or token index
    density: Float[Tensor, "d_sae"]  # fraction of real positions where the latent fires
    n_positions: int  # real positions read
    promoted_tokens: list[list[str]] | None  # decoder SAEs: tokens each latent's decoder row promotes

    def top_examples(self, latent: int) -> list[dict[str, Any]]:
        """The latent's top examples: clip id, time (s) or token index, activation."""
        out = []
        for value, clip, pos in zip(self.top_values[latent].tolist(), self.top_clips[latent].tolist(),
                                    self.top_positions[latent].tolist()):
            if value > 0:
                row = {"clip": self.clip_ids[clip], "clip_index": clip, "activation": value, "position": pos}
                if not is_decoder_hook(self.hook_name):
                    row["time_s"] = pos / AUDIO_POS_PER_SECOND
                out.append(row)
        return out

    def most_active(self, n: int = 10, *, max_density: float = 0.1) -> list[int]:
        """Latents with the highest peak activation among those that are neither dead nor dense."""
        alive = (self.density > 0) & (self.density <= max_density)
        peaks = torch.where(alive, self.top_values[:, 0], torch.zeros(()))
        return peaks.argsort(descending=True)[:n][peaks.sort(descending=True).values[:n] > 0].tolist()


@torch.no_grad()
def feature_activations(model: HookedWhisper, sae: Any, clips: Sequence[Any], *, n_top: int = 8,
                        batch_size: int = 8) -> FeatureActivations:
    """Run `clips` (one per window, so times are times in the clip) and record, per latent, the
    `n_top` strongest real positions and how often it fires."""
    hook = sae.cfg.metadata.hook_name
    decoder = is_decoder_hook(hook)
    clips = list(clips)
    d_sae = sae.cfg.d_sae
    top_v = torch.zeros(d_sae, n_top)
    top_c = torch.zeros(d_sae, n_top, dtype=torch.long)
    top_p = torch.zeros(d_sae, n_top, dtype=torch.long)
    fires = torch.zeros(d_sae, dtype=torch.float64)
    n_positions = 0
    for start in range(0, len(clips), batch_size):
        group = clips[start : start + batch_size]
        batch = model.prepare(group)
        args = (batch.mel, batch.tokens) if decoder else (batch.mel,)
        layer = model.hook_dict[hook].layer() if "_blocks." in hook else None
        _, cache = model.run_with_cache(*args, names_filter=[hook], stop_at_layer=None if layer is None else layer + 1)
        mask = real_positions(batch, hook, cache[hook].shape[1])
        item, pos = mask.nonzero(as_tuple=True)
        acts = sae.encode(cache[hook][mask].reshape(len(item), -1).to(sae.W_dec.dtype)).float().cpu()
        fires += (acts > 0).sum(0).double()
        n_positions += len(item)
        k = min(n_top, len(item))
        values, rows = acts.topk(k, dim=0)  # [k d_sae]
        cand_v = torch.cat([top_v, values.T], 1)
        cand_c = torch.cat([top_c, (item.cpu()[rows] + start).T], 1)
        cand_p = torch.cat([top_p, pos.cpu()[rows].T], 1)
        best = cand_v.topk(n_top, dim=1).indices
        top_v, top_c, top_p = cand_v.gather(1, best), cand_c.gather(1, best), cand_p.gather(1, best)
    promoted = None
    if decoder:
        logits = model.decoder_ln_final(sae.W_dec.detach().to(model.dtype)) @ model.W_U
        promoted = [[model.tokenizer.decode([t]) for t in row] for row in logits.topk(8, dim=-1).indices.tolist()]
    return FeatureActivations(hook, [str(getattr(c, "id", i)) for i, c in enumerate(clips)], top_v, top_c, top_p,
                              (fires / max(n_positions, 1)).float(), n_positions, promoted)


def steer(sae: Any, latent: int, scale: float, *, positions: slice | None = None) -> list[tuple[str, Any]]:
    """Forward hooks that add `scale` x the latent's unit decoder direction at the SAE's hook
    (every position, or `positions`), for `run_with_hooks` / `transcribe(fwd_hooks=...)`."""
    direction = sae.W_dec.detach()[latent]
    direction = direction / direction.norm()

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        index = (slice(None), positions if positions is not None else slice(None))
        act[index] = act[index] + scale * direction.to(act.dtype).reshape(act.shape[2:])
        return act

    return [(sae.cfg.metadata.hook_name, hook)]


def ablate_latents(sae: Any, latents: Sequence[int], *, positions: slice | None = None) -> list[tuple[str, Any]]:
    """Forward hooks that remove the given latents' contribution (activation x decoder row) from
    the activation at the SAE's hook, leaving everything the SAE does not explain in place."""
    index = torch.as_tensor(list(latents), dtype=torch.long)

    def hook(act: Tensor, hook: Any) -> Tensor:
        where = (slice(None), positions if positions is not None else slice(None))
        part = act[where]
        acts = sae.encode(part.reshape(-1, part.shape[-1]).to(sae.W_dec.dtype))[:, index]
        removed = (acts @ sae.W_dec.detach()[index]).reshape(part.shape).to(act.dtype)
        act = act.clone()
        act[where] = part - removed
        return act

    return [(sae.cfg.metadata.hook_name, hook)]


def feature_dashboard(model: HookedWhisper, sae: Any, clips: Sequence[Any], fa: FeatureActivations, *,
                      latents: Sequence[int], out_dir: str | Path, context_s: float = 1.0) -> Path:
    """One HTML page per latent (and an index): its top examples as audio players cropped around
    the peak, each crop's spectrogram with the latent's activation over it, and where the
    latent's density sits among all latents. Returns the index page."""
    from whisper_lens import views

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    clips = list(clips)
    hook = fa.hook_name
    decoder = is_decoder_hook(hook)
    log_density = torch.log10(fa.density.clamp(min=1e-7)).numpy()
    curves: dict[tuple[int, int], np.ndarray] = {}  # (clip index, latent) -> activation over the clip
    if not decoder:  # one encoder pass per clip for all the latents shown on it
        wanted: dict[int, set[int]] = {}
        for latent in latents:
            for ex in fa.top_examples(latent):
                wanted.setdefault(ex["clip_index"], set()).add(latent)
        for index, shown in wanted.items():
            shown_list = sorted(shown)
            for latent, curve in zip(shown_list, latent_curves(model, sae, clips[index].audio, shown_list)):
                curves[index, latent] = curve
    pages = []
    for latent in latents:
        examples = fa.top_examples(latent)
        items = []
        for rank, ex in enumerate(examples):
            clip = clips[ex["clip_index"]]
            audio = np.asarray(clip.audio, dtype=np.float32)
            if decoder:
                items.append(f"<li>{html.escape(clip.text or '')} <b>(token {ex['position']}, "
                             f"{ex['activation']:.2f})</b></li>")
                continue
            centre = int(ex["time_s"] * SAMPLE_RATE)
            half = int(context_s * SAMPLE_RATE)
            a, b = max(0, centre - half), min(len(audio), centre + half)
            crop = audio[a:b]
            wav = out / "audio" / f"latent{latent}_{rank}.wav"
            import soundfile as sf

            sf.write(wav, crop, SAMPLE_RATE)
            png = out / "audio" / f"latent{latent}_{rank}.png"
            mel = log_mel_spectrogram(torch.from_numpy(crop), model.dims.n_mels)
            views.save_figure(views.latent_example_plot(mel, curves[ex["clip_index"], latent], start_s=a / SAMPLE_RATE),
                              png, formats=("png",), dpi=90)
            items.append(f"<div class='ex'><div>{html.escape(clip.id if hasattr(clip, 'id') else str(ex['clip']))}"
                         f" at {ex['time_s']:.2f} s, activation {ex['activation']:.2f}</div>"
                         f"<audio controls src='audio/{wav.name}'></audio><br><img src='audio/{png.name}'></div>")
        density_png = out / "audio" / f"latent{latent}_density.png"
        views.save_figure(views.latent_density_plot(log_density, latent), density_png, formats=("png",), dpi=90)
        promoted = ""
        if fa.promoted_tokens is not None:
            promoted = "<p>promotes: " + " ".join(f"<code>{html.escape(t)}</code>" for t in fa.promoted_tokens[latent]) + "</p>"
        page = out / f"latent_{latent}.html"
        page.write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>latent {latent}</title>"
            f"<style>body{{font-family:sans-serif}} .ex{{margin:12px 0}}</style></head><body>"
            f"<h2>Latent {latent} at {html.escape(hook)}</h2><p>fires on {fa.density[latent]:.3%} of "
            f"{fa.n_positions} real positions</p>{promoted}<img src='audio/{density_png.name}'>"
            f"<h3>Top examples</h3>{''.join(items) if items else '<p>never fired</p>'}</body></html>")
        pages.append((latent, page, len(examples)))
    index = out / "index.html"
    index.write_text("<!doctype html><html><head><meta charset='utf-8'><title>SAE features</title></head><body>"
                     f"<h2>Features at {html.escape(hook)}</h2><ul>"
                     + "".join(f"<li><a href='{p.name}'>latent {l}</a> ({n} examples, density "
                               f"{fa.density[l]:.3%})</li>" for l, p, n in pages)
                     + "</ul></body></html>")
    return index


def latent_curve(model: HookedWhisper, sae: Any, audio: np.ndarray, latent: int) -> np.ndarray:
    """The latent's activation at each real encoder position of one clip."""
    return latent_curves(model, sae, audio, [latent])[0]


@torch.no_grad()
def latent_curves(model: HookedWhisper, sae: Any, audio: np.ndarray, latents: Sequence[int]) -> np.ndarray:
    """[latent real_pos]: each latent's activation at each real encoder position of one clip,
    from one pass."""
    hook = sae.cfg.metadata.hook_name
    batch = model.prepare([audio])
    layer = model.hook_dict[hook].layer()
    _, cache = model.run_with_cache(batch.mel, names_filter=[hook], stop_at_layer=layer + 1)
    rows = cache[hook][real_positions(batch, hook, cache[hook].shape[1])]
    acts = sae.encode(rows.reshape(len(rows), -1).to(sae.W_dec.dtype))[:, list(latents)]
    return acts.T.float().cpu().numpy()
