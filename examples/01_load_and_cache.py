"""Load tiny.en (offline), cache every activation for one clip, and look at a few.

    uv run python examples/01_load_and_cache.py
"""

import torch

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples

model = HookedWhisper.from_pretrained("tiny.en")
print(model, "<-", model.source)

clip = next(load_samples())
tokens = model.to_tokens(clip.text)
print(model.to_str_tokens(tokens)[0])

with torch.no_grad():
    logits, cache = model.run_with_cache([clip.audio], tokens)
print(f"{len(cache)} activations cached")
for name in ["hook_audio_embed", "encoder_blocks.2.hook_resid_post", "encoder_blocks.0.attn.hook_pattern",
             "hook_encoder_out", "decoder_blocks.3.cross_attn.hook_pattern", "unembed.hook_out"]:
    print(f"  {name:45} {tuple(cache[name].shape)}")

# The decoder's residual stream, split into what wrote it (embeddings, self-, cross-attention, MLP),
# and each component's direct effect on the logit of the token that comes next.
parts, labels = cache.decompose_resid(stack="decoder", return_labels=True)
next_tokens = tokens[:, 1:]
attrs = cache.logit_attrs(parts[:, :, :-1], next_tokens, pos_slice=(0, -1))  # [component batch text_pos]
top = attrs[:, 0].mean(-1).argsort(descending=True)[:5]
print("components that most raise the correct next token:", [labels[i] for i in top])
