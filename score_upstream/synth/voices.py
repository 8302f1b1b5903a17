"""Synthetic speakers: an espeak-ng English voice, a voice variant, a speaking rate and a pitch.

Every speaker of a corpus gets a distinct (voice, variant) pair, so speakers differ in accent, timbre
and pitch; rate and pitch are drawn per speaker from the generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: espeak-ng's own English voices (the mbrola ones need extra packages and are left out).
BASE_VOICES: tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
MALE_VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5")
RATE_RANGE = (140, 185)
PITCH_RANGE = {"M": (25, 55), "F": (45, 75)}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker.

    Attributes:
        voice: espeak-ng ``-v`` argument, e.g. ``"en-gb-x-rp+f2"``.
        sex: ``"M"`` or ``"F"`` (from the variant).
        rate: words per minute.
        pitch: espeak-ng base pitch 0-99.
    """

    voice: str
    sex: str
    rate: int
    pitch: int

    @property
    def name(self) -> str:
        """A readable, unique label, e.g. ``en-gb-x-rp+f2/s160/p58``."""
        return f"{self.voice}/s{self.rate}/p{self.pitch}"


def all_voices() -> list[tuple[str, str]]:
    """Every (voice, sex) pair available, in a fixed order."""
    pairs = [(f"{b}+{v}", "M") for b in BASE_VOICES for v in MALE_VARIANTS]
    pairs += [(f"{b}+{v}", "F") for b in BASE_VOICES for v in FEMALE_VARIANTS]
    return pairs


def draw_speakers(n: int, rng: random.Random, exclude: frozenset[str] | set[str] = frozenset()) -> list[Speaker]:
    """``n`` speakers with pairwise distinct voices, alternating sexes where possible.

    Args:
        exclude: ``voice`` strings (e.g. ``"en-gb+f2"``) not to use, e.g. those of another corpus.

    Raises:
        ValueError: more speakers requested than distinct voices exist.
    """
    males = [p for p in all_voices() if p[1] == "M" and p[0] not in exclude]
    females = [p for p in all_voices() if p[1] == "F" and p[0] not in exclude]
    if n > len(males) + len(females):
        raise ValueError(f"{n} speakers requested but only {len(males) + len(females)} distinct voices exist"
                         + (f" outside the {len(exclude)} excluded" if exclude else ""))
    rng.shuffle(males)
    rng.shuffle(females)
    speakers = []
    for i in range(n):
        pool = females if (i % 2 and females) or not males else males
        voice, sex = pool.pop()
        speakers.append(Speaker(voice, sex, rng.randint(*RATE_RANGE), rng.randint(*PITCH_RANGE[sex])))
    return speakers
