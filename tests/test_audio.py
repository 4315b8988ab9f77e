"""Unit tier: audio loading, masks, chunking, packing, datasets, and real-frame activations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import SAMPLES
from whisper_lens.audio import AudioBatch, load_audio, log_mel_spectrogram
from whisper_lens.data import (AudioExample, length_stats, load_folder, load_hf_librispeech, load_librispeech,
                               load_manifest, load_samples, shuffle)

SR = 16000


def tone(seconds: float, rate: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------------------- loading
def test_load_audio_resamples_with_a_band_limited_filter(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0, 44100, 1000), 44100)
    audio = load_audio(tmp_path / "a.wav")
    assert audio.dtype == np.float32 and len(audio) == SR
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) - 1000) <= 1  # the tone survives at 1 kHz


def test_load_audio_mixes_stereo_and_scales_pcm(tmp_path):
    left, right = tone(0.5), -tone(0.5) * 0.5
    sf.write(tmp_path / "s.flac", np.stack([left, right], 1), SR)
    np.testing.assert_allclose(load_audio(tmp_path / "s.flac"), (left + right) / 2, atol=1e-4)
    pcm = (tone(0.5) * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm), pcm / 32768.0, atol=1e-6)
    np.testing.assert_allclose(load_audio(np.stack([pcm, pcm])), pcm / 32768.0, atol=1e-6)  # [channels samples]


@pytest.mark.parametrize("make, error, message", [
    (lambda p: p / "missing.wav", FileNotFoundError, "does not exist"),
    (lambda p: (p / "empty.wav", sf.write(p / "empty.wav", np.zeros(0, np.float32), SR))[0], ValueError, "empty"),
    (lambda p: (p / "bad.xyz", (p / "bad.xyz").write_bytes(b"not audio"))[0], ValueError, "ffmpeg"),
])
def test_load_audio_errors_name_the_file_and_fix(tmp_path, monkeypatch, make, error, message):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = make(tmp_path)
    with pytest.raises(error, match=message) as err:
        load_audio(path)
    assert path.name in str(err.value)


def test_load_audio_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        load_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_audio(np.zeros((2, 2, 2), np.float32))
    sf.write(tmp_path / "a.wav", tone(0.1), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(tmp_path / "a.wav", sample_rate=8000)


def test_mel_of_a_batch_equals_each_item_alone():
    import whisper

    waves = torch.from_numpy(np.stack([tone(30.0), tone(30.0, freq=200) * 0.01]))
    batch = log_mel_spectrogram(waves)
    for i in range(2):
        torch.testing.assert_close(batch[i], whisper.log_mel_spectrogram(waves[i]))


# ---------------------------------------------------------------------------- batches
def test_masks_count_real_frames_rounding_up():
    batch = AudioBatch.from_audio([tone(2.0), tone(1.005), tone(30.0)])
    assert batch.mel.shape == (3, 80, 3000)
    assert batch.n_frames.tolist() == [200, 101, 3000]
    assert batch.audio_mask.sum(1).tolist() == [100, 51, 1500]
    assert not batch.audio_mask[0, 100:].any()


def test_long_clips_need_chunk_and_record_offsets():
    with pytest.raises(ValueError, match="chunk=True"):
        AudioBatch.from_audio([tone(65.0)])
    batch = AudioBatch.from_audio([tone(65.0), tone(1.0)], chunk=True)
    assert batch.offsets == (0.0, 30.0, 60.0, 0.0)
    assert batch.audio_mask.sum(1).tolist() == [1500, 1500, 250, 50]


def test_packing_fills_windows_and_records_spans():
    clips = [AudioExample(f"c{i}", tone(2.0 + i % 3), SR, f"text {i}") for i in range(20)]
    plain = AudioBatch.from_audio(clips)
    packed = AudioBatch.pack(clips, gap_s=0.2)
    assert len(packed) < len(plain)
    assert packed.real_fraction >= 5 * plain.real_fraction
    assert plain.audio_mask.sum() == packed.audio_mask.sum()  # every real frame kept, gaps not counted
    spans = [s for window in packed.spans for s in window]
    assert [s.id for s in spans] == [c.id for c in clips]
    first = packed.spans[0]
    assert first[1].start_s == pytest.approx(first[0].end_s + 0.2)
    assert packed.texts[0].startswith("text 0 text 1")


def test_prepare_tokenises_transcripts(tiny_model):
    clips = [AudioExample("a", tone(0.1), SR, "hello world"), AudioExample("b", tone(0.2), SR, "hi")]
    batch = tiny_model.prepare(clips)
    assert batch.text_start == len(tiny_model.sot_sequence())
    assert batch.transcript_mask.sum(1).tolist() == [2, 1]
    assert tiny_model.to_string(batch.tokens[1][batch.transcript_mask[1]]).strip() == "hi"
    with pytest.raises(ValueError, match="transcripts"):
        tiny_model.prepare([tone(0.1)], text=["a", "b"])


def test_iter_activations_yields_only_real_rows(tiny_model):
    window_s = tiny_model.dims.n_mel_frames / 100  # the tiny test model's window is 0.32 s
    clips = [AudioExample(f"c{i}", tone(window_s * (0.2 + 0.1 * i)), SR, "a b c") for i in range(5)]
    expected = int(AudioBatch.from_audio(clips, window_samples=int(window_s * SR)).audio_mask.sum())
    for pack in (False, True):
        rows = torch.cat(list(tiny_model.iter_activations(clips, "encoder_blocks.1.hook_resid_post",
                                                          batch_size=2, pack=pack)))
        assert rows.shape == (expected, tiny_model.dims.n_audio_state)
    dec = torch.cat(list(tiny_model.iter_activations(clips, "decoder_blocks.0.hook_resid_post", pack=False)))
    n_text = len(tiny_model.tokenizer.encode(" a b c"))
    assert dec.shape == (5 * n_text, tiny_model.dims.n_text_state)
    with pytest.raises(ValueError, match="two position axes"):
        next(tiny_model.iter_activations(clips, "encoder_blocks.0.attn.hook_pattern"))


def test_iter_activations_rows_equal_the_masked_cache(tiny_model):
    clips = [AudioExample(f"c{i}", tone(0.1 + 0.05 * i), SR, None) for i in range(3)]
    rows = next(tiny_model.iter_activations(clips, "hook_encoder_out", pack=False, batch_size=3))
    batch = tiny_model.prepare(clips)
    with torch.no_grad():
        full = tiny_model(batch.mel)
    torch.testing.assert_close(rows, full[batch.audio_mask])


# ---------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def librispeech_tree(tmp_path_factory):
    """A tiny LibriSpeech-layout tree built from the bundled samples."""
    root = tmp_path_factory.mktemp("LibriSpeech") / "dev-clean"
    rows = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines()][:6]
    for k, row in enumerate(rows):
        speaker, chapter = ("84", "121123") if k < 4 else ("174", "50561")
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{speaker}-{chapter}-{k:04d}"
        shutil.copy(SAMPLES / row["file"], folder / f"{utt}.flac")
        with open(folder / f"{speaker}-{chapter}.trans.txt", "a") as f:
            f.write(f"{utt} {row['text'].upper()}\n")
    return root, rows


def test_librispeech_layout_reads_back(librispeech_tree):
    root, rows = librispeech_tree
    examples = list(load_librispeech(root))
    assert [e.id for e in examples] == sorted(e.id for e in examples) and len(examples) == 6
    by_text = {r["text"].upper(): r for r in rows}
    for e in examples:
        original = sf.read(SAMPLES / by_text[e.text]["file"], dtype="float32")[0]
        np.testing.assert_allclose(e.audio, original, atol=1e-6)
    assert len(list(load_librispeech(root, limit=2))) == 2
    with pytest.raises(FileNotFoundError, match="trans.txt"):
        list(load_librispeech(root / "84"))


def test_hf_librispeech_columns(librispeech_tree):
    from datasets import Dataset

    root, _ = librispeech_tree
    local = list(load_librispeech(root))
    dataset = Dataset.from_list([{"id": e.id, "text": e.text,
                                  "audio": {"array": e.audio.astype(np.float64), "sampling_rate": SR}} for e in local])
    examples = list(load_hf_librispeech(dataset=dataset, limit=3))
    assert [e.id for e in examples] == [e.id for e in local[:3]]
    np.testing.assert_allclose(examples[0].audio, local[0].audio, atol=1e-6)


def test_folder_and_manifests(tmp_path):
    for name, text in (("b", "second"), ("a", None)):
        sf.write(tmp_path / f"{name}.wav", tone(0.3), SR)
        if text:
            (tmp_path / f"{name}.txt").write_text(text + "\n")
    folder = list(load_folder(tmp_path))
    assert [(e.id, e.text) for e in folder] == [("a", None), ("b", "second")]
    (tmp_path / "m.csv").write_text("path,text\nb.wav,from csv\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.wav", "text": "from jsonl", "id": "x"}) + "\n")
    assert [(e.id, e.text) for e in load_manifest(tmp_path / "m.csv")] == [("b", "from csv")]
    assert [(e.id, e.text) for e in load_manifest(tmp_path / "m.jsonl")] == [("x", "from jsonl")]
    (tmp_path / "f.csv").write_text("file,text\nb.wav,file column\n")  # scripts/make_samples.py's name
    assert [e.text for e in load_manifest(tmp_path / "f.csv")] == ["file column"]
    (tmp_path / "bad.csv").write_text("audio,text\nb.wav,x\n")
    with pytest.raises(ValueError, match="'path'"):
        list(load_manifest(tmp_path / "bad.csv"))


def test_shuffle_is_seeded_and_stats():
    examples = list(load_samples(limit=10))
    assert [e.id for e in shuffle(examples, seed=1)] == [e.id for e in shuffle(examples, seed=1)]
    assert [e.id for e in shuffle(examples, seed=1)] != [e.id for e in shuffle(examples, seed=2)]
    stats = length_stats(examples)
    assert stats.count == 10 and 1.0 < stats.mean_s < 4.0 and stats.window_fill < 0.15


def test_batch_helpers_can_skip_bad_items(tmp_path):
    items = [tone(0.5), tmp_path / "missing.wav", np.array([np.nan], np.float32), tone(0.2)]
    with pytest.raises(FileNotFoundError):
        AudioBatch.from_audio(items)
    with pytest.warns(UserWarning, match="skipped 2"):
        batch = AudioBatch.from_audio(items, skip_bad=True)
    assert len(batch) == 2 and batch.skipped == 2
    with pytest.warns(UserWarning):
        assert AudioBatch.pack(items, skip_bad=True).skipped == 2


def test_to_tokens_with_prompt_language_and_timestamps(tiny_model):
    tok = tiny_model.tokenizer
    tokens = tiny_model.to_tokens("hello", prompt="earlier words", append_eot=True)[0].tolist()
    assert tokens[0] == tok.sot_prev and tok.sot in tokens and tokens[-1] == tok.eot
    assert tiny_model.to_string(tokens[1:tokens.index(tok.sot)]).strip() == "earlier words"
    assert tok.no_timestamps not in tiny_model.to_tokens("hi", timestamps=True)[0].tolist()
    with pytest.raises(ValueError, match="English-only"):
        tiny_model.to_tokens("hola", language="es")
    from tests.conftest import DIMS, random_openai
    from whisper_lens import HookedWhisper

    multi = HookedWhisper.from_state_dict(DIMS["multilingual"], random_openai(DIMS["multilingual"]).state_dict())
    strs = multi.to_str_tokens(multi.to_tokens("hola", language="es", task="translate"))[0]
    assert strs[:4] == ["<|startoftranscript|>", "<|es|>", "<|translate|>", "<|notimestamps|>"]


def test_augment_speed_and_noise_variants():
    from whisper_lens.data import AudioExample, augment

    rng = np.random.default_rng(0)
    clip = AudioExample("c", (0.2 * rng.standard_normal(16000)).astype(np.float32), 16000, "some words")
    faster, slower, noisy = augment([clip], speeds=(1.25, 0.8), snr_db=(10.0,))
    assert (faster.id, slower.id, noisy.id) == ("c_speed1.25", "c_speed0.8", "c_snr10")
    assert len(faster.audio) == 12800 and len(slower.audio) == 20000  # length / speed
    assert all(v.text == "some words" and v.audio.dtype == np.float32 for v in (faster, slower, noisy))
    snr = 10 * np.log10(np.mean(clip.audio**2) / np.mean((noisy.audio - clip.audio) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)
    with pytest.raises(ValueError, match="positive"):
        list(augment([clip], speeds=(0,)))
