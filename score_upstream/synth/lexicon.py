"""espeak-ng phoneme mnemonics -> stress-marked ARPAbet (the SUPERB PR inventory).

espeak-ng's ``-x`` output for English uses ASCII mnemonics close to Kirshenbaum (``aU`` for the vowel of
"house", ``@L`` for a syllabic l, ``t#`` for a flapped t). The table below maps each mnemonic of the
``en-us`` voice to one or more ARPAbet phones; a stress mark (``'`` primary, ``,`` secondary) in front of a
vowel sets the digit of that vowel's first ARPAbet phone, every other vowel gets 0. A mnemonic missing
from the table makes the word unmappable: it is dropped from the vocabulary, never written with an
unknown phone.
"""

from __future__ import annotations

import logging

from score_upstream.s3prl.phones import ARPABET_VOWELS, check_pronunciation
from score_upstream.synth.espeak import phonemize_words

logger = logging.getLogger(__name__)

# Vowel mnemonics -> ARPAbet vowel (+ r-colouring or a second vowel, unstressed).
_VOWELS: dict[str, tuple[str, ...]] = {
    "a": ("AE",), "aa": ("AE",), "a#": ("AH",), "A:": ("AA",), "A@": ("AA", "R"), "0": ("AA",),
    "aI": ("AY",), "aI@": ("AY", "AH"), "aI3": ("AY", "ER"), "aU": ("AW",), "aU3": ("AW", "ER"),
    "aU@": ("AW", "ER"), "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "@L": ("AH", "L"), "3": ("ER",),
    "3:": ("ER",), "V": ("AH",), "e": ("EH",), "E": ("EH",), "e@": ("EH", "R"), "eI": ("EY",),
    "i": ("IY",), "i:": ("IY",), "i@": ("IY", "AH"), "i@3": ("IH", "R"), "I": ("IH",), "I2": ("IH",),
    "I#": ("IH",), "O:": ("AO",), "O2": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"), "oU": ("OW",),
    "OI": ("OY",), "u:": ("UW",), "U": ("UH",), "U@": ("UH", "R"), "n-": ("AH", "N"),
    "m-": ("AH", "M"), "l-": ("AH", "L"), "r-": ("ER",),
}
_CONSONANTS: dict[str, tuple[str, ...]] = {
    "p": ("P",), "b": ("B",), "t": ("T",), "t#": ("T",), "t2": ("T",), "?": ("T",), "d": ("D",),
    "d#": ("D",), "k": ("K",), "g": ("G",), "f": ("F",), "v": ("V",), "T": ("TH",), "D": ("DH",),
    "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",), "h": ("HH",), "m": ("M",), "n": ("N",),
    "N": ("NG",), "l": ("L",), "r": ("R",), "w": ("W",), "j": ("Y",), "tS": ("CH",), "dZ": ("JH",),
    "x": ("K",), "W": ("W",),
}
# Markers that carry no phone: espeak-ng's palatalisation/linking signs and syllable separators.
_IGNORED = frozenset({";", "-", "_", "_:", "|", "||", "#"})
_STRESS = {"'": "1", ",": "2", "%": "0", "=": "1"}
_VOWEL_SET = frozenset(ARPABET_VOWELS)


class UnmappablePhoneme(ValueError):
    """An espeak-ng mnemonic with no ARPAbet mapping."""


def tokens_to_arpabet(tokens: list[str]) -> list[str]:
    """Convert one word's espeak-ng tokens (``["b", "'0", "t#", "@L"]``) to ARPAbet with stress digits.

    Raises:
        UnmappablePhoneme: a token that is neither in the tables nor an ignorable marker.
    """
    phones: list[str] = []
    prev_r_coloured = False
    for token in tokens:
        stress = "0"
        while token and token[0] in _STRESS:
            stress = _STRESS[token[0]]
            token = token[1:]
        if not token or token in _IGNORED:
            continue
        if token in _VOWELS:
            mapped = _VOWELS[token]
            for i, p in enumerate(mapped):
                phones.append(f"{p}{stress if i == 0 else '0'}" if p in _VOWEL_SET else p)
            prev_r_coloured = mapped[-1] in ("R", "ER")
        elif token in _CONSONANTS:
            if token == "r" and prev_r_coloured:
                # espeak-ng writes the linking r after an r-coloured vowel ("curious" -> U@ r): one R.
                prev_r_coloured = False
                continue
            phones.extend(_CONSONANTS[token])
            prev_r_coloured = False
        else:
            raise UnmappablePhoneme(f"espeak-ng mnemonic {token!r} has no ARPAbet mapping")
    if not phones:
        raise UnmappablePhoneme(f"no phones in {tokens}")
    return phones


def build_lexicon(words: list[str], voice: str = "en-us") -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Pronounce ``words`` with espeak-ng and map them to the SUPERB phone inventory.

    Args:
        words: lower-case vocabulary.
        voice: espeak-ng voice whose letter-to-sound rules define the pronunciations.

    Returns:
        ``(lexicon, dropped)``: upper-case word -> phones for every mappable word, and the words
        that could not be mapped (logged).
    """
    lexicon: dict[str, tuple[str, ...]] = {}
    dropped: list[str] = []
    for word, tokens in zip(words, phonemize_words(words, voice)):
        try:
            phones = tuple(tokens_to_arpabet(tokens))
            check_pronunciation(word.upper(), phones, where="espeak-ng lexicon")
        except (UnmappablePhoneme, ValueError) as e:
            logger.warning("dropping %r from the vocabulary: %s", word, e)
            dropped.append(word)
            continue
        lexicon[word.upper()] = phones
    return lexicon, dropped
