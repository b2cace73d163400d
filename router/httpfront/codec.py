"""Text ↔ token ids on the router: the model directory's tokenizer and chat template, loaded with
transformers' AutoTokenizer (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`).

A router started without `--tokenizer` serves token ids only: requests must carry
`prompt_token_ids`, and responses carry `token_ids` with empty text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from epochserve.errors import ConfigError, InvalidRequestError

logger = logging.getLogger(__name__)


class TextCodec:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._decode_ids = _fast_decode(tokenizer)
        self._token_texts: dict[int, str] = {}  # token_text's answers: a token decodes alone one way

    @classmethod
    def load(cls, model_dir: Path) -> TextCodec:
        """Slow (transformers imports torch): call it off the event loop."""
        from transformers import AutoTokenizer

        try:
            return cls(AutoTokenizer.from_pretrained(model_dir))
        except (OSError, ValueError) as e:
            raise ConfigError(f"--tokenizer {model_dir}: {e}") from None

    def encode(self, text: str) -> list[int]:
        """A completion prompt, with the special tokens the tokenizer adds (as `generate` users do)."""
        return list(self._tokenizer.encode(text))

    def chat_prompt(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
        template_kwargs: dict[str, Any],
    ) -> list[int]:
        """The chat template rendered, then tokenized without adding special tokens (the template
        writes them). A template that refuses the messages (it raises) is the client's error."""
        try:
            text = self._tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **template_kwargs,
            )
        except Exception as e:  # jinja2's TemplateError, or an exception the template raised
            raise InvalidRequestError("messages", f"the chat template refused them: {e}") from None
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Output text: special tokens (end of turn) are not part of it."""
        return str(self._decode_ids(list(token_ids), skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        """One token as logprobs name it (special tokens included)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = str(self._decode_ids([token_id], skip_special_tokens=False))
        return text


def _fast_decode(tokenizer: Any) -> Any:
    """The Rust tokenizer's own decode where transformers' wrapper adds nothing to it (a fast
    tokenizer that does not clean up spaces): the wrapper's argument conversions cost more than
    the decoding itself, and the front decodes every streamed chunk."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False) or tokenizer.clean_up_tokenization_spaces:
        return tokenizer.decode
    return backend.decode


class NoTextCodec:
    """A router without a tokenizer: ids in, ids out."""

    def encode(self, text: str) -> list[int]:
        raise InvalidRequestError(
            "prompt", "this router has no tokenizer (--tokenizer): send prompt_token_ids"
        )

    def chat_prompt(
        self, messages: Any, tools: Any, add_generation_prompt: bool, template_kwargs: Any
    ) -> list[int]:
        raise InvalidRequestError(
            "messages", "this router has no tokenizer (--tokenizer): send prompt_token_ids"
        )

    def decode(self, token_ids: Sequence[int]) -> str:
        return ""

    def token_text(self, token_id: int) -> str:
        return ""


Codec = TextCodec | NoTextCodec


def load_codec(tokenizer: Path | None) -> Codec:
    """The front's codec: `tokenizer`'s, else (none given, or none usable there) token ids only.
    Slow (transformers imports torch): call it off the event loop."""
    if tokenizer is None:
        return NoTextCodec()
    try:
        return TextCodec.load(tokenizer)
    except Exception as exc:  # transformers raises many kinds; the router must still serve
        # `epochctl up` passes the model directory, which may hold no usable tokenizer (random or
        # token-id-only models): serve token ids (prompt_token_ids), say why text is refused.
        logger.warning("no tokenizer in %s (%s): HTTP takes token ids only", tokenizer, exc)
        return NoTextCodec()
