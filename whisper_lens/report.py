"""The HTML report: what Whisper does with some audio, in one page.

    build_report(model, clips, "report/", word_clips=load_word_samples(), sae=sae, patching=setup)

Sections: transcripts (with audio players), attention views (CircuitsVis) and cross-attention
over the spectrogram, head-score tables with the detected alignment, BOS and previous-token
heads, the encoder lens, the logit lens, the attention-window sweep, activation patching (when a
clean/corrupted pair is given) and SAE evaluation with feature dashboards (when an SAE is given).
Every number on the page is computed when the report is built.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import torch

from whisper_lens.audio import SAMPLE_RATE
from whisper_lens.generate import transcribe_texts
from whisper_lens.metrics import word_error_rate, word_errors
from whisper_lens.names import get_act_name
from whisper_lens.runtime import release_memory

if TYPE_CHECKING:
    from whisper_lens.analysis.patching import PatchingSetup
    from whisper_lens.model import HookedWhisper


BATCH = 2  # windows per forward pass in every step: the report's memory is one step's at this size
# (on the CPU, even the fused attention holds one [head 1500 1500] pattern per window: 54 MB on tiny)


@dataclass
class _Page:
    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)

    def add(self, key: str, heading: str, body: str) -> None:
        self.sections.append((key, heading, body))

    def extend(self, key: str, body: str) -> None:
        """Append to the section `key` (added by an earlier step)."""
        i = next(i for i, (k, _, _) in enumerate(self.sections) if k == key)
        k, heading, old = self.sections[i]
        self.sections[i] = (k, heading, old + body)

    def view(self, view: Any) -> str:
        """A CircuitsVis view with its JS bundle inlined (about 1.3 MB), so the page works offline."""
        return f"<div class='cv'>{view.fragment()}</div>"

    def render(self) -> str:
        nav = " · ".join(f"<a href='#{k}'>{html.escape(h)}</a>" for k, h, _ in self.sections)
        body = "".join(f"<section id='{k}'><h2>{html.escape(h)}</h2>{b}</section>" for k, h, b in self.sections)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>{body}"
                "</body></html>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 7px}
th{background:#f4f4f4}img{max-width:100%}nav{margin:1em 0;line-height:1.8}section{margin:2em 0}
.err{color:#b00}.cv{margin:1em 0}code{background:#f4f4f4;padding:0 3px}"""


def _table(frame: Any, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    columns = list(columns or frame.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for _, r in frame[columns].astype(object).iterrows():
        cells = "".join(f"<td>{v:.{digits}f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                        for v in r)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _figure(fig: Any, out: Path, name: str) -> str:
    from whisper_lens.views import save_figure

    png = save_figure(fig, out / "figures" / name)[0]
    return f"<img src='figures/{png.name}' alt='{html.escape(name)}'>"


@dataclass
class _Context:
    """What every section reads: the model, the clips, where files go."""

    model: HookedWhisper
    clips: list[Any]  # everything to transcribe
    few: list[Any]  # the clips the slower analyses run on
    out: Path
    page: _Page
    quick: bool
    alignment: list[tuple[int, int]] | None = None  # found by the heads section, drawn by the attention section


def build_report(
    model: HookedWhisper,
    clips: Sequence[Any],
    out_dir: str | Path,
    *,
    word_clips: Sequence[Any] | None = None,
    sae: Any = None,
    sae_eval_clips: Sequence[Any] | None = None,
    patching: PatchingSetup | None = None,
    transcripts: Sequence[Any] | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write `out_dir/index.html` (figures, audio and feature pages beside it); returns its path.

    `transcripts` (one `Transcription` or text per clip, from `model.transcribe`) saves
    transcribing the clips again."""
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    clips = list(clips)
    if not clips:
        raise ValueError("no audio to report on")
    ctx = _Context(model, clips, clips[: 4 if quick else 12], out, _Page(f"whisper_lens report: {model.model_name}"),
                   quick)
    started = time.perf_counter()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("transcripts", lambda: _transcripts(ctx, transcripts)),
        ("heads", lambda: _heads(ctx, word_clips)),
        ("attention views", lambda: _attention(ctx)),
        ("encoder and logit lenses", lambda: _lenses(ctx)),
        ("attention window sweep", lambda: _windows(ctx)),
    ]
    if patching is not None:
        steps.append(("activation patching", lambda: _patching(ctx, patching)))
    if sae is not None:
        steps.append(("SAE evaluation", lambda: _sae_evaluation(ctx, sae, sae_eval_clips)))
        steps.append(("SAE dashboards", lambda: _sae_dashboards(ctx, sae)))
    for name, step in steps:
        log(name)
        step()
        release_memory(model)
    ctx.page.add("about", "About this report",
                 f"<p>{html.escape(repr(model))} from {html.escape(model.source)}; built in "
                 f"{time.perf_counter() - started:.0f} s by whisper_lens.</p>")
    index = out / "index.html"
    index.write_text(ctx.page.render())
    return index


def _transcripts(ctx: _Context, given: Sequence[Any] | None) -> None:
    if given is not None and len(given) != len(ctx.clips):
        raise ValueError(f"{len(ctx.clips)} clips but {len(given)} transcripts; give one per clip")
    texts = ([getattr(t, "text", t) for t in given] if given is not None
             else transcribe_texts(ctx.model, ctx.clips, batch_size=BATCH))
    rows, refs, hyps = [], [], []
    for clip, text in zip(ctx.clips, texts):
        name = f"{getattr(clip, 'id', len(rows))}.wav"
        sf.write(ctx.out / "audio" / name, np.asarray(clip.audio, dtype=np.float32), SAMPLE_RATE)
        ref = getattr(clip, "text", None)
        errors = f"{word_errors(ref, text)[0]}" if ref else ""
        rows.append(f"<tr><td>{html.escape(str(getattr(clip, 'id', '')))}</td><td><audio controls preload='none' "
                    f"src='audio/{name}'></audio></td><td>{html.escape(ref or '')}</td>"
                    f"<td>{html.escape(text)}</td><td>{errors}</td></tr>")
        if ref:
            refs.append(ref)
            hyps.append(text)
    wer = f"<p>Word error rate {word_error_rate(refs, hyps):.1%} over {len(refs)} clips.</p>" if refs else ""
    ctx.page.add("transcripts", "Transcripts", wer + "<table><tr><th>clip</th><th>audio</th><th>reference</th>"
                 "<th>transcript</th><th>word errors</th></tr>" + "".join(rows) + "</table>")


_HEAD_TABLES = (  # stack, columns, sort key, what sorts first
    ("encoder", ["layer", "head", "locality", "mean_distance", "padding_mass", "energy_corr"], "locality", "local"),
    ("decoder", ["layer", "head", "bos_mass", "prev_mass", "mean_distance"], "bos_mass", "BOS"),
    ("cross", ["layer", "head", "real_mass", "entropy", "monotonicity"], "monotonicity", "monotonic"),
)


def _heads(ctx: _Context, word_clips: Sequence[Any] | None) -> None:
    from whisper_lens import analysis

    body = _alignment_heads(ctx, word_clips) if word_clips else ""
    scores = analysis.head_scores(ctx.model, ctx.few)
    for stack, columns, key, label in _HEAD_TABLES:
        part = scores[scores["stack"] == stack]
        if part.empty:
            continue
        body += (f"<h3>{stack.capitalize()} heads (sorted by {key}, {label} first)</h3>"
                 + "".join(f"<p>{html.escape(n)}</p>" for n in _head_notes(stack, part))
                 + _table(part.sort_values(key, ascending=False), columns))
    ctx.page.add("heads", "Attention heads", body)


def _alignment_heads(ctx: _Context, word_clips: Sequence[Any]) -> str:
    from whisper_lens import analysis

    model = ctx.model
    table = analysis.alignment_head_table(model, list(word_clips))
    ctx.alignment = [(int(r.layer), int(r.head)) for r in table[table.hit_rate >= 0.5].itertuples()]
    cmp = analysis.compare_alignment_heads(ctx.alignment, model.alignment_heads) if model.alignment_heads.any() \
        else None
    return (f"<h3>Alignment heads from word timings</h3><p>Found {ctx.alignment} "
            f"from {table.n_words.iloc[0]} words with known boundaries"
            + (f"; against the checkpoint's table: precision {cmp['precision']:.2f}, recall "
               f"{cmp['recall']:.2f}" if cmp else "") + ".</p>"
            + _table(table.head(8), ["layer", "head", "hit_rate", "mean_error_s"]))


def _head_notes(stack: str, part: Any) -> list[str]:
    def pairs(rows: Any) -> list[tuple[int, int]]:
        return [(int(r.layer), int(r.head)) for r in rows.itertuples()]

    if stack == "decoder":
        return [f"BOS heads (bos_mass > 0.5): {pairs(part[part.bos_mass > 0.5])}",
                f"previous-token heads (prev_mass > 0.5): {pairs(part[part.prev_mass > 0.5])}"]
    if stack == "encoder":
        return [f"local heads (locality > 0.9): {pairs(part[part.locality > 0.9])}"]
    return []


def _attention(ctx: _Context) -> None:
    from whisper_lens import views

    model, page, clip = ctx.model, ctx.page, ctx.few[0]
    batch = model.prepare([clip], [clip.text] if getattr(clip, "text", None) else None)
    n_real = int(batch.audio_mask[0].sum())
    last_enc = model.dims.n_audio_layer - 1
    encoder = get_act_name("pattern", last_enc, "encoder")
    cross = [get_act_name("cross_pattern", l, "decoder") for l in range(model.dims.n_text_layer)]
    decoder = get_act_name("pattern", 0, "decoder")
    if batch.tokens is not None:
        _, cache = model.run_with_cache(batch.mel, batch.tokens, names_filter=[encoder, *cross, decoder])
    else:
        _, cache = model.run_with_cache(batch.mel, names_filter=[encoder])
    body = ("<p>Interactive views (CircuitsVis): hover a head to enlarge it, a token or time bin to see its "
            f"attention. Clip: {html.escape(str(getattr(clip, 'id', '')))}.</p>")
    body += page.view(views.encoder_attention_view(cache[encoder][0], n_real=n_real, n_bins=40,
                                                   title=f"Encoder block {last_enc} self-attention"))
    if batch.tokens is not None:
        str_tokens = model.to_str_tokens(batch.tokens[0])
        heads = ctx.alignment or [tuple(x) for x in model.alignment_heads.nonzero().tolist()]
        mean = torch.stack([cache[cross[l]][0, h] for l, h in heads]).mean(0) if heads else cache[cross[-1]][0].mean(0)
        body += _figure(views.cross_attention_plot(mean, str_tokens, batch.mel[0], n_real=n_real,
                                                   title=f"Cross-attention, mean of heads {heads}"),
                        ctx.out, "cross_attention")
        layer = heads[0][0] if heads else model.dims.n_text_layer - 1
        body += page.view(views.cross_attention_view(cache[cross[layer]][0], str_tokens, n_real=n_real,
                                                     title=f"Cross-attention, block {layer}"))
        body += page.view(views.decoder_attention_view(cache[decoder][0], str_tokens,
                                                       title="Decoder block 0 self-attention"))
    page.add("attention", "Attention", body)


def _lenses(ctx: _Context) -> None:
    from whisper_lens import analysis, views

    if not all(getattr(c, "text", None) for c in ctx.few):
        return
    lens = analysis.encoder_lens(ctx.model, ctx.few, max_new_tokens=64, batch_size=BATCH)
    ctx.page.add("encoder-lens", "Encoder lens",
                 "<p>The residual stream after k encoder blocks, through the encoder's final layer norm, decoded "
                 "by the whole decoder (k = 0: the conv stem; the last k is the full model).</p>"
                 + _figure(views.line_plot(lens, "layer", ["wer_vs_reference", "wer_vs_full"],
                                           title="Word error rate decoding from each encoder layer",
                                           xlabel="encoder blocks applied"), ctx.out, "encoder_lens")
                 + _table(lens.assign(first_transcript=[t[0][:80] for t in lens.transcripts]),
                          ["layer", "wer_vs_reference", "wer_vs_full", "cross_entropy", "first_transcript"]))
    frame = analysis.logit_lens(ctx.model, ctx.model.prepare(ctx.few), encoder_batch_size=BATCH).to_frame()
    ctx.page.add("logit-lens", "Logit lens",
                 "<p>The next token read from the residual stream after each decoder block through the final "
                 "layer norm and unembedding, at every transcript position.</p>"
                 + _figure(views.line_plot(frame, "layer", ["accuracy_vs_final", "accuracy_vs_reference",
                                                            "mean_ref_prob"], title="Logit lens"), ctx.out, "logit_lens")
                 + _table(frame))


def _windows(ctx: _Context) -> None:
    from whisper_lens import analysis, views

    windows = [5, 25, 75, None] if ctx.quick else [2, 5, 10, 25, 50, 75, 150, None]
    sweep = analysis.attention_window_sweep(ctx.model, ctx.few, windows=windows, max_new_tokens=64,
                                            batch_size=BATCH)
    ys = ["wer_vs_full"] + (["wer_vs_reference"] if "wer_vs_reference" in sweep else [])
    ctx.page.add("windows", "Attention windows",
                 "<p>Encoder self-attention limited to +-k positions (20 ms each), as in Reid (2023).</p>"
                 + _figure(views.line_plot(sweep.assign(window=[str(w) for w in sweep.window]), "window", ys,
                                           title="Word error rate against the encoder attention window",
                                           xlabel="window (positions; None = unrestricted)"), ctx.out, "windows")
                 + _table(sweep.assign(example=[t[0][:80] for t in sweep.transcripts]), ["window", *ys, "example"]))


def _patching(ctx: _Context, patching: PatchingSetup) -> None:
    from whisper_lens import analysis, views

    model = ctx.model
    tokens = model.to_str_tokens(patching.tokens[0])
    answers = [model.tokenizer.decode([a]) for a in patching.answers]
    enc = analysis.patch_encoder_time(model, patching, bin_s=0.1 if not ctx.quick else 0.25)
    dec = analysis.patch_resid(model, patching, stack="decoder")
    body = (f"<p>Clean activations patched into the corrupted run; metric: logit difference "
            f"{answers[0]!r} - {answers[1]!r} after {tokens!r}, 0 = corrupted, 1 = clean.</p>")
    body += _figure(views.heatmap(enc.values, enc.labels["layer"], enc.labels["time_bin"],
                                  title="Encoder residual stream (resid_pre) by layer and time",
                                  xlabel="time", ylabel="encoder layer"), ctx.out, "patching_encoder")
    body += _figure(views.heatmap(dec.values, dec.labels["layer"], dec.labels["text_pos"],
                                  title="Decoder residual stream by layer and position", ylabel="decoder layer"),
                    ctx.out, "patching_decoder")
    ctx.page.add("patching", "Activation patching", body)


def _sae_evaluation(ctx: _Context, sae: Any, sae_eval_clips: Sequence[Any] | None) -> None:
    from whisper_lens.sae.evaluation import evaluate

    held_out = list(sae_eval_clips or ctx.few)
    ev = evaluate(ctx.model, sae, held_out, out_dir=ctx.out / "figures", n_wer_clips=4 if ctx.quick else 16,
                  batch_size=BATCH, verbose=False)
    ctx.page.add("sae", "SAE features", f"<pre>{html.escape(ev.summary())}</pre><img src='figures/feature_density.png'>")
    (ctx.out / "sae_metrics.json").write_text(json.dumps(ev.to_dict(), indent=2))


def _sae_dashboards(ctx: _Context, sae: Any) -> None:
    from whisper_lens.analysis.features import feature_activations, feature_dashboard

    fa = feature_activations(ctx.model, sae, ctx.clips, batch_size=BATCH)
    latents = fa.most_active(6 if ctx.quick else 12)
    index = feature_dashboard(ctx.model, sae, ctx.clips, fa, latents=latents, out_dir=ctx.out / "features")
    links = "".join(f"<li><a href='features/latent_{l}.html'>latent {l}</a>: fires on {fa.density[l]:.2%} "
                    f"of frames, peak {fa.top_values[l, 0]:.2f}</li>" for l in latents)
    ctx.page.extend("sae", f"<h3>Dashboards</h3><p><a href='features/{index.name}'>all</a></p><ul>{links}</ul>")
