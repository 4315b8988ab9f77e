"""Hooks stay live while transcribing: push the decoder's residual stream toward a word.

    uv run python examples/03_transcribe_with_a_steering_hook.py

The direction is the difference between the embeddings of " dog" and " cat", read straight from
the model (`tokens_to_residual_directions`), added at every decoding step to the residual stream
after decoder block 1.
"""

import torch

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples

model = HookedWhisper.from_pretrained("tiny.en")
clip = next(load_samples())  # "The birch canoe slid on the smooth planks."
direction = model.tokens_to_residual_directions(model.to_single_token(" dog")) \
    - model.tokens_to_residual_directions(model.to_single_token(" cat"))
direction = direction / direction.norm()


def steer(scale):
    def hook(resid, hook):
        return resid + scale * direction

    return [("decoder_blocks.1.hook_resid_post", hook)]


with torch.no_grad():
    print("clean:      ", model.transcribe(clip.audio)[0].text)
    for scale in (1.0, 2.0, 4.0):  # strong steering loops on " dog": cap the length
        text = model.transcribe(clip.audio, fwd_hooks=steer(scale), max_new_tokens=30)[0].text
        print(f"steer x{scale:>3}:", text)
