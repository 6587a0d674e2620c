"""Prompt token estimates.

The scheduler needs a prompt's length in tokens before any tokenizer of the model has run.
Pass your model's tokenizer (``Config(tokenizer=lambda text: len(tok.encode(text)))``) for
exact counts; otherwise :func:`estimate_tokens` is used.
"""

from __future__ import annotations

import math
import re

__all__ = ["estimate_tokens"]

# Scripts written without spaces, where BPE vocabularies of current LLMs spend about one
# token per character (Han ideographs, kana, Hangul syllables, CJK punctuation and
# full-width forms).
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
    "\U00020000-\U0003134f]"
)
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """Estimate how many tokens ``text`` takes, without a tokenizer.

    Rule (documented, deterministic):

    * each CJK character (Han, kana, Hangul, CJK punctuation, full-width forms) counts
      as one token;
    * the rest is split into words and punctuation marks; a word of ``n`` characters
      counts as ``ceil(n / 4)`` tokens (BPE vocabularies average about four characters of
      English per token), each punctuation mark as one.

    So ``"生成一段技术文档"`` is 8 tokens and ``"Write a short technical document."`` is 11.
    The empty string is 0 tokens.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    cjk = len(_CJK.findall(text))
    rest = _CJK.sub(" ", text) if cjk else text
    tokens = cjk
    for piece in _WORD.findall(rest):
        tokens += math.ceil(len(piece) / 4) if piece[0].isalnum() or piece[0] == "_" else 1
    return tokens
