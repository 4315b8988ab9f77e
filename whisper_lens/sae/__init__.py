"""Sparse autoencoders on Whisper through SAELens.

    activation_provider(model, clips, hook)        SAETrainer data provider (route 1)
    train_sae(config)                              model + data + SAELens SAE + SAETrainer
    pcm_dataset(clips)                             dataset for LanguageModelSAETrainingRunner (route 2)
    saelens_dataset(model, clips, hook_name=...)   rows SAELens's runner, ActivationsStore and run_evals read
    cache_activations(model, clips, hooks, dir)    cached activations SAELens reads (route 3)
    evaluate(model, sae, clips)                    reconstruction, sparsity, spliced CE and WER
    load_pretrained("audiosae", model="small", layer=6)   published Whisper SAEs (AudioSAE, FREUD)
    TrainSAEConfig                                 pydantic config, loadable from YAML (configs/)

Splicing an SAE into the model is on the model: `model.add_sae(sae)`, `model.saes([...])`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "activation_provider": "whisper_lens.sae.sources",
    "ActivationStream": "whisper_lens.sae.sources",
    "pcm_dataset": "whisper_lens.sae.sources",
    "saelens_dataset": "whisper_lens.sae.sources",
    "cache_activations": "whisper_lens.sae.sources",
    "train_sae": "whisper_lens.sae.train",
    "build_sae": "whisper_lens.sae.train",
    "DeadLatentResampler": "whisper_lens.sae.train",
    "TrainResult": "whisper_lens.sae.train",
    "TrainSAEConfig": "whisper_lens.sae.config",
    "evaluate": "whisper_lens.sae.evaluation",
    "load_pretrained": "whisper_lens.sae.pretrained",
    "audio_evaluator": "whisper_lens.sae.evaluation",
    "SAEEvaluation": "whisper_lens.sae.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'whisper_lens.sae' has no attribute {name!r}")
