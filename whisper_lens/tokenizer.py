"""openai-whisper's tokenizer with the Hugging Face attributes TransformerLens and SAELens read.

Whisper's tokenizer is tiktoken-based and ships with openai-whisper (so it works offline); TL and
SAELens talk to a `PreTrainedTokenizerBase` (`bos_token_id`, `pad_token_id`, `padding_side`,
`__call__(..., return_tensors="pt")`, `batch_decode`, `get_vocab`, ...). This adapter answers
those, with Whisper's meanings:

- `bos_token_id` is `<|startoftranscript|>` (the first token of every decoder prompt);
- `eos_token_id` and `pad_token_id` are `<|endoftext|>` (Whisper pads with it);
- special-token text such as `<|en|>` or `<|notimestamps|>` is parsed as the special token;
- openai-whisper's own attributes (`sot_sequence`, `eot`, `decode_with_timestamps`, ...) pass through.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch


class TokenizerOutput(dict):
    """What a Hugging Face tokenizer call returns: a dict that also reads as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class WhisperTokenizerAdapter:
    """A Hugging-Face-shaped face on `whisper.tokenizer.Tokenizer`."""

    def __init__(self, whisper_tokenizer: Any, *, name_or_path: str, model_max_length: int):
        self.whisper = whisper_tokenizer
        self.name_or_path = name_or_path
        self.model_max_length = model_max_length
        self.padding_side = "right"
        self.truncation_side = "right"
        self.add_bos_token = False  # the start-of-transcript prompt is added by `to_tokens`
        self.deprecation_warnings: dict[str, bool] = {}
        self.init_kwargs: dict[str, Any] = {}
        self.bos_token_id = whisper_tokenizer.sot
        self.eos_token_id = whisper_tokenizer.eot
        self.pad_token_id = whisper_tokenizer.eot
        self.sep_token_id = None
        self.unk_token_id = None
        self.bos_token = self.convert_ids_to_tokens(self.bos_token_id)
        self.eos_token = self.convert_ids_to_tokens(self.eos_token_id)
        self.pad_token = self.eos_token
        self.sep_token = None
        self.unk_token = None

    # ------------------------------------------------------------------ sizes and vocabularies
    @property
    def vocab_size(self) -> int:
        return self.whisper.encoding.n_vocab

    def __len__(self) -> int:
        return self.vocab_size

    @cached_property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.whisper.special_tokens)

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self.special_tokens.values())

    @property
    def all_special_tokens(self) -> list[str]:
        return list(self.special_tokens)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    @cached_property
    def _vocab(self) -> dict[str, int]:
        return {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None,
               **_: Any) -> Any:
        """Token ids of `text` (special-token text is parsed; no prompt is added)."""
        del add_special_tokens  # Whisper's prompt is several tokens; `to_tokens` adds it
        ids = self.whisper.encoding.encode(text, allowed_special="all")
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def __call__(
        self,
        text: str | Sequence[str],
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        **_: Any,
    ) -> TokenizerOutput:
        single = isinstance(text, str)
        rows = [self.encode(t, add_special_tokens) for t in ([text] if single else text)]
        if truncation:
            limit = max_length or self.model_max_length
            rows = [r[:limit] if self.truncation_side == "right" else r[-limit:] for r in rows]
        if return_tensors == "pt" or padding:
            width = max((len(r) for r in rows), default=0)
            pad = [[self.pad_token_id] * (width - len(r)) for r in rows]
            ones = [[1] * len(r) for r in rows]
            zeros = [[0] * len(p) for p in pad]
            if self.padding_side == "right":
                ids = [r + p for r, p in zip(rows, pad)]
                mask = [o + z for o, z in zip(ones, zeros)]
            else:
                ids = [p + r for r, p in zip(rows, pad)]
                mask = [z + o for o, z in zip(ones, zeros)]
        else:
            ids, mask = rows, [[1] * len(r) for r in rows]
        if return_tensors == "pt":
            return TokenizerOutput(input_ids=torch.tensor(ids, dtype=torch.long),
                                   attention_mask=torch.tensor(mask, dtype=torch.long))
        if single:
            return TokenizerOutput(input_ids=ids[0], attention_mask=mask[0])
        return TokenizerOutput(input_ids=ids, attention_mask=mask)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        """Text of the ids; timestamp tokens are dropped, as openai-whisper's `decode` does
        (`decode_with_timestamps` keeps them)."""
        ids = [int(t) for t in torch.as_tensor(token_ids).reshape(-1)] if not isinstance(token_ids, int) \
            else [token_ids]
        if skip_special_tokens:
            ids = [t for t in ids if t < self.whisper.eot]
        return self.whisper.decode(ids)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        return [self.decode(seq, skip_special_tokens=skip_special_tokens, **kwargs) for seq in sequences]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.whisper.decode_with_timestamps([ids])
        return [self.whisper.decode_with_timestamps([int(i)]) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            ids = self.encode(tokens)
            if len(ids) != 1:
                raise ValueError(f"{tokens!r} is {len(ids)} tokens, not one")
            return ids[0]
        return [self.convert_tokens_to_ids(t) for t in tokens]  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:
        """openai-whisper's own attributes (`sot`, `eot`, `sot_sequence`, `no_timestamps`, ...)."""
        if name == "whisper":
            raise AttributeError(name)
        return getattr(self.whisper, name)

    def __repr__(self) -> str:
        return f"WhisperTokenizerAdapter({self.name_or_path!r}, vocab_size={self.vocab_size})"
