"""The SUPERB phoneme-recognition inventory and the LibriSpeech lexicon format.

SUPERB PR maps LibriSpeech words to stress-marked ARPAbet: 15 vowels, each with stress 0 (unstressed),
1 (primary) or 2 (secondary), 24 consonants, plus ``SIL`` and ``SPN`` (spoken noise): 71 symbols.

The lexicon format (OpenSLR 11 ``librispeech-lexicon.txt``) is one pronunciation per line, the word
first, then its phones separated by spaces; a word may have several lines::

    ABOUT	AH0 B AW1 T
    HOUSE	HH AW1 S
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from score_upstream.textio import read_utf8

ARPABET_VOWELS: tuple[str, ...] = (
    "AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW",
)
ARPABET_CONSONANTS: tuple[str, ...] = (
    "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T",
    "TH", "V", "W", "Y", "Z", "ZH",
)
SPECIAL_PHONES: tuple[str, ...] = ("SIL", "SPN")

#: The 71 phones of SUPERB PR, sorted alphabetically (45 stressed vowels, 24 consonants, SIL, SPN).
SUPERB_PHONES: tuple[str, ...] = tuple(
    sorted([f"{v}{s}" for v in ARPABET_VOWELS for s in "012"] + list(ARPABET_CONSONANTS) + list(SPECIAL_PHONES))
)
_PHONE_SET = frozenset(SUPERB_PHONES)
_WORD_RE = re.compile(r"^[A-Z][A-Z']*$")


class LexiconError(ValueError):
    """A lexicon file or entry that does not follow the format or uses a phone outside the inventory."""


def is_phone(symbol: str) -> bool:
    """True when ``symbol`` is one of the 71 SUPERB phones."""
    return symbol in _PHONE_SET


def check_pronunciation(word: str, phones: tuple[str, ...] | list[str], where: str = "lexicon") -> None:
    """Raise :class:`LexiconError` unless ``word`` is upper case and every phone is in the inventory."""
    if not _WORD_RE.match(word):
        raise LexiconError(f"{where}: word {word!r} is not an upper-case word (A-Z and apostrophes)")
    if not phones:
        raise LexiconError(f"{where}: word {word!r} has an empty pronunciation")
    bad = [p for p in phones if p not in _PHONE_SET]
    if bad:
        raise LexiconError(
            f"{where}: word {word!r} uses phones {bad} outside the 71-phone SUPERB inventory "
            f"(stress-marked ARPAbet, e.g. AH0, HH, SIL); fix the entry or drop the word"
        )


def read_lexicon(path: str | os.PathLike, strict: bool = True) -> dict[str, list[tuple[str, ...]]]:
    """Read a LibriSpeech-format lexicon.

    Args:
        path: the lexicon file (``WORD<TAB or spaces>PH1 PH2 ...`` per line).
        strict: check every phone against :data:`SUPERB_PHONES`.

    Returns:
        word -> list of pronunciations (tuples of phones) in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise LexiconError(f"{path}: lexicon file not found")
    lexicon: dict[str, list[tuple[str, ...]]] = {}
    for lineno, line in enumerate(read_utf8(path, LexiconError).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise LexiconError(f"{path}:{lineno}: expected 'WORD<TAB>PH1 PH2 ...', found {line.rstrip()!r}")
        word, phones = fields[0], tuple(fields[1:])
        if strict:
            check_pronunciation(word, phones, where=f"{path}:{lineno}")
        lexicon.setdefault(word, []).append(phones)
    return lexicon


def write_lexicon(path: str | os.PathLike, lexicon: dict[str, list[tuple[str, ...]] | tuple[str, ...]]) -> Path:
    """Write ``lexicon`` (word -> one pronunciation or a list of them) sorted by word, tab-separated."""
    path = Path(path)
    lines = []
    for word in sorted(lexicon):
        prons = lexicon[word]
        if prons and isinstance(prons[0], str):
            prons = [tuple(prons)]
        for phones in prons:
            check_pronunciation(word, phones, where=str(path))
            lines.append(f"{word}\t{' '.join(phones)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path
