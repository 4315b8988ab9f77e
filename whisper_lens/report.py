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
from whisper_lens.metrics import word_error_rate, word_errors
from whisper_lens.names import get_act_name

if TYPE_CHECKING:
    from whisper_lens.analysis.patching import PatchingSetup
    from whisper_lens.model import HookedWhisper


@dataclass
class _Page:
    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)

    def add(self, key: str, heading: str, body: str) -> None:
        self.sections.append((key, heading, body))

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


def build_report(
    model: HookedWhisper,
    clips: Sequence[Any],
    out_dir: str | Path,
    *,
    word_clips: Sequence[Any] | None = None,
    sae: Any = None,
    sae_eval_clips: Sequence[Any] | None = None,
    patching: PatchingSetup | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write `out_dir/index.html` (figures, audio and feature pages beside it); returns its path."""
    from whisper_lens import analysis, views

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    clips = list(clips)
    if not clips:
        raise ValueError("no audio to report on")
    few = clips[: 4 if quick else 12]
    page = _Page(f"whisper_lens report: {model.model_name}")
    started = time.perf_counter()

    log("transcripts")
    rows, refs, hyps = [], [], []
    for start in range(0, len(clips), 8):
        group = clips[start : start + 8]
        for clip, result in zip(group, model.transcribe(group)):
            name = f"{getattr(clip, 'id', len(rows))}.wav"
            sf.write(out / "audio" / name, np.asarray(clip.audio, dtype=np.float32), SAMPLE_RATE)
            ref = getattr(clip, "text", None)
            errors = f"{word_errors(ref, result.text)[0]}" if ref else ""
            rows.append(f"<tr><td>{html.escape(str(getattr(clip, 'id', '')))}</td><td><audio controls preload='none' "
                        f"src='audio/{name}'></audio></td><td>{html.escape(ref or '')}</td>"
                        f"<td>{html.escape(result.text)}</td><td>{errors}</td></tr>")
            if ref:
                refs.append(ref)
                hyps.append(result.text)
    wer = f"<p>Word error rate {word_error_rate(refs, hyps):.1%} over {len(refs)} clips.</p>" if refs else ""
    page.add("transcripts", "Transcripts", wer + "<table><tr><th>clip</th><th>audio</th><th>reference</th>"
             "<th>transcript</th><th>word errors</th></tr>" + "".join(rows) + "</table>")

    log("heads")
    alignment = None
    heads_html = ""
    if word_clips:
        table = analysis.alignment_head_table(model, list(word_clips))
        alignment = [(int(r.layer), int(r.head)) for r in table[table.hit_rate >= 0.5].itertuples()]
        cmp = analysis.compare_alignment_heads(alignment, model.alignment_heads) if model.alignment_heads.any() else None
        heads_html += (f"<h3>Alignment heads from word timings</h3><p>Found {alignment} "
                       f"from {table.n_words.iloc[0]} words with known boundaries"
                       + (f"; against the checkpoint's table: precision {cmp['precision']:.2f}, recall "
                          f"{cmp['recall']:.2f}" if cmp else "") + ".</p>"
                       + _table(table.head(8), ["layer", "head", "hit_rate", "mean_error_s"]))
    scores = analysis.head_scores(model, few)
    for stack, columns, key, label in (
        ("encoder", ["layer", "head", "locality", "mean_distance", "padding_mass", "energy_corr"], "locality", "local"),
        ("decoder", ["layer", "head", "bos_mass", "prev_mass", "mean_distance"], "bos_mass", "BOS"),
        ("cross", ["layer", "head", "real_mass", "entropy", "monotonicity"], "monotonicity", "monotonic"),
    ):
        part = scores[scores["stack"] == stack]
        if part.empty:
            continue
        notes = []
        if stack == "decoder":
            bos = part[part.bos_mass > 0.5]
            prev = part[part.prev_mass > 0.5]
            notes.append(f"BOS heads (bos_mass > 0.5): {[(int(r.layer), int(r.head)) for r in bos.itertuples()]}")
            notes.append(f"previous-token heads (prev_mass > 0.5): "
                         f"{[(int(r.layer), int(r.head)) for r in prev.itertuples()]}")
        if stack == "encoder":
            local = part[part.locality > 0.9]
            notes.append(f"local heads (locality > 0.9): {[(int(r.layer), int(r.head)) for r in local.itertuples()]}")
        heads_html += (f"<h3>{stack.capitalize()} heads (sorted by {key}, {label} first)</h3>"
                       + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
                       + _table(part.sort_values(key, ascending=False), columns))
    page.add("heads", "Attention heads", heads_html)

    log("attention views")
    clip = few[0]
    batch = model.prepare([clip], [clip.text] if getattr(clip, "text", None) else None)
    n_real = int(batch.audio_mask[0].sum())
    last_enc = model.dims.n_audio_layer - 1
    names = [get_act_name("pattern", last_enc, "encoder")]
    if batch.tokens is not None:
        names += [get_act_name("cross_pattern", l, "decoder") for l in range(model.dims.n_text_layer)]
        names += ["decoder_blocks.0.attn.hook_pattern"]
        _, cache = model.run_with_cache(batch.mel, batch.tokens, names_filter=names)
    else:
        _, cache = model.run_with_cache(batch.mel, names_filter=names)
    body = ("<p>Interactive views (CircuitsVis): hover a head to enlarge it, a token or time bin to see its "
            f"attention. Clip: {html.escape(str(getattr(clip, 'id', '')))}.</p>")
    body += page.view(views.encoder_attention_view(cache[names[0]][0], n_real=n_real, n_bins=40,
                                                   title=f"Encoder block {last_enc} self-attention"))
    if batch.tokens is not None:
        str_tokens = model.to_str_tokens(batch.tokens[0])
        heads = alignment or [tuple(x) for x in model.alignment_heads.nonzero().tolist()]
        stack = torch.stack([cache[get_act_name("cross_pattern", l, "decoder")][0, h] for l, h in heads]) \
            if heads else cache[get_act_name("cross_pattern", model.dims.n_text_layer - 1, "decoder")][0]
        body += _figure(views.cross_attention_plot(stack.mean(0), str_tokens, batch.mel[0], n_real=n_real,
                                                   title=f"Cross-attention, mean of heads {heads}"), out, "cross_attention")
        layer = heads[0][0] if heads else model.dims.n_text_layer - 1
        body += page.view(views.cross_attention_view(cache[get_act_name("cross_pattern", layer, "decoder")][0],
                                                     str_tokens, n_real=n_real, title=f"Cross-attention, block {layer}"))
        body += page.view(views.decoder_attention_view(cache["decoder_blocks.0.attn.hook_pattern"][0], str_tokens,
                                                       title="Decoder block 0 self-attention"))
    page.add("attention", "Attention", body)

    if all(getattr(c, "text", None) for c in few):
        log("encoder lens")
        lens = analysis.encoder_lens(model, few, max_new_tokens=64)
        page.add("encoder-lens", "Encoder lens",
                 "<p>The residual stream after k encoder blocks, through the encoder's final layer norm, decoded "
                 "by the whole decoder (k = 0: the conv stem; the last k is the full model).</p>"
                 + _figure(views.line_plot(lens, "layer", ["wer_vs_reference", "wer_vs_full"],
                                           title="Word error rate decoding from each encoder layer",
                                           xlabel="encoder blocks applied"), out, "encoder_lens")
                 + _table(lens.assign(first_transcript=[t[0][:80] for t in lens.transcripts]),
                          ["layer", "wer_vs_reference", "wer_vs_full", "cross_entropy", "first_transcript"]))
        log("logit lens")
        ll = analysis.logit_lens(model, model.prepare(few))
        frame = ll.to_frame()
        page.add("logit-lens", "Logit lens",
                 "<p>The next token read from the residual stream after each decoder block through the final "
                 "layer norm and unembedding, at every transcript position.</p>"
                 + _figure(views.line_plot(frame, "layer", ["accuracy_vs_final", "accuracy_vs_reference",
                                                            "mean_ref_prob"], title="Logit lens"), out, "logit_lens")
                 + _table(frame))

    log("attention window sweep")
    windows = [5, 25, 75, None] if quick else [2, 5, 10, 25, 50, 75, 150, None]
    sweep = analysis.attention_window_sweep(model, few, windows=windows, max_new_tokens=64)
    ys = ["wer_vs_full"] + (["wer_vs_reference"] if "wer_vs_reference" in sweep else [])
    page.add("windows", "Attention windows",
             "<p>Encoder self-attention limited to +-k positions (20 ms each), as in Reid (2023).</p>"
             + _figure(views.line_plot(sweep.assign(window=[str(w) for w in sweep.window]), "window", ys,
                                       title="Word error rate against the encoder attention window",
                                       xlabel="window (positions; None = unrestricted)"), out, "windows")
             + _table(sweep.assign(example=[t[0][:80] for t in sweep.transcripts]), ["window", *ys, "example"]))

    if patching is not None:
        log("activation patching")
        tokens = model.to_str_tokens(patching.tokens[0])
        answers = [model.tokenizer.decode([a]) for a in patching.answers]
        enc = analysis.patch_encoder_time(model, patching, bin_s=0.1 if not quick else 0.25)
        dec = analysis.patch_resid(model, patching, stack="decoder")
        body = (f"<p>Clean activations patched into the corrupted run; metric: logit difference "
                f"{answers[0]!r} - {answers[1]!r} after {tokens!r}, 0 = corrupted, 1 = clean.</p>")
        body += _figure(views.heatmap(enc.values, enc.labels["layer"], enc.labels["time_bin"],
                                      title="Encoder residual stream (resid_pre) by layer and time",
                                      xlabel="time", ylabel="encoder layer"), out, "patching_encoder")
        body += _figure(views.heatmap(dec.values, dec.labels["layer"], dec.labels["text_pos"],
                                      title="Decoder residual stream by layer and position", ylabel="decoder layer"),
                        out, "patching_decoder")
        page.add("patching", "Activation patching", body)

    if sae is not None:
        log("SAE")
        from whisper_lens.analysis.features import feature_activations, feature_dashboard
        from whisper_lens.sae.evaluation import evaluate

        held_out = list(sae_eval_clips or few)
        ev = evaluate(model, sae, held_out, out_dir=out / "figures", n_wer_clips=4 if quick else 16, verbose=False)
        fa = feature_activations(model, sae, clips)
        latents = fa.most_active(6 if quick else 12)
        index = feature_dashboard(model, sae, clips, fa, latents=latents, out_dir=out / "features")
        links = "".join(f"<li><a href='features/latent_{l}.html'>latent {l}</a>: fires on {fa.density[l]:.2%} "
                        f"of frames, peak {fa.top_values[l, 0]:.2f}</li>" for l in latents)
        page.add("sae", "SAE features",
                 f"<pre>{html.escape(ev.summary())}</pre><img src='figures/feature_density.png'>"
                 f"<h3>Dashboards</h3><p><a href='features/{index.name}'>all</a></p><ul>{links}</ul>")
        (out / "sae_metrics.json").write_text(json.dumps(ev.to_dict(), indent=2))

    page.add("about", "About this report",
             f"<p>{html.escape(repr(model))} from {html.escape(model.source)}; built in "
             f"{time.perf_counter() - started:.0f} s by whisper_lens.</p>")
    index = out / "index.html"
    index.write_text(page.render())
    return index
