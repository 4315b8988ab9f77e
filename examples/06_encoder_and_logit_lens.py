"""Where does the transcript appear? The encoder lens and the logit lens on tiny.en.

    uv run python examples/06_encoder_and_logit_lens.py
"""

import pandas as pd

from whisper_lens import HookedWhisper
from whisper_lens.analysis import encoder_lens, logit_lens
from whisper_lens.data import load_samples

pd.set_option("display.width", 140)
model = HookedWhisper.from_pretrained("tiny.en")
clips = list(load_samples(limit=4))

# Decode from the residual stream after k encoder blocks (through the encoder's final layer norm).
lens = encoder_lens(model, clips, max_new_tokens=40)  # early layers decode to loops: cap them
lens["first transcript"] = [t[0] for t in lens.transcripts]
print(lens[["layer", "wer_vs_reference", "cross_entropy", "first transcript"]].round(3).to_string(index=False))

# Read the next token from each decoder layer through the final layer norm and the unembedding.
ll = logit_lens(model, model.prepare(clips))
print(ll.to_frame().round(3).to_string(index=False))
position = int(ll.mask[0].nonzero()[2])
print(f"top tokens after {model.to_str_tokens(model.prepare(clips[:1]).tokens[0])[: position + 1]}:")
for label, tokens in zip(ll.labels, ll.top_tokens[:, 0, position, :3].tolist()):
    print(f"  {label:8} {[model.tokenizer.decode([t]) for t in tokens]}")
