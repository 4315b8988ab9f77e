"""Published Whisper SAEs as SAELens `SAE`s: AudioSAE (Aparin et al., 2026) and FREUD (Sadov).

    sae = load_pretrained("audiosae", model="small", layer=6)      # downloads layer_6/ when online
    sae = load_pretrained("audiosae", path="Audio-SAE-Whisper-small/layer_6")
    sae = load_pretrained("freud", path="topkautoencoder_baseline")  # checkpoints/bestval.pth
    model = HookedWhisper.from_pretrained(sae.cfg.metadata.model_name)
    _, cache = model.run_with_cache(audio, names_filter=[sae.cfg.metadata.hook_name])

Each loader reproduces its release's own formulas exactly (checked in tests/test_pretrained_saes.py
against reimplementations written from the authors' code), with any normalisation folded into the
weights, and sets `cfg.metadata.hook_name` to the TransformerLens-style name of the activation
the SAE was trained on:

- AudioSAE (`layer_N/ae.pt` + `config.json`, a dictionary_learning BatchTopK SAE): `layer_N` is
  the output of the N-th encoder block (1-based) = `encoder_blocks.{N-1}.hook_resid_post`.
  At inference their code keeps units above one learned threshold θ (`encode(use_threshold=True)`),
  which is SAELens's JumpReLU with threshold θ everywhere. Without a stored θ, or with
  `inference="topk"`, the k largest units per frame are kept (SAELens TopK).
- FREUD (`checkpoints/bestval.pth` with `model` and `hparams`): `layer_name` `encoder.blocks.i`
  (openai-whisper's module, no `ln_post`) = `encoder_blocks.{i}.hook_resid_post`. TopK variant:
  SAELens TopK with untied, unnormalised decoder rows. L1 variant: a tied dictionary whose
  columns FREUD normalises on every call; the normalised columns are folded in (SAELens standard).

Where files come from: `path=` (a folder or file on disk), else `$WHISPER_LENS_PRETRAINED_DIR`
(holding `<repo name>/...` or `<owner>/<repo name>/...`), else the Hugging Face Hub.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from whisper_lens.errors import CheckpointError
from whisper_lens.names import get_act_name

ENV_DIR = "WHISPER_LENS_PRETRAINED_DIR"


@dataclass(frozen=True)
class Release:
    """One published SAE set: where it lives and which Whisper it reads."""

    repo_id: str
    whisper: str  # openai-whisper's model name
    layers: tuple[int, ...]  # AudioSAE: 1-based block outputs; FREUD: the 0-based block
    files: tuple[str, ...]  # per layer, `{layer}` filled in


AUDIOSAE: dict[str, Release] = {
    "small": Release("Egorgij21/Audio-SAE-Whisper-small", "small", tuple(range(1, 13)),
                     ("layer_{layer}/ae.pt", "layer_{layer}/config.json")),
    "large-v3": Release("Egorgij21/Audio-SAE-Whisper-large-v3", "large-v3", tuple(range(1, 33)),
                        ("layer_{layer}/ae.pt", "layer_{layer}/config.json")),
    "turbo": Release("Egorgij21/Audio-SAE-Whisper-large-v3-turbo", "turbo", tuple(range(1, 33)),
                     ("layer_{layer}/ae.pt", "layer_{layer}/config.json")),
}
AUDIOSAE["large-v3-turbo"] = AUDIOSAE["turbo"]

FREUD: dict[str, Release] = {
    "tiny-topk": Release("cherrvak/topkautoencoder_baseline", "tiny", (2,),
                         ("checkpoints/bestval.pth", "features.json")),
    "tiny-l1": Release("cherrvak/l1autoencoder_baseline", "tiny", (2,), ("checkpoints/bestval.pth", "features.json")),
    "large-v3-l1": Release("cherrvak/large_v3_l1", "large-v3", (16,), ("checkpoints/bestval.pth", "features.json")),
    "large-v1-topk": Release("cherrvak/large_v1_block_16_audioset_topk_16", "large-v1", (16,),
                             ("checkpoints/bestval.pth", "features.json")),
}

RELEASES = {"audiosae": AUDIOSAE, "freud": FREUD}


def load_pretrained(
    release: Literal["audiosae", "freud"],
    *,
    model: str | None = None,
    layer: int | None = None,
    path: str | os.PathLike | None = None,
    inference: Literal["threshold", "topk"] = "threshold",
    device: str = "cpu",
) -> Any:
    """A published Whisper SAE as a SAELens `SAE` with `cfg.metadata.hook_name` set.

    Args:
        release: "audiosae" or "freud".
        model: which SAE set: AudioSAE by Whisper name ("small", "large-v3", "turbo"); FREUD by
            run ("tiny-topk", "tiny-l1", "large-v3-l1", "large-v1-topk").
        layer: AudioSAE's 1-based layer (the output of that encoder block).
        path: a local folder or file instead of looking the release up.
        inference: AudioSAE only: "threshold" (their default, JumpReLU at θ) or "topk" (k per frame).
    """
    if release not in RELEASES:
        raise ValueError(f"unknown release {release!r}; choose one of {sorted(RELEASES)}")
    if release == "audiosae":
        files = _audiosae_files(model, layer, path)
        return audiosae_to_saelens(*files, inference=inference, device=device)
    return freud_to_saelens(*_freud_files(model, path), device=device)


# ------------------------------------------------------------------ finding the files
def _audiosae_files(model: str | None, layer: int | None, path: Any) -> tuple[Path, Path | None, int | None]:
    if path is not None:
        root = Path(path)
        if root.is_dir() and layer is not None and (root / f"layer_{layer}").is_dir():
            root = root / f"layer_{layer}"
        weights = root / "ae.pt" if root.is_dir() else root
        if not weights.is_file():
            raise FileNotFoundError(f"no AudioSAE weights at {weights}; point path= at a layer_N folder holding ae.pt")
        config = weights.parent / "config.json"
        found = re.fullmatch(r"layer_(\d+)", weights.parent.name)
        return weights, config if config.is_file() else None, layer if layer is not None else (
            int(found.group(1)) if found else None)
    rel = _release(AUDIOSAE, model, "audiosae")
    if layer is None or layer not in rel.layers:
        raise ValueError(f"AudioSAE for whisper-{rel.whisper} has layers {rel.layers[0]}..{rel.layers[-1]} (1-based: "
                         f"the output of that encoder block); pass layer=N")
    weights, config = (_fetch(rel, name.format(layer=layer)) for name in rel.files)
    return weights, config, layer


def _freud_files(model: str | None, path: Any) -> tuple[Path, Path | None]:
    if path is not None:
        root = Path(path)
        checkpoint = root / "checkpoints" / "bestval.pth" if root.is_dir() else root
        if root.is_dir() and not checkpoint.is_file() and (root / "bestval.pth").is_file():
            checkpoint = root / "bestval.pth"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no FREUD checkpoint at {checkpoint}; point path= at the run folder "
                                    "holding checkpoints/bestval.pth")
        features = next((p for p in (checkpoint.parent / "features.json", checkpoint.parent.parent / "features.json")
                         if p.is_file()), None)
        return checkpoint, features
    rel = _release(FREUD, model, "freud")
    checkpoint = _fetch(rel, rel.files[0])
    try:
        features: Path | None = _fetch(rel, rel.files[1])
    except CheckpointError:
        features = None
    return checkpoint, features


def _release(table: dict[str, Release], model: str | None, name: str) -> Release:
    if model not in table:
        raise ValueError(f"{name} has SAEs for model= {sorted(table)}; got {model!r}")
    return table[model]


def _fetch(rel: Release, filename: str) -> Path:
    """A release's file: from $WHISPER_LENS_PRETRAINED_DIR if it is there, else the Hub."""
    owner, name = rel.repo_id.split("/")
    root = os.environ.get(ENV_DIR)
    if root:
        for base in (Path(root) / owner / name, Path(root) / name):
            if (base / filename).is_file():
                return base / filename
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(rel.repo_id, filename))
    except Exception as err:  # offline, missing file, no huggingface_hub: say what to fetch and where
        raise CheckpointError(
            f"could not get {filename} of {rel.repo_id} ({type(err).__name__}: {err}). Online, it downloads from "
            f"https://huggingface.co/{rel.repo_id}. Offline, download that file on another machine and put it at "
            f"$WHISPER_LENS_PRETRAINED_DIR/{name}/{filename}, or pass path= to the folder.") from None


# ------------------------------------------------------------------ conversions
def _saelens_sae(kind: str, weights: dict[str, torch.Tensor], options: dict[str, Any], hook_name: str,
                 whisper: str | None, device: str) -> Any:
    from sae_lens import SAE

    d_in, d_sae = weights["W_enc"].shape
    cfg = {"architecture": kind, "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32", "device": device,
           "apply_b_dec_to_input": True, "normalize_activations": "none", **options,
           "metadata": {"hook_name": hook_name, "model_name": whisper, "model_class_name": "HookedWhisper",
                        "prepend_bos": False, "sample_rate": 16000}}
    sae = SAE.from_dict(cfg)
    state = {k: v.to(torch.float32).contiguous() for k, v in weights.items()}
    try:
        sae.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"the converted weights do not fit SAELens's {kind} SAE: {err}") from None
    return sae.to(device).eval()


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # FREUD pickles numpy scalars
    except Exception as err:
        raise CheckpointError(f"could not read {path} ({type(err).__name__}: {err}); download it again") from None


def _need(state: dict[str, Any], keys: tuple[str, ...], path: Path, layout: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an {layout} checkpoint: it lacks {missing} (has {sorted(state)[:8]})")


def audiosae_to_saelens(weights: Path, config: Path | None = None, layer: int | None = None, *,
                        inference: Literal["threshold", "topk"] = "threshold", whisper: str | None = None,
                        device: str = "cpu") -> Any:
    """An AudioSAE `ae.pt` (dictionary_learning BatchTopK layout) as a SAELens SAE."""
    state = _load_torch(Path(weights))
    _need(state, ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec"), Path(weights), "AudioSAE")
    cfg = json.loads(Path(config).read_text()) if config is not None else {}
    cfg = cfg.get("trainer", cfg)  # dictionary_learning nests the trainer's settings
    k = int(state["k"]) if "k" in state else cfg.get("k")
    if layer is None:
        layer = cfg.get("layer")
    if layer is None:
        raise ValueError(f"cannot tell which layer {weights} reads: pass layer=N (1-based, its layer_N folder)")
    converted = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"],
                 "W_dec": state["decoder.weight"].T, "b_dec": state["b_dec"]}
    d_in = converted["W_enc"].shape[0]
    if cfg.get("activation_dim", d_in) != d_in or cfg.get("dict_size", converted["W_enc"].shape[1]) != \
            converted["W_enc"].shape[1]:
        raise CheckpointError(f"{config} says activation_dim {cfg.get('activation_dim')} / dict_size "
                              f"{cfg.get('dict_size')} but {weights} holds {tuple(converted['W_enc'].shape)}")
    hook = get_act_name("resid_post", int(layer) - 1, "encoder")
    whisper = whisper or _whisper_of(cfg) or _whisper_by_width(d_in, AUDIOSAE)
    if inference == "threshold" and "threshold" in state:
        threshold = state["threshold"].reshape(-1).to(torch.float32)
        converted["threshold"] = threshold.expand(converted["W_enc"].shape[1]).clone()
        return _saelens_sae("jumprelu", converted, {}, hook, whisper, device)
    if k is None:
        raise CheckpointError(f"{weights} has no threshold and no k; cannot tell how sparse its codes are")
    return _saelens_sae("topk", converted, {"k": int(k), "rescale_acts_by_decoder_norm": False}, hook, whisper,
                        device)


def freud_to_saelens(checkpoint: Path, features: Path | None = None, *, device: str = "cpu") -> Any:
    """A FREUD `bestval.pth` (TopK or L1 autoencoder) as a SAELens SAE."""
    saved = _load_torch(Path(checkpoint))
    if not isinstance(saved, dict) or "model" not in saved or "hparams" not in saved:
        raise CheckpointError(f"{checkpoint} is not a FREUD checkpoint (a dict with 'model' and 'hparams')")
    state, hparams = saved["model"], saved["hparams"]
    info = json.loads(Path(features).read_text()) if features is not None else {}
    whisper_cfg = hparams.get("whisper_config", {})
    layer_name = info.get("layer_name") or whisper_cfg.get("layer_name")
    whisper = _openai_name(info.get("whisper_model") or whisper_cfg.get("model"))
    found = re.fullmatch(r"encoder\.blocks\.(\d+)", str(layer_name))
    if not found:
        raise CheckpointError(f"{checkpoint} reads {layer_name!r}; only encoder.blocks.N (a block's output) maps to "
                              "a whisper_lens hook")
    hook = get_act_name("resid_post", int(found.group(1)), "encoder")
    variant = hparams.get("autoencoder_variant")
    if variant == "topk" or "W_dec" in state:
        _need(state, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), Path(checkpoint), "FREUD TopK")
        k = (hparams.get("autoencoder_config") or {}).get("k")
        if k is None:
            raise CheckpointError(f"{checkpoint}'s hparams.autoencoder_config has no k")
        converted = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"],
                     "b_dec": state["b_dec"]}
        return _saelens_sae("topk", converted, {"k": int(k), "rescale_acts_by_decoder_norm": False}, hook, whisper,
                            device)
    _need(state, ("decoder.weight", "encoder_bias"), Path(checkpoint), "FREUD L1")
    dictionary = F.normalize(state["decoder.weight"].to(torch.float32), dim=0)  # [d_in d_sae], as FREUD's encode
    converted = {"W_enc": dictionary, "b_enc": state["encoder_bias"], "W_dec": dictionary.T,
                 "b_dec": torch.zeros(dictionary.shape[0])}
    return _saelens_sae("standard", converted, {}, hook, whisper, device)


_OPENAI_NAMES = ("tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v1",
                 "large-v2", "large-v3", "large-v3-turbo", "turbo", "large")


def _openai_name(name: str | None) -> str | None:
    """openai-whisper's name for a model named in a release's files ("whisper-small", "openai/whisper-tiny")."""
    if not name:
        return None
    bare = str(name).split("/")[-1].removeprefix("whisper-").removeprefix("whisper_")
    return "turbo" if bare == "large-v3-turbo" else bare if bare in _OPENAI_NAMES else str(name)


def _whisper_of(cfg: dict[str, Any]) -> str | None:
    for key in ("model_name", "whisper_model", "backbone", "lm_name"):
        if cfg.get(key):
            return _openai_name(cfg[key])
    return None


def _whisper_by_width(d_in: int, table: dict[str, Release]) -> str | None:
    widths = {"small": 768, "large-v3": 1280}
    return next((name for name, width in widths.items() if width == d_in and name in table), None)
