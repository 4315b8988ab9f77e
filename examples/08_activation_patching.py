"""Activation patching: noise over one word, then patch the clean run back in, a piece at a time.

    uv run python examples/08_activation_patching.py
"""

import numpy as np

from whisper_lens import HookedWhisper
from whisper_lens.analysis import patch_encoder_time, patch_heads, patching_setup
from whisper_lens.data import load_word_samples

model = HookedWhisper.from_pretrained("tiny.en")
clip = next(load_word_samples())  # "The birch canoe slid on the smooth planks.", word boundaries known
word = clip.words[2]
noisy = clip.audio.copy()
a, b = int(word.start * 16000), int(word.end * 16000)
noisy[a:b] = 0.3 * np.random.default_rng(0).standard_normal(b - a).astype(np.float32)
print(f"noise over {word.word!r} at {word.start:.2f}-{word.end:.2f} s")

setup = patching_setup(model, clip.audio, noisy, clip.text)
print("decoder input:", model.to_str_tokens(setup.tokens[0]),
      "answers (clean, corrupted):", [model.tokenizer.decode([t]) for t in setup.answers])

by_time = patch_encoder_time(model, setup, bin_s=0.25)  # [layer time_bin], 1 = clean restored
print(by_time.to_frame().round(2).to_string())
print(patch_heads(model, setup, stack="cross").to_frame().round(2).to_string())
