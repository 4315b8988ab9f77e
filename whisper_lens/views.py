"""Pictures of what the analyses return: CircuitsVis views and matplotlib plots.

    encoder_attention_view(pattern, n_real=150)          # CircuitsVis, audio pooled into bins
    decoder_attention_view(pattern, str_tokens)          # CircuitsVis over string tokens
    cross_attention_view(pattern, str_tokens, n_real)    # CircuitsVis: text queries over audio bins
    cross_attention_plot(pattern, str_tokens, mel, n_real)   # heat map under its spectrogram
    heatmap(patched), line_plot(frame, x, ys)             # patching results, lens curves

Views render in Jupyter (`_repr_html_`) and `save()` to standalone HTML (the CircuitsVis
bundle is inlined, so pages work offline). Plots are matplotlib figures; `save_figure` writes
PNG and SVG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from whisper_lens.audio import AUDIO_POS_PER_SECOND, FRAMES_PER_SECOND


@dataclass(frozen=True)
class View:
    """A CircuitsVis view: shows itself in Jupyter, saves to a standalone HTML file."""

    rendered: Any  # circuitsvis RenderedHTML
    title: str

    def _repr_html_(self) -> str:
        return self.rendered._repr_html_()

    def fragment(self) -> str:
        """The view's HTML with the CircuitsVis bundle inlined (for embedding in a page)."""
        return self.rendered.local_src

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{self.title}</title></head>"
                        f"<body><h3>{self.title}</h3>{self.fragment()}</body></html>")
        return path


def pool_audio(pattern: Float[Tensor, "... audio_pos"], n_real: int, n_bins: int, *, axis: int = -1
               ) -> tuple[Tensor, list[str]]:
    """Sum attention over `n_bins` equal bins of the real positions (padding gets one extra bin,
    so rows still sum to 1), labelled by their start in seconds."""
    n = pattern.shape[axis]
    n_bins = max(1, min(n_bins, n_real))
    edges = torch.linspace(0, n_real, n_bins + 1).round().long().tolist()
    pieces = [pattern.narrow(axis, a, b - a).sum(axis, keepdim=True) for a, b in zip(edges[:-1], edges[1:])]
    labels = [f"{a / AUDIO_POS_PER_SECOND:.2f}s" for a in edges[:-1]]
    if n_real < n:
        pieces.append(pattern.narrow(axis, n_real, n - n_real).sum(axis, keepdim=True))
        labels.append("pad")
    return torch.cat(pieces, axis), labels


def encoder_attention_view(pattern: Float[Tensor, "head audio_pos audio_pos"], *, n_real: int, n_bins: int = 50,
                           title: str = "Encoder self-attention") -> View:
    """Encoder heads over real audio pooled into `n_bins` time bins (queries averaged per bin)."""
    import circuitsvis as cv

    real = pattern[:, :n_real]  # real queries only
    keys, labels = pool_audio(real, n_real, n_bins, axis=-1)
    edges = torch.linspace(0, n_real, min(n_bins, n_real) + 1).round().long().tolist()
    rows = torch.stack([keys[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:])], 1)
    if labels[-1] == "pad":  # square for CircuitsVis: the padding bin gets an empty query row
        rows = torch.cat([rows, torch.zeros_like(rows[:, :1])], 1)
    names = [f"head {h}" for h in range(pattern.shape[0])]
    return View(cv.attention.attention_heads(attention=rows.float().cpu().numpy(), tokens=labels,
                                             attention_head_names=names), title)


def decoder_attention_view(pattern: Float[Tensor, "head text_pos text_pos"], str_tokens: list[str], *,
                           title: str = "Decoder self-attention") -> View:
    import circuitsvis as cv

    names = [f"head {h}" for h in range(pattern.shape[0])]
    return View(cv.attention.attention_heads(attention=pattern.float().cpu().numpy(), tokens=list(str_tokens),
                                             attention_head_names=names), title)


def cross_attention_view(pattern: Float[Tensor, "head text_pos audio_pos"], str_tokens: list[str], *, n_real: int,
                         n_bins: int = 40, title: str = "Cross-attention") -> View:
    """Cross-attention in CircuitsVis, whose views need one square token list: the list is the
    audio bins followed by the text tokens, and only text queries over audio keys are filled, so
    hovering a text token shows where in time it reads."""
    import circuitsvis as cv

    pooled, labels = pool_audio(pattern, n_real, n_bins, axis=-1)
    n_audio, n_text = len(labels), len(str_tokens)
    square = torch.zeros(pattern.shape[0], n_audio + n_text, n_audio + n_text)
    square[:, n_audio:, :n_audio] = pooled.float().cpu()
    names = [f"head {h}" for h in range(pattern.shape[0])]
    return View(cv.attention.attention_heads(attention=square.numpy(), tokens=labels + list(str_tokens),
                                             attention_head_names=names, mask_upper_tri=False), title)


class _Figures:
    """matplotlib's object-oriented API, without pyplot: no backend is chosen for the process, and
    figures are freed with their last reference (`close` is a no-op kept for pyplot-style callers)."""

    @staticmethod
    def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        del fig


def _plt() -> type[_Figures]:
    return _Figures


def cross_attention_plot(pattern: Float[Tensor, "text_pos audio_pos"], str_tokens: list[str],
                         mel: Float[Tensor, "n_mels mel_frame"], *, n_real: int, title: str = "Cross-attention"):
    """Heat map of text tokens over time (real audio only) under the clip's log-mel spectrogram."""
    plt = _plt()
    seconds = n_real / AUDIO_POS_PER_SECOND
    fig, (ax_mel, ax_att) = plt.subplots(2, 1, figsize=(9, 2.2 + 0.22 * len(str_tokens)), sharex=True,
                                         gridspec_kw={"height_ratios": [1, max(1.5, 0.15 * len(str_tokens))]})
    ax_mel.imshow(mel[:, : 2 * n_real].float().cpu().numpy(), origin="lower", aspect="auto",
                  extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
    ax_mel.set_ylabel("mel bin")
    ax_mel.set_title(title, fontsize=10)
    ax_att.imshow(pattern[:, :n_real].float().cpu().numpy(), aspect="auto", cmap="Blues",
                  extent=(0, seconds, len(str_tokens) - 0.5, -0.5), interpolation="nearest")
    ax_att.set_yticks(range(len(str_tokens)))
    ax_att.set_yticklabels([repr(t)[1:-1] for t in str_tokens], fontsize=7)
    ax_att.set_xlabel("seconds")
    fig.tight_layout()
    return fig


def heatmap(values: Tensor, row_labels: list[str], col_labels: list[str], *, title: str, xlabel: str = "",
            ylabel: str = "", center_zero: bool = True):
    """A labelled heat map (e.g. a `Patched` result: `heatmap(p.values, *p.labels.values(), ...)`)."""
    plt = _plt()
    data = values.float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(col_labels) + 2), max(2.5, 0.35 * len(row_labels) + 1.5)))
    limit = float(abs(data).max()) or 1.0
    image = ax.imshow(data, cmap="RdBu_r" if center_zero else "viridis", vmin=-limit if center_zero else None,
                      vmax=limit if center_zero else None, aspect="auto")
    ax.set_xticks(range(len(col_labels)))
    ax.set_xticklabels(col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def line_plot(frame: Any, x: str, ys: list[str], *, title: str, xlabel: str | None = None, ylabel: str = ""):
    """Curves from a pandas frame (encoder lens, window sweep, logit lens accuracy)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [str(v) for v in frame[x]]
    for y in ys:
        ax.plot(xs, frame[y], marker="o", label=y)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latent_example_plot(mel: Float[Tensor, "n_mels mel_frame"], curve: Any, *, start_s: float):
    """A crop's spectrogram with an SAE latent's activation over it (`curve`: the latent per
    encoder position of the whole clip; `start_s`: where the crop starts in it)."""
    seconds = mel.shape[-1] / FRAMES_PER_SECOND
    fig, ax = _plt().subplots(figsize=(5, 1.8))
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
    ax.set_yticks([])
    ax.set_xlabel("seconds (crop)")
    first = int(start_s * AUDIO_POS_PER_SECOND)
    part = curve[first : first + int(np.ceil(seconds * AUDIO_POS_PER_SECOND))]
    twin = ax.twinx()
    twin.plot((np.arange(len(part)) + 0.5) / AUDIO_POS_PER_SECOND, part, color="#7fdbff", linewidth=1.6)
    twin.set_ylim(bottom=0)
    twin.set_ylabel("activation", fontsize=7)
    fig.tight_layout()
    return fig


def latent_density_plot(log_density: Any, latent: int):
    """Where one latent's firing frequency sits among all latents'."""
    fig, ax = _plt().subplots(figsize=(4.5, 2.2))
    ax.hist(log_density, bins=50, color="#bbbbbb")
    ax.axvline(float(log_density[latent]), color="#c44e52", label=f"latent {latent}")
    ax.set_xlabel("log10 firing frequency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path, *, formats: tuple[str, ...] = ("png", "svg"), dpi: int = 110) -> list[Path]:
    """Write `path` with each suffix in `formats`; returns the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
        out.append(target)
    _plt().close(fig)
    return out
