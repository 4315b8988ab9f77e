"""How good an SAE on Whisper is, measured on held-out audio.

    ev = evaluate(model, sae, clips, out_dir="runs/eval")
    print(ev.summary())

Reconstruction and sparsity are read on real positions only (audio frames for encoder hooks,
transcript tokens for decoder hooks). Splicing replaces the activation at those same positions
(padding frames and the prompt pass through unchanged, as in training); the zero-ablation
baseline zeros the whole activation, as SAELens's `run_evals` does. Both measure the
teacher-forced cross-entropy of the reference transcript (clean / spliced / zero-ablated) and the
word error rate of `transcribe` with the SAE spliced in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from whisper_lens.activations import batches_of, check_hooks, real_positions
from whisper_lens.metrics import word_error_rate
from whisper_lens.model import next_token_loss

if TYPE_CHECKING:
    from whisper_lens.model import HookedWhisper

DENSE_THRESHOLD = 0.1  # a latent firing on more than this fraction of positions counts as dense


@dataclass(frozen=True)
class SAEEvaluation:
    hook_name: str
    n_positions: int  # real positions the reconstruction metrics are averaged over
    explained_variance: float  # 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2
    nmse: float  # sum |x - x_hat|^2 / sum |x|^2
    l0: float  # mean number of active latents per position
    dead_fraction: float  # latents that never fired on the evaluation set
    dense_fraction: float  # latents firing on more than 10% of positions
    ce_clean: float | None  # nats per transcript token, teacher-forced
    ce_spliced: float | None  # with the SAE's reconstruction in place of the activation
    ce_zero: float | None  # with the activation zeroed
    ce_recovered: float | None  # (ce_zero - ce_spliced) / (ce_zero - ce_clean)
    wer_clean: float | None  # transcribe, against the reference transcripts
    wer_spliced: float | None  # transcribe with the SAE spliced in, against the references
    wer_spliced_vs_clean: float | None  # spliced transcripts against the clean ones
    n_clips: int  # clips evaluated (`n_wer_clips` of them transcribed)
    density_plot: str | None  # feature density histogram (PNG), when out_dir was given
    density: list[float] = field(repr=False, default_factory=list)  # firing frequency per latent

    def summary(self) -> str:
        def fmt(value: float | None, spec: str = ".4f") -> str:
            return "n/a" if value is None else format(value, spec)

        lines = [
            f"SAE at {self.hook_name}: {self.n_positions} real positions from {self.n_clips} clips",
            f"  explained variance  {fmt(self.explained_variance)}    normalised MSE {fmt(self.nmse)}",
            f"  L0                  {fmt(self.l0, '.1f')}      dead {fmt(self.dead_fraction, '.2%')}"
            f"   dense (>10%) {fmt(self.dense_fraction, '.2%')}",
            f"  dead is measured on {self.n_positions} positions: {fmt(self.expected_firings, '.1f')} expected "
            f"firings per latent (L0 x positions / latents)",
            f"  cross-entropy       clean {fmt(self.ce_clean)}  spliced {fmt(self.ce_spliced)}  "
            f"zero-ablated {fmt(self.ce_zero)}  recovered {fmt(self.ce_recovered, '.1%')}",
            f"  word error rate     clean {fmt(self.wer_clean, '.1%')}  spliced {fmt(self.wer_spliced, '.1%')}  "
            f"spliced vs clean {fmt(self.wer_spliced_vs_clean, '.1%')}",
        ]
        if self.density_plot:
            lines.append(f"  feature density     {self.density_plot}")
        return "\n".join(lines)

    @property
    def expected_firings(self) -> float:
        """Firings per latent if every latent fired equally often: how much "dead" can be trusted
        (under about 10, a live latent can fail to fire on these positions by chance)."""
        return self.l0 * self.n_positions / max(len(self.density), 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["expected_firings"] = self.expected_firings
        out.pop("density")
        return out


def _reconstruct(sae: Any, x: Tensor, scaler: Any = None) -> tuple[Tensor, Tensor]:
    """(reconstruction, latent activations) of rows x [n d], in x's scale and dtype."""
    rows = x.reshape(x.shape[0], -1).to(sae.W_dec.dtype)
    if scaler is not None:
        rows = scaler(rows)
    acts = sae.encode(rows)
    recon = sae.decode(acts)
    if scaler is not None:
        recon = scaler.unscale(recon)
    return recon.reshape(x.shape).to(x.dtype), acts


def splice_hook(sae: Any, mask: Tensor | None, *, zero: bool = False, scaler: Any = None) -> Callable:
    """A forward hook that replaces the activation at `mask` positions (all, if None) with the
    SAE's reconstruction; with `zero=True`, zeros the whole activation (SAELens's zero-ablation
    baseline, so CE recovered means the same here and in `sae_lens.evals.run_evals`)."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        if zero:
            return torch.zeros_like(act)
        where = torch.ones(act.shape[:2], dtype=torch.bool, device=act.device) if mask is None else mask
        where = where[:, : act.shape[1]].to(act.device)
        out = act.clone()
        out[where] = _reconstruct(sae, act[where], scaler)[0]
        return out

    return hook


@torch.no_grad()
def evaluate(
    model: HookedWhisper,
    sae: Any,
    clips: Sequence[Any],
    *,
    hook_name: str | None = None,
    batch_size: int = 8,
    pack: bool = True,
    gap_s: float = 0.2,
    n_wer_clips: int | None = 16,
    out_dir: str | Path | None = None,
    scaler: Any = None,
    language: str | None = None,
    verbose: bool = True,
) -> SAEEvaluation:
    """Evaluate `sae` (any SAELens SAE or TrainingSAE) on held-out `clips`.

    Args:
        hook_name: where the SAE reads; default `sae.cfg.metadata.hook_name`.
        pack: pack clips into windows for the reconstruction and cross-entropy passes.
        n_wer_clips: how many clips to transcribe for the word error rates (0: skip; None: all).
        out_dir: where to write `feature_density.png`.
        scaler: SAELens `ActivationScaler` the SAE was trained behind (training-time evaluation).
    """
    hook_name = hook_name or sae.cfg.metadata.hook_name
    if hook_name is None:
        raise ValueError("pass hook_name=...: the SAE's metadata does not say which hook it reads")
    decoder, _ = check_hooks(model, [hook_name])
    clips = list(clips)
    if not clips:
        raise ValueError("no clips to evaluate on")
    has_text = all(getattr(c, "text", None) for c in clips)
    if decoder and not has_text:
        raise ValueError(f"{hook_name} is a decoder hook: evaluation clips need transcripts (.text)")
    d_sae = sae.cfg.d_sae
    sse = sum_sq = 0.0
    sum_x: Tensor | None = None
    n = 0
    l0_sum = 0.0
    fires = torch.zeros(d_sae, dtype=torch.float64)
    nll = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_targets = 0
    for group in batches_of(model, clips, batch_size, pack, gap_s):
        batch = model.prepare(group, pack=pack, gap_s=gap_s, language=language)
        args = (batch.mel, batch.tokens) if has_text else (batch.mel,)
        logits, cache = model.run_with_cache(*args, names_filter=[hook_name])
        act = cache[hook_name]
        mask = real_positions(batch, hook_name, act.shape[1])
        x = act[mask]
        recon, latents = _reconstruct(sae, x, scaler)
        x64, r64 = x.reshape(len(x), -1).double().cpu(), recon.reshape(len(x), -1).double().cpu()
        sse += float((x64 - r64).pow(2).sum())
        sum_sq += float(x64.pow(2).sum())
        sum_x = x64.sum(0) if sum_x is None else sum_x + x64.sum(0)
        n += len(x)
        active = latents.detach().cpu() > 0
        l0_sum += float(active.sum())
        fires += active.sum(0).double()
        if has_text:
            targets = batch.transcript_mask
            nll["clean"] += _nll(logits, batch.tokens, targets)
            for kind in ("spliced", "zero"):
                hooked = model.run_with_hooks(batch.mel, batch.tokens, fwd_hooks=[
                    (hook_name, splice_hook(sae, mask, zero=kind == "zero", scaler=scaler))])
                nll[kind] += _nll(hooked, batch.tokens, targets)
            n_targets += int(targets[:, 1:].sum())
    if n == 0:
        raise ValueError(f"no real positions at {hook_name} in the evaluation clips")
    assert sum_x is not None
    total = sum_sq - float(sum_x.pow(2).sum()) / n  # sum |x - mean|^2
    density = (fires / n).float()
    ce = {k: v / max(n_targets, 1) for k, v in nll.items()} if has_text else {}
    recovered = None
    if has_text and ce["zero"] != ce["clean"]:
        recovered = (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"])
    wers = _wers(model, sae, clips, hook_name, decoder, n_wer_clips, scaler, batch_size) if has_text \
        else (None, None, None)
    plot = _density_plot(density, hook_name, Path(out_dir)) if out_dir is not None else None
    result = SAEEvaluation(
        hook_name=hook_name, n_positions=n, explained_variance=1 - sse / total if total > 0 else math.nan,
        nmse=sse / sum_sq if sum_sq > 0 else math.nan, l0=l0_sum / n,
        dead_fraction=float((density == 0).float().mean()), dense_fraction=float((density > DENSE_THRESHOLD).float().mean()),
        ce_clean=ce.get("clean"), ce_spliced=ce.get("spliced"), ce_zero=ce.get("zero"), ce_recovered=recovered,
        wer_clean=wers[0], wer_spliced=wers[1], wer_spliced_vs_clean=wers[2], n_clips=len(clips),
        density_plot=str(plot) if plot else None, density=density.tolist(),
    )
    if verbose:
        print(result.summary(), flush=True)
    return result


def _nll(logits: Tensor, tokens: Tensor, targets: Tensor) -> float:
    return float(next_token_loss(logits, tokens, targets, per_token=True).sum())


def _wers(model: HookedWhisper, sae: Any, clips: list[Any], hook_name: str, decoder: bool,
          n_wer_clips: int | None, scaler: Any, batch_size: int) -> tuple[float | None, float | None, float | None]:
    chosen = clips if n_wer_clips is None else clips[:n_wer_clips]
    if not chosen:
        return None, None, None
    refs = [c.text for c in chosen]
    clean, spliced = [], []
    for start in range(0, len(chosen), batch_size):
        batch = model.prepare(chosen[start : start + batch_size], chunk=True)
        # Encoder SAEs replace real frames only; decoder SAEs every generated position.
        mask = None if decoder else batch.audio_mask
        clean += [t.text for t in model.transcribe(batch)]
        hooks = [(hook_name, splice_hook(sae, mask, scaler=scaler))]
        spliced += [t.text for t in model.transcribe(batch, fwd_hooks=hooks)]
    return word_error_rate(refs, clean), word_error_rate(refs, spliced), word_error_rate(clean, spliced)


def _density_plot(density: Tensor, hook_name: str, out_dir: Path) -> Path:
    from whisper_lens.views import _plt

    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "feature_density.png"
    fig, ax = plt.subplots(figsize=(6, 3.2))
    log_density = torch.log10(density.clamp(min=1e-7)).numpy()
    ax.hist(log_density, bins=60, color="#4c72b0")
    ax.axvline(math.log10(DENSE_THRESHOLD), color="#c44e52", linestyle="--", label="dense (10%)")
    ax.set_xlabel("log10 firing frequency (dead latents at -7)")
    ax.set_ylabel("latents")
    ax.set_title(f"Feature density at {hook_name}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def audio_evaluator(model: HookedWhisper, clips: Sequence[Any], **kwargs: Any) -> Callable[..., dict[str, Any]]:
    """`evaluate` in SAELens's `Evaluator` shape, for `SAETrainer(evaluator=...)`: its metrics
    are logged to W&B under `whisper/` at SAELens's evaluation steps."""

    def evaluator(sae: Any, data_provider: Any, activation_scaler: Any) -> dict[str, Any]:
        scaler = activation_scaler if getattr(activation_scaler, "scaling_factor", None) is not None else None
        result = evaluate(model, sae, clips, scaler=scaler, verbose=False, **kwargs)
        return {f"whisper/{k}": v for k, v in result.to_dict().items()
                if isinstance(v, (int, float)) and v is not None}

    return evaluator
