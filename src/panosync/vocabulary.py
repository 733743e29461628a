"""The words a model with a tiny word vocabulary knows, and a warning for the prompt's words it does not.

The bundled pocket model's tokenizer is a byte-level BPE whose merges spell out about twenty whole
words (landscape, mountains, snowy, sunset …); any other word falls apart into single letters, which
the model was never trained on, so "a city street at night" silently draws sunset hills. Where a
model's tokenizer is such a small word-level vocabulary, the front ends warn (a warning, not an
error: the model still makes a panorama) and name the words it knows. A model with a real
vocabulary (CLIP's 49,408 tokens) gets no warning: `known_words` is None for it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

# At most this many whole words of two letters or more: a vocabulary this small is a word list, not a language.
SMALL_VOCABULARY = 1000
WORD_SUFFIX = "</w>"
SHOWN_WORDS = 12  # unknown words named in the warning; the rest are counted
SHOWN_WORD_CHARACTERS = 40
_WORD = re.compile(r"[^\W\d_]+")


def _tokenizer_file(source) -> Path | None:
    """The tokenizer.json of a model folder (a models.ModelSource of kind bundled or folder, or a path)."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
    elif getattr(source, "kind", None) in ("bundled", "folder"):
        folder = Path(source.ref)
    else:
        return None
    path = folder / "tokenizer" / "tokenizer.json"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=16)
def _known_words_of(path: str, mtime_ns: int) -> frozenset[str] | None:
    try:
        model = json.loads(Path(path).read_text(encoding="utf-8")).get("model") or {}
        vocabulary = model.get("vocab") or {}
        suffix = model.get("end_of_word_suffix") or WORD_SUFFIX
    except (OSError, ValueError, AttributeError):  # a damaged tokenizer is the loader's to report
        return None
    if not isinstance(vocabulary, dict):
        return None
    words = frozenset(token[: -len(suffix)].lower() for token in vocabulary
                      if isinstance(token, str) and token.endswith(suffix) and len(token) - len(suffix) >= 2
                      and _WORD.fullmatch(token[: -len(suffix)]))
    return words if 0 < len(words) <= SMALL_VOCABULARY and len(vocabulary) <= 4 * SMALL_VOCABULARY else None


def known_words(source) -> frozenset[str] | None:
    """The whole words of a model whose tokenizer is a small word-level vocabulary (pocket's); None
    for any other model (a real vocabulary, a hub model, no tokenizer.json)."""
    path = _tokenizer_file(source)
    if path is None:
        return None
    return _known_words_of(str(path), path.stat().st_mtime_ns)


def unknown_words(prompt: str, known: frozenset[str]) -> list[str]:
    """The words of `prompt` (letters only, two or more; lower case) that are not in `known`, each once,
    in the prompt's order. Single letters are tokens of their own, and so known."""
    unknown: dict[str, None] = {}
    for word in _WORD.findall(str(prompt).lower()):
        if len(word) >= 2 and word not in known:
            unknown[word] = None
    return list(unknown)


def _cut(word: str) -> str:
    return word if len(word) <= SHOWN_WORD_CHARACTERS else word[: SHOWN_WORD_CHARACTERS - 1] + "…"


def vocabulary_warning(source, prompts, model_name: str) -> str | None:
    """One line, "pocket does not know the words: city, street (it knows: …)", when the model's tokenizer
    is a small word list and some prompt holds a word outside it; None otherwise."""
    known = known_words(source)
    if known is None:
        return None
    if isinstance(prompts, str):
        prompts = [prompts]
    unknown: dict[str, None] = {}
    for prompt in prompts or []:
        if isinstance(prompt, str):
            unknown.update(dict.fromkeys(unknown_words(prompt, known)))
    if not unknown:
        return None
    words = [_cut(word) for word in list(unknown)[:SHOWN_WORDS]]
    more = f" and {len(unknown) - SHOWN_WORDS:,} more" if len(unknown) > SHOWN_WORDS else ""
    name = _cut(str(model_name))
    return (f"{name} does not know the words: {', '.join(words)}{more} (it knows: {', '.join(sorted(known))}); "
            f"it spells them out letter by letter, which it was not trained on.")


def warn_unknown_words(source, prompts, model_name: str) -> None:
    """Print `vocabulary_warning` to stderr as a panosync warning, when there is one."""
    import sys

    warning = vocabulary_warning(source, prompts, model_name)
    if warning is not None:
        print(f"panosync: warning: {warning}", file=sys.stderr)
