"""Hooks change outputs: zero-ablate each encoder block's attention and measure the loss.

    uv run python examples/02_hooks_and_ablation.py
"""

import torch

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples

model = HookedWhisper.from_pretrained("tiny.en")
clips = list(load_samples(limit=4))
tokens, mask = model.to_tokens([c.text for c in clips], append_eot=True, return_mask=True)
mask[:, : len(model.sot_sequence())] = False  # score the transcript, not the prompt
audio = [c.audio for c in clips]


def zero(activation, hook):
    return torch.zeros_like(activation)


with torch.no_grad():
    clean = model(audio, tokens, return_type="loss", loss_mask=mask).item()
    print(f"clean loss {clean:.3f} nats/token")
    for layer in range(model.dims.n_audio_layer):
        hook = f"encoder_blocks.{layer}.hook_attn_out"
        loss = model.run_with_hooks(audio, tokens, return_type="loss", loss_mask=mask, fwd_hooks=[(hook, zero)])
        print(f"  {hook:35} ablated: {loss.item():.3f}")
    cross = [(f"decoder_blocks.{l}.hook_cross_attn_out", zero) for l in range(model.dims.n_text_layer)]
    print("transcript with every cross-attention ablated:",
          repr(model.transcribe(audio[:1], fwd_hooks=cross, max_new_tokens=20)[0].text))
