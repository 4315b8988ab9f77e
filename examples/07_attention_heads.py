"""Score every attention head, and find the alignment heads from word timings alone.

    uv run python examples/07_attention_heads.py
"""

import pandas as pd

from whisper_lens import HookedWhisper
from whisper_lens.analysis import compare_alignment_heads, find_alignment_heads, head_scores
from whisper_lens.data import load_samples, load_word_samples

pd.set_option("display.width", 140)
model = HookedWhisper.from_pretrained("tiny.en")
scores = head_scores(model, list(load_samples(limit=4)))
for stack, metric in (("encoder", "locality"), ("decoder", "prev_mass"), ("decoder", "bos_mass"),
                      ("cross", "monotonicity")):
    top = scores[scores["stack"] == stack].nlargest(3, metric)
    print(f"{stack:8} {metric:13}", ", ".join(f"L{r.layer}H{r.head}={getattr(r, metric):.2f}" for r in top.itertuples()))

words = list(load_word_samples(limit=8))  # sentences spoken a word at a time: boundaries known
found = find_alignment_heads(model, words)
print("alignment heads from word timings:", found)
print("against OpenAI's table:", compare_alignment_heads(found, model.alignment_heads))
