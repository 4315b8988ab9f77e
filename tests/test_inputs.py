"""Bad input is refused at the boundary with a message that names it and the fix; nothing is
silently wrong. Each test reproduces a failure the project once had (issue 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import make_inputs
from whisper_lens.audio import load_audio
from whisper_lens.errors import AudioInputError, HookOutputError, UnknownHookError


@pytest.fixture
def wave(tiny_model) -> np.ndarray:
    window = tiny_model.dims.n_mel_frames * 160
    return (0.1 * np.random.default_rng(0).standard_normal(window // 2)).astype(np.float32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_arrays_are_refused_by_forward(tiny_model, wave, bad):
    broken = torch.from_numpy(wave.copy())[None]
    broken[0, 10] = bad
    with pytest.raises(AudioInputError, match="NaN or infinite"):
        tiny_model(broken)
    mel, _ = make_inputs(tiny_model.dims, batch=1)
    mel[0, 0, 0] = bad
    with pytest.raises(AudioInputError, match="NaN or infinite"):
        tiny_model.run_with_cache(mel)


@pytest.mark.parametrize("stop", [10, -10, 99, 3])
def test_stop_at_layer_out_of_range_is_refused(tiny_model, stop):
    mel, tokens = make_inputs(tiny_model.dims, batch=1)
    with pytest.raises(ValueError, match="outside"):
        tiny_model(mel, tokens, stop_at_layer=stop)
    assert tiny_model(mel, tokens, stop_at_layer=-2).shape == (1, tokens.shape[1], tiny_model.dims.n_text_state)


def test_hook_returning_another_shape_names_the_hook(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims, batch=1)
    with pytest.raises(HookOutputError, match="encoder_blocks.0.hook_resid_post"):
        tiny_model.run_with_hooks(mel, tokens, fwd_hooks=[("encoder_blocks.0.hook_resid_post", lambda a, hook: a[:, :-1])])
    with pytest.raises(UnknownHookError):
        tiny_model.run_with_hooks(mel, tokens, fwd_hooks=[("encoder_blocks.0.hook_resid_pots", lambda a, hook: a)])


def test_arrays_at_another_rate_take_sample_rate(tiny_model):
    rng = np.random.default_rng(1)
    at_44k = (0.1 * rng.standard_normal(9000)).astype(np.float32)
    resampled = load_audio(at_44k, sample_rate=44100)
    ours = tiny_model.transcribe([at_44k], sample_rate=44100, max_new_tokens=4)[0].tokens
    assert ours == tiny_model.transcribe([resampled], max_new_tokens=4)[0].tokens
    torch.testing.assert_close(tiny_model.prepare(at_44k, sample_rate=44100).mel, tiny_model.prepare(resampled).mel)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64])
def test_integer_arrays_are_int16_pcm_everywhere(tiny_model, wave, dtype):
    pcm = np.round(wave * 32768).astype(dtype)
    expected = tiny_model.prepare(pcm.astype(np.float32) / 32768).mel
    torch.testing.assert_close(tiny_model.prepare(pcm).mel, expected)  # transcribe's path
    window = tiny_model.dims.n_mel_frames * 160
    padded = np.zeros(window, dtype=dtype)
    padded[: len(pcm)] = pcm
    torch.testing.assert_close(tiny_model.to_mel(torch.from_numpy(padded)[None]), expected)  # forward's path
    with pytest.raises(AudioInputError, match="int16 PCM"):
        tiny_model.prepare((pcm.astype(np.int64) * 65536))


def test_audio_longer_than_a_window_is_not_cut_silently(tiny_model):
    window = tiny_model.dims.n_mel_frames * 160
    long = torch.zeros(1, 2 * window)
    with pytest.raises(AudioInputError, match="chunk=True"):
        tiny_model.run_with_cache(long)
    assert len(tiny_model.prepare(long[0].numpy(), chunk=True)) == 2


def test_channels_last_arrays_are_not_read_as_thousands_of_clips(tiny_model, wave):
    stereo = np.stack([wave, wave], axis=1)  # [samples channels]
    with pytest.raises(AudioInputError, match=r"\[samples channels\]"):
        tiny_model.transcribe(stereo)
    with pytest.raises(AudioInputError, match=r"\[samples channels\]"):
        tiny_model.run_with_cache(torch.from_numpy(wave)[:, None])


def test_one_record_is_one_item(tiny_model, wave):
    from whisper_lens.data import AudioExample

    clip = AudioExample("one", wave, 16000, "the birch canoe")
    batch = tiny_model.prepare(clip)
    assert len(batch) == 1 and batch.texts == ["the birch canoe"]
    torch.testing.assert_close(tiny_model.with_audio(clip).audio.encoder_out, tiny_model.encode(batch.mel))


def test_paths_are_accepted(tiny_model, wave, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    assert isinstance(path, Path)
    torch.testing.assert_close(tiny_model.prepare(path).mel, tiny_model.prepare(wave).mel, atol=1e-4, rtol=0)
    assert tiny_model.transcribe(path, max_new_tokens=2)[0].tokens == tiny_model.transcribe(
        [wave], max_new_tokens=2)[0].tokens


def test_empty_file_is_called_empty(tiny_model, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty") as err:
        tiny_model.prepare(empty)
    assert "ffmpeg" not in str(err.value)


def test_an_sae_of_the_wrong_width_is_refused_when_added(tiny_model):
    from sae_lens import SAE

    sae = SAE.from_dict(dict(architecture="standard", d_in=32, d_sae=64, dtype="float32", device="cpu",
                             metadata=dict(hook_name="encoder_blocks.0.hook_resid_post")))
    with pytest.raises(ValueError, match="holds 64"):
        tiny_model.add_sae(sae)
    assert tiny_model.hook_width("encoder_blocks.0.attn.hook_z") == 64
    assert tiny_model.hook_width("decoder_blocks.1.mlp.hook_post") == 256
    assert tiny_model.hook_width("decoder_blocks.1.cross_attn.hook_pattern") is None


def test_docs_error_table_is_what_users_see():
    from whisper_lens.errors_table import render_markdown

    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "errors.md").read_text() == render_markdown(), \
        "regenerate with: uv run python -m whisper_lens.errors_table > docs/errors.md"
