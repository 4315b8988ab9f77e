"""What `train_sae` / `whisper-lens train-sae` reads: pydantic models, loadable from YAML.

    cfg = TrainSAEConfig.from_yaml("configs/tiny_en_encoder_l2.yaml", overrides=["training.lr=1e-3"])

Only the audio side and the run are described here; the SAE itself is SAELens's, built from
`sae.architecture` (any name in SAELens's registry) and `sae.options` (fields of that
architecture's SAELens training config, e.g. `k`, `l1_coefficient`, `aux_loss_coefficient`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSpec(_Frozen):
    source: Literal["samples", "librispeech", "folder", "manifest", "hf_librispeech"] = "samples"  # loader
    path: str | None = None  # LibriSpeech root, folder, manifest file, or HF split name
    limit: int | None = None  # read at most this many clips
    eval_clips: int = Field(8, ge=0)  # clips held out (from the end) for `evaluate`
    pack: bool = True  # pack clips into full 30 s windows
    gap_s: float = Field(0.2, ge=0)  # silence between packed clips
    model_batch_size: int = Field(8, ge=1)  # windows per forward pass
    buffer_batches: int = Field(16, ge=1)  # shuffle buffer, in training batches
    keep_in_memory: bool = False  # replay the first epoch's activations instead of rerunning the model
    seed: int = 0  # clip order per epoch

    @field_validator("path")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser())

    @model_validator(mode="after")
    def _needs_path(self) -> DataSpec:
        if self.source in ("librispeech", "folder", "manifest") and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path")
        return self


class SAESpec(_Frozen):
    architecture: str = "topk"  # SAELens training architecture: topk, batchtopk, jumprelu, standard, ...
    expansion_factor: int = Field(8, ge=1)  # d_sae = expansion_factor * d_in
    options: dict[str, Any] = Field(default_factory=lambda: {"k": 32})  # SAELens config fields

    @field_validator("architecture")
    @classmethod
    def _known(cls, value: str) -> str:
        from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

        if value not in SAE_TRAINING_CLASS_REGISTRY:
            raise ValueError(f"unknown SAE architecture {value!r}; SAELens has {sorted(SAE_TRAINING_CLASS_REGISTRY)}")
        return value


class TrainingSpec(_Frozen):
    total_training_samples: int = Field(2_000_000, ge=1)  # activations (rows) to train on
    batch_size: int = Field(4096, ge=1)  # rows per step
    lr: float = Field(4e-4, gt=0)  # Adam learning rate
    lr_end: float | None = None  # final lr of a decaying schedule (default lr / 10)
    lr_scheduler: str = "constant"  # SAELens scheduler name: constant, cosineannealing, ...
    lr_warm_up_steps: int = Field(0, ge=0)
    lr_decay_steps: int = Field(0, ge=0)
    dead_feature_window: int = Field(1000, ge=1)  # steps without firing before a latent counts as dead
    feature_sampling_window: int = Field(2000, ge=1)  # steps per sparsity statistics window
    resample_every: int | None = Field(None, ge=1)  # re-initialise dead latents every N steps (None: off)
    n_checkpoints: int = Field(4, ge=0)  # evenly spaced checkpoints (plus one on interruption)
    autocast: bool | None = None  # bf16 autocast; None: on for CUDA, off otherwise
    norm_estimate_batches: int = Field(50, ge=1)  # batches read to estimate activation scaling
    seed: int = 0  # SAE initialisation


class WandbSpec(_Frozen):
    enabled: bool = False  # log with SAELens's W&B logging
    project: str = "whisper_lens"
    entity: str | None = None
    run_name: str | None = None
    log_frequency: int = Field(10, ge=1)  # steps between logs


class TrainSAEConfig(_Frozen):
    model: str = "tiny.en"  # anything HookedWhisper.from_pretrained takes
    hook_name: str = "encoder_blocks.2.hook_resid_post"  # where the SAE reads (and is spliced)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    out_dir: str = "runs/sae"  # checkpoints/, sae/ (final, SAELens format), config.yaml
    data: DataSpec = DataSpec()
    sae: SAESpec = SAESpec()
    training: TrainingSpec = TrainingSpec()
    wandb: WandbSpec = WandbSpec()

    @classmethod
    def from_yaml(cls, path: str | Path, *, overrides: list[str] | tuple[str, ...] = ()) -> TrainSAEConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}; see configs/ for examples")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping of settings, not {type(raw).__name__}")
        return cls.model_validate(apply_overrides(raw, overrides))

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> TrainSAEConfig:
        return self.model_validate(apply_overrides(self.model_dump(), overrides))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["training.lr=1e-3", "sae.options.k=64"]` applied to a nested dict (values parsed as YAML)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. training.lr=1e-3")
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is a value, not a section")
        node[leaf] = yaml.safe_load(value)
    return raw
