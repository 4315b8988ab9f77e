"""Train an SAE on Whisper with SAELens's own `SAETrainer`, plus what a long audio run needs.

    result = train_sae("configs/tiny_en_encoder_l2.yaml")   # or a TrainSAEConfig
    result.sae_path          # SAELens format: SAE.load_from_disk(result.sae_path)

Around SAELens's trainer (never a fork of it):
- data: `activation_provider` (real frames / transcript tokens, packed, mixed);
- checkpoints: SAELens's evenly spaced ones, plus one when the run is interrupted (Ctrl-C or
  SIGTERM stop the run after the step in progress); each checkpoint also holds the data stream's
  whole state. Running the same config again resumes from the newest complete checkpoint and ends
  with the SAE an uninterrupted run would have ended with;
- `DeadLatentResampler`: optional re-initialisation of dead latents, wrapped around `trainer.step`.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from whisper_lens.audio import SAMPLE_RATE
from whisper_lens.sae.config import DataSpec, SAESpec, TrainSAEConfig
from whisper_lens.sae.sources import ActivationStream, activation_provider

if TYPE_CHECKING:
    from whisper_lens.data import AudioExample
    from whisper_lens.model import HookedWhisper

STATE_FILE = "whisper_lens_state.json"  # written last: a checkpoint without it is incomplete
DATA_STATE_FILE = "whisper_lens_data_state.pt"  # the data stream and resampler, tensors included


# ------------------------------------------------------------------ building blocks
def load_clips(spec: DataSpec) -> list[AudioExample]:
    """The clips a `DataSpec` names, in a deterministic order."""
    from whisper_lens import data

    loaders: dict[str, Callable[[], Any]] = {
        "samples": lambda: data.load_samples(limit=spec.limit, **({"directory": Path(spec.path)} if spec.path else {})),
        "librispeech": lambda: data.load_librispeech(spec.path, limit=spec.limit),
        "folder": lambda: data.load_folder(spec.path, limit=spec.limit),
        "manifest": lambda: data.load_manifest(spec.path, limit=spec.limit),
        "hf_librispeech": lambda: data.load_hf_librispeech(split=spec.path or "validation", limit=spec.limit),
    }
    clips = list(loaders[spec.source]())
    if len(clips) <= spec.eval_clips:
        raise ValueError(f"{len(clips)} clips from data.source={spec.source!r}, but data.eval_clips={spec.eval_clips} "
                         "are held out; add clips or lower data.eval_clips")
    return clips


def build_sae(spec: SAESpec, d_in: int, *, device: str = "cpu", seed: int = 0) -> TrainingSAE[Any]:
    """A fresh SAELens training SAE of `spec.architecture` with `expansion_factor * d_in` latents."""
    sae_class, cfg_class = SAE_TRAINING_CLASS_REGISTRY[spec.architecture]
    try:
        cfg = cfg_class(d_in=d_in, d_sae=spec.expansion_factor * d_in, device=device, **spec.options)
    except TypeError as err:
        raise ValueError(f"sae.options {spec.options} do not fit SAELens's {cfg_class.__name__}: {err}") from None
    torch.manual_seed(seed)
    return sae_class(cfg)


def set_metadata(sae: TrainingSAE[Any] | Any, model: HookedWhisper, hook_name: str, *, pack: bool,
                 dataset: str) -> None:
    """What SAELens and whisper_lens need to use the SAE later (saved in its cfg.json)."""
    meta = sae.cfg.metadata
    meta.hook_name = hook_name
    meta.model_name = model.model_name
    meta.model_class_name = "HookedWhisper"
    meta.dataset_path = dataset
    meta.prepend_bos = False
    meta.sample_rate = SAMPLE_RATE
    meta.packed = pack
    meta.positions = "transcript tokens" if hook_name.startswith("decoder") else "real audio frames"


class DeadLatentResampler:
    """Every `every` steps, latents that have not fired since the last check are re-initialised
    toward inputs the SAE reconstructs worst: the decoder row becomes the unit-norm residual of
    such an input, the encoder column points along it (scaled to 0.2 x the mean live encoder
    norm), the encoder bias is zeroed, and Adam's moments for those rows are reset.

    Installed around `trainer.step`, so SAELens's trainer runs unchanged."""

    def __init__(self, trainer: SAETrainer[Any, Any], every: int, *, seed: int = 0):
        self.trainer, self.every = trainer, every
        self.fired = torch.zeros(trainer.sae.cfg.d_sae, dtype=torch.bool, device=trainer.sae.W_dec.device)
        self.n_resampled: list[tuple[int, int]] = []  # (step, latents re-initialised)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def observe(self, output: TrainStepOutput) -> None:
        acts = output.feature_acts
        fired = acts.bool().any(0)
        self.fired |= fired.to_dense() if fired.is_sparse else fired
        if (self.trainer.n_training_steps + 1) % self.every == 0:
            self.resample(output.sae_in.detach(), output.sae_out.detach())

    @torch.no_grad()
    def resample(self, sae_in: torch.Tensor, sae_out: torch.Tensor) -> int:
        dead = (~self.fired).nonzero().flatten()
        self.fired.zero_()
        step = self.trainer.n_training_steps + 1
        if len(dead) == 0:
            self.n_resampled.append((step, 0))
            return 0
        sae = self.trainer.sae
        residual = (sae_in - sae_out).float()
        weight = residual.pow(2).sum(-1).pow(2).cpu()  # loss squared: favour the worst inputs
        if float(weight.sum()) == 0:
            weight = torch.ones_like(weight)
        pick = torch.multinomial(weight, len(dead), replacement=len(dead) > len(weight), generator=self.generator)
        directions = residual[pick.to(residual.device)]
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool, device=dead.device)
        alive[dead] = False
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec.data[dead] = directions.to(sae.W_dec.dtype)
        sae.W_enc.data[:, dead] = (directions.T * 0.2 * enc_norm).to(sae.W_enc.dtype)
        if hasattr(sae, "b_enc"):
            sae.b_enc.data[dead] = 0
        self._reset_adam(sae.W_dec, (dead,))
        self._reset_adam(sae.W_enc, (slice(None), dead))
        if hasattr(sae, "b_enc"):
            self._reset_adam(sae.b_enc, (dead,))
        self.trainer.n_forward_passes_since_fired[dead.to(self.trainer.n_forward_passes_since_fired.device)] = 0
        self.n_resampled.append((step, len(dead)))
        return len(dead)

    def _reset_adam(self, param: torch.nn.Parameter, index: tuple[Any, ...]) -> None:
        state = self.trainer.optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"fired": self.fired.cpu(), "n_resampled": self.n_resampled, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fired = torch.as_tensor(state["fired"], dtype=torch.bool).to(self.fired.device)
        self.n_resampled = [tuple(x) for x in state["n_resampled"]]
        if "generator" in state:
            self.generator.set_state(state["generator"])


class StopAfterStep(Exception):
    """Raised at the start of the step after an interruption was requested."""


@contextmanager
def _graceful_interrupts():
    """Ctrl-C / SIGTERM set a flag; the training loop stops at the next step boundary.
    A second Ctrl-C stops at once."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        print("\nstopping after the current step (Ctrl-C again to stop now)...", flush=True)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the most training samples, if any."""
    if not checkpoint_dir.is_dir():
        return None
    done = [p for p in checkpoint_dir.iterdir() if (p / STATE_FILE).is_file() and p.name.isdigit()]
    return max(done, key=lambda p: int(p.name), default=None)


# ------------------------------------------------------------------ the run
@dataclass(frozen=True)
class TrainResult:
    sae: Any  # the trained SAELens TrainingSAE (activation scaling folded in)
    sae_path: Path  # the inference SAE in SAELens format
    n_steps: int  # optimizer steps taken in total (across resumes)
    n_samples: int  # activations trained on in total
    resumed_from: Path | None  # checkpoint this run continued from
    resampled: list[tuple[int, int]]  # (step, latents re-initialised), when resampling is on
    rows_per_second: float  # real activations the model produced per second of model time
    train_seconds: float  # wall time of this run's training loop
    model_seconds: float  # part of it spent producing activations


def train_sae(
    config: TrainSAEConfig | str | Path,
    *,
    model: HookedWhisper | None = None,
    clips: Sequence[Any] | None = None,
    eval_clips: Sequence[Any] | None = None,
    evaluator: Callable[..., dict[str, Any]] | None = None,
    resume: bool = True,
    overrides: Sequence[str] = (),
) -> TrainResult:
    """Train an SAE as `config` says: model, data, SAELens SAE and `SAETrainer` wired together.

    `model` and `clips` (all of them train) replace what the config would load; otherwise the
    last `data.eval_clips` clips are held out. With W&B on, the held-out clips (or `eval_clips`)
    are evaluated at SAELens's evaluation steps through `audio_evaluator`, unless `evaluator` is
    given. With `resume=True` an existing complete checkpoint in `out_dir/checkpoints` is
    continued; the config must match the one saved beside it."""
    import time

    from whisper_lens.model import HookedWhisper
    from whisper_lens.runtime import resolve_device

    cfg = config if isinstance(config, TrainSAEConfig) else TrainSAEConfig.from_yaml(config, overrides=list(overrides))
    if overrides and isinstance(config, TrainSAEConfig):
        cfg = cfg.with_overrides(list(overrides))
    out = Path(cfg.out_dir)
    checkpoints = out / "checkpoints"
    saved_cfg = out / "config.yaml"
    if saved_cfg.is_file() and latest_checkpoint(checkpoints) and resume:
        before = TrainSAEConfig.model_validate(_yaml_load(saved_cfg))
        if before != cfg:
            raise ValueError(f"{out} holds checkpoints of a different config; use another out_dir, or "
                             f"resume=False (--no-resume) to start over there")
    out.mkdir(parents=True, exist_ok=True)
    saved_cfg.write_text(cfg.to_yaml())

    device = resolve_device(cfg.device)
    model = model or HookedWhisper.from_pretrained(cfg.model, device=device)
    if clips is None:
        loaded = load_clips(cfg.data)
        train_clips = loaded[: len(loaded) - cfg.data.eval_clips]
        eval_clips = eval_clips if eval_clips is not None else loaded[len(train_clips):]
    else:
        train_clips = list(clips)
    if evaluator is None and cfg.wandb.enabled and eval_clips:
        from whisper_lens.sae.evaluation import audio_evaluator

        evaluator = audio_evaluator(model, list(eval_clips), pack=cfg.data.pack, n_wer_clips=4)
    t = cfg.training
    provider = activation_provider(model, train_clips, cfg.hook_name, batch_size=t.batch_size,
                                   model_batch_size=cfg.data.model_batch_size, pack=cfg.data.pack,
                                   gap_s=cfg.data.gap_s, buffer_size=cfg.data.buffer_batches * t.batch_size,
                                   seed=cfg.data.seed, keep_in_memory=cfg.data.keep_in_memory)
    sae = build_sae(cfg.sae, provider.d_in, device=str(device), seed=t.seed)
    set_metadata(sae, model, cfg.hook_name, pack=cfg.data.pack, dataset=f"{cfg.data.source}:{cfg.data.path or ''}")
    trainer_cfg = SAETrainerConfig(
        total_training_samples=t.total_training_samples, train_batch_size_samples=t.batch_size, lr=t.lr,
        lr_end=t.lr_end if t.lr_end is not None else t.lr / 10, lr_scheduler_name=t.lr_scheduler,
        lr_warm_up_steps=t.lr_warm_up_steps, lr_decay_steps=t.lr_decay_steps, device=str(device),
        autocast=t.autocast if t.autocast is not None else device.type == "cuda",
        dead_feature_window=t.dead_feature_window, feature_sampling_window=t.feature_sampling_window,
        n_checkpoints=t.n_checkpoints, checkpoint_path=str(checkpoints), save_final_checkpoint=False,
        n_batches_for_norm_estimate=t.norm_estimate_batches,
        logger=LoggingConfig(log_to_wandb=cfg.wandb.enabled, wandb_project=cfg.wandb.project,
                             wandb_entity=cfg.wandb.entity, run_name=cfg.wandb.run_name,
                             wandb_log_frequency=cfg.wandb.log_frequency),
    )
    resampler: DeadLatentResampler | None = None

    def save_state(checkpoint_path: Path | None) -> None:
        if checkpoint_path is not None:
            state = {"data": provider.state_dict(), "resampler": resampler.state_dict() if resampler else None}
            _write_atomically(Path(checkpoint_path) / DATA_STATE_FILE, lambda f: torch.save(state, f))
            # written last: a checkpoint without it is incomplete and never resumed from
            _write_atomically(Path(checkpoint_path) / STATE_FILE,
                              lambda f: f.write(json.dumps({"data_state": DATA_STATE_FILE}).encode()))

    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider, evaluator=evaluator,
                         save_checkpoint_fn=save_state)
    if t.resample_every:
        resampler = DeadLatentResampler(trainer, t.resample_every, seed=t.seed)

    resumed_from = latest_checkpoint(checkpoints) if resume else None
    if resumed_from is not None:
        trainer.load_trainer_state(resumed_from)
        # SAELens saves periodic checkpoints before counting the step they follow; every step
        # consumes one batch, so the sample count gives the true step count.
        trainer.n_training_steps = trainer.n_training_samples // t.batch_size
        sae.load_weights_from_checkpoint(resumed_from)
        state = torch.load(resumed_from / DATA_STATE_FILE, map_location="cpu", weights_only=True)
        provider.load_state_dict(state["data"])
        if resampler and state["resampler"]:
            resampler.load_state_dict(state["resampler"])
        trainer.checkpoint_thresholds = [x for x in trainer.checkpoint_thresholds if x > trainer.n_training_samples]
        print(f"resuming from {resumed_from} (step {trainer.n_training_steps}, "
              f"{trainer.n_training_samples} samples)", flush=True)

    if cfg.wandb.enabled:
        import wandb

        wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.wandb.run_name,
                   config=cfg.model_dump())
    start = time.perf_counter()
    with _graceful_interrupts() as flag:
        original_step = trainer.step

        def step(batch: torch.Tensor) -> TrainStepOutput:
            if flag["stop"]:
                raise StopAfterStep
            output = original_step(batch)
            if resampler is not None:
                resampler.observe(output)
            return output

        trainer.step = step  # type: ignore[method-assign]
        try:
            trained = trainer.fit()
        except (StopAfterStep, KeyboardInterrupt):
            name = str(trainer.n_training_samples)
            trainer.save_checkpoint(checkpoint_name=name)
            raise SystemExit(f"interrupted after step {trainer.n_training_steps}; saved {checkpoints / name}. "
                             "Run the same command again to resume from it.") from None
        finally:
            if cfg.wandb.enabled:
                import wandb

                wandb.finish()
    seconds = time.perf_counter() - start
    sae_path = out / "sae"
    trained.save_inference_model(str(sae_path))
    return TrainResult(
        sae=trained, sae_path=sae_path, n_steps=trainer.n_training_steps, n_samples=trainer.n_training_samples,
        resumed_from=resumed_from, resampled=list(resampler.n_resampled) if resampler else [],
        rows_per_second=provider.n_rows_read / max(provider.model_seconds, 1e-9), train_seconds=seconds,
        model_seconds=provider.model_seconds,
    )


def _write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write `path` through a temporary file renamed into place: a kill leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _yaml_load(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


__all__ = ["ActivationStream", "DeadLatentResampler", "TrainResult", "build_sae", "latest_checkpoint",
           "load_clips", "set_metadata", "train_sae"]
