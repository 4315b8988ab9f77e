"""Word timestamps: openai-whisper's algorithm, on HookedWhisper's hooks.

On the same log-mel and tokens the timings equal openai-whisper's `add_word_timestamps` exactly;
end to end, on the bundled speech, every word is within 20 ms of openai-whisper's
`transcribe(word_timestamps=True)` wherever the two decode the same words."""

from __future__ import annotations

import pytest
import torch
import whisper
from whisper.timing import add_word_timestamps

from tests.conftest import needs_tiny_en
from whisper_lens.loading.convert import hooked_to_openai
from whisper_lens.timing import heads_of


def _openai_twin(model) -> whisper.model.Whisper:
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**model.dims.to_dict()))
    ref.load_state_dict(hooked_to_openai(model.state_dict()))
    ref.register_buffer("alignment_heads", model.alignment_heads.to_sparse(), persistent=False)
    return ref.eval()


def test_words_on_a_random_model_are_ordered_and_inside_the_clip(tiny_model):
    audio = 0.1 * torch.randn(16000 * 2 // 10).numpy()  # the test model's window is 16 positions
    [t] = tiny_model.transcribe([audio], word_timestamps=True, alignment_heads=[(0, 1), (1, 2)], max_new_tokens=6)
    assert t.words is not None and "".join(w.word for w in t.words).strip() == t.text.strip()
    for w in t.words:
        assert 0 <= w.start <= w.end and 0 <= w.probability <= 1
    [plain] = tiny_model.transcribe([audio], max_new_tokens=6)
    assert plain.words is None and plain.tokens == t.tokens  # timings do not change the transcript
    with pytest.raises(ValueError, match="do not exist"):
        heads_of(tiny_model, [(5, 0)])
    with pytest.raises(ValueError, match="encoder_out"):
        tiny_model.transcribe(encoder_out=torch.zeros(1, 16, 64), word_timestamps=True)


@needs_tiny_en
def test_alignment_equals_openai_on_the_same_input(real_model, samples):
    from whisper_lens.timing import window_word_timings

    ref, tok = _openai_twin(real_model), whisper.tokenizer.get_tokenizer(False)
    n_words = 0
    for row in samples[:8]:
        batch = real_model.prepare([row["audio"]])
        [t] = real_model.transcribe(batch)
        frames = int(batch.n_samples[0]) // 160
        segment = [dict(seek=0, start=0.0, end=len(row["audio"]) / 16000, tokens=list(t.tokens))]
        add_word_timestamps(segments=segment, model=ref, tokenizer=tok, mel=batch.mel[0], num_frames=frames,
                            last_speech_timestamp=0.0)
        ours, _ = window_word_timings(real_model, t.tokens, batch.mel[0], frames)
        theirs = segment[0]["words"]
        assert [w["word"] for w in theirs] == [w.word for w in ours]
        for a, b in zip(theirs, ours):
            assert (a["start"], a["end"]) == (b.start, b.end)
            assert a["probability"] == pytest.approx(b.probability, abs=1e-4)
        n_words += len(ours)
    assert n_words > 40


@needs_tiny_en
def test_word_timestamps_within_20_ms_of_openai_transcribe(real_model, samples):
    ref = _openai_twin(real_model)
    ours = real_model.transcribe([r["audio"] for r in samples], word_timestamps=True)
    compared = 0
    for row, t in zip(samples, ours):
        r = whisper.transcribe(ref, row["audio"], word_timestamps=True, fp16=False, language="en", temperature=0.0)
        theirs = [w for s in r["segments"] for w in s["words"]]
        if [w["word"] for w in theirs] != [w.word for w in t.words]:
            continue  # openai's transcribe decodes with timestamp tokens: sometimes other words
        compared += 1
        for a, b in zip(theirs, t.words):
            assert abs(a["start"] - b.start) <= 0.02 + 1e-6 and abs(a["end"] - b.end) <= 0.02 + 1e-6, (row["id"], a, b)
    assert compared >= 25, f"only {compared} of {len(samples)} clips decoded the same words"
