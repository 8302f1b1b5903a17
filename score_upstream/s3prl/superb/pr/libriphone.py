"""LibriSpeech with phone targets for SUPERB phoneme recognition (s3prl's ``ctc`` downstream).

s3prl builds it through ``s3prl.downstream.ctc.corpus.libriphone`` once
:func:`score_upstream.s3prl.superb.install_s3prl_modules` has run::

    from score_upstream.s3prl.superb import install_s3prl_modules
    install_s3prl_modules()
    from s3prl.downstream.ctc.corpus.libriphone import LibriPhoneDataset

    ds = LibriPhoneDataset(["dev-clean"], tokenizer, 1, path="data/LibriSpeech",
                           lexicon=["data/librispeech-lexicon.txt"])

Words become phones through the lexicon files (OpenSLR 11 ``librispeech-lexicon.txt`` plus optional
g2p lexicons, earlier files win). A word found in none of them is an error listing the words, since a
silently dropped word would shift every later phone of the utterance.

Example input lines::

    dev-clean/84/121123/84-121123.trans.txt:   84-121123-0000 GO DO YOU HEAR
    librispeech-lexicon.txt:                   HEAR<TAB>HH IY1 R
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from torch.utils.data import Dataset

from score_upstream.s3prl import phones as phones_lib
from score_upstream.audio import audio_info
from score_upstream.textio import read_utf8

logger = logging.getLogger(__name__)

LEXICON_HINT = (
    "get librispeech-lexicon.txt from OpenSLR 11 (https://www.openslr.org/11/) and, for words it lacks, "
    "g2p lexicons such as librispeech-lexicon-200k-g2p.txt / librispeech-lexicon-allothers-g2p.txt; "
    "pass them with --lexicon"
)


class LibriPhoneError(ValueError):
    """Bad PR data: missing directory or lexicon, unknown words, unknown phones."""


def read_lexicon(paths: Sequence[str | os.PathLike]) -> dict[str, list[str]]:
    """Merge lexicon files into one pronunciation per word; earlier files and earlier lines win.

    Args:
        paths: lexicon files in priority order (format of :func:`score_upstream.s3prl.phones.read_lexicon`).

    Returns:
        Upper-case word -> list of phones (all in the 71-phone SUPERB inventory).

    Raises:
        LibriPhoneError: no file given, a file missing, or a file without a single entry.
        score_upstream.s3prl.phones.LexiconError: a malformed line or a phone outside the inventory.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise LibriPhoneError(f"no lexicon given: {LEXICON_HINT}")
    lexicon: dict[str, list[str]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise LibriPhoneError(f"{path}: lexicon not found; {LEXICON_HINT}")
        entries = phones_lib.read_lexicon(path, strict=True)
        if not entries:
            raise LibriPhoneError(f"{path}: lexicon holds no 'WORD PH1 PH2 ...' line; {LEXICON_HINT}")
        for word, prons in entries.items():
            lexicon.setdefault(word.upper(), list(prons[0]))
        logger.info("lexicon %s: %d words", path, len(entries))
    return lexicon


def read_split(root: str | os.PathLike, split: str) -> list[tuple[str, Path, list[str]]]:
    """List one LibriSpeech split from its ``*.trans.txt`` files.

    Args:
        root: LibriSpeech root (holding ``split/``).
        split: e.g. ``"dev-clean"``.

    Returns:
        ``(utterance_id, flac_path, words)`` sorted by utterance id.

    Raises:
        LibriPhoneError: the split directory is missing or holds no transcript.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise LibriPhoneError(f"{split_dir}: LibriSpeech split directory not found; check the LibriSpeech root")
    items = []
    for trans in sorted(split_dir.rglob("*.trans.txt")):
        for line in read_utf8(trans, LibriPhoneError).splitlines():
            fields = line.split()
            if fields:
                items.append((fields[0], trans.parent / f"{fields[0]}.flac", [w.upper() for w in fields[1:]]))
    if not items:
        raise LibriPhoneError(f"{split_dir}: no *.trans.txt transcript found under it")
    return sorted(items, key=lambda x: x[0])


def missing_words(word_lists: Iterable[Sequence[str]], lexicon: dict[str, list[str]]) -> Counter:
    """Count the words of ``word_lists`` that the lexicon lacks."""
    return Counter(w for words in word_lists for w in words if w not in lexicon)


def describe_missing(missing: Counter, lexicon_paths: Sequence[str | os.PathLike], limit: int = 8) -> str:
    """One line naming the missing words (most frequent first) and what to do."""
    shown = ", ".join(f"{w} (x{c})" for w, c in missing.most_common(limit))
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    files = ", ".join(str(p) for p in lexicon_paths)
    return (
        f"{len(missing)} word(s) missing from the lexicon [{files}]: {shown}{more}; "
        f"add a g2p lexicon covering them ({LEXICON_HINT})"
    )


_FRAMES: dict[tuple[int, int, int, int], int] = {}


def audio_frames(path: str | os.PathLike) -> int:
    """Samples in the audio file ``path``, read from its header once per process and version of the file.

    s3prl's ``ctc`` downstream builds its training set again in every epoch; reading every header again
    cost ~35 ms an epoch on the demo's 160 files. The key is the file's device, inode, size and
    modification time, so a rewritten file is read again.
    """
    try:
        st = os.stat(path)
    except OSError:
        return audio_info(path)[0]  # says what is wrong with the path
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FRAMES:
        _FRAMES[key] = audio_info(path)[0]
    return _FRAMES[key]


def words_to_phones(words: Sequence[str], lexicon: dict[str, list[str]]) -> list[str]:
    """Concatenate the pronunciations of ``words`` (upper case; every word must be in the lexicon)."""
    return [p for w in words for p in lexicon[w]]


class LibriPhoneDataset(Dataset):
    """LibriSpeech utterances with phone-token targets, as s3prl's ``ctc/data.py`` builds and batches them.

    s3prl calls ``LibriPhoneDataset(kwargs['train'] or kwargs[split], tokenizer, bucket_size, **corpus)``
    and its ``collect_audio_batch`` expects each item to be ``(audio_path, token_ids)``, or, when
    ``bucket_size > 1``, a list of such tuples of similar duration (longest first).

    Args:
        split: split name(s) under ``path``, e.g. ``["train-clean-100"]``.
        tokenizer: s3prl text encoder (``WordTextEncoder`` over the 71 SUPERB phones); its ``encode``
            appends the end-of-sentence id, as s3prl's own corpora do.
        bucket_size: utterances per item (1 = one tuple per item).
        path: LibriSpeech root.
        lexicon: lexicon files, earlier files win.
        ascending: sort buckets shortest first instead of longest first.
        **kwargs: the rest of s3prl's corpus config (name, bucketing, batch_size, ...), ignored.

    Raises:
        LibriPhoneError: missing root/split/lexicon, words missing from the lexicon, or phones that
            the vocabulary lacks.
    """

    def __init__(self, split, tokenizer, bucket_size: int, path=None, lexicon=(), ascending: bool = False, **kwargs):
        if path is None:
            raise LibriPhoneError("downstream_expert.corpus.path is not set: give the LibriSpeech root")
        splits = [split] if isinstance(split, str) else list(split)
        lex = read_lexicon(lexicon)
        items = [it for s in splits for it in read_split(path, s)]
        missing = missing_words((words for _, _, words in items), lex)
        if missing:
            raise LibriPhoneError(f"{path} {'+'.join(splits)}: " + describe_missing(missing, lexicon))
        vocab = set(getattr(tokenizer, "_vocab_list", []))
        entries = []
        for utt, audio, words in items:
            phones = words_to_phones(words, lex)
            unknown = sorted(set(phones) - vocab) if vocab else []
            if unknown:
                raise LibriPhoneError(
                    f"{utt}: phones {unknown} from the lexicon are not in the vocabulary "
                    f"(downstream_expert.text.vocab_file); use a lexicon in the 71-phone SUPERB ARPAbet"
                )
            entries.append((audio_frames(audio), str(audio), tokenizer.encode(" ".join(phones))))
        entries.sort(key=lambda e: e[0], reverse=not ascending)
        pairs = [(audio, tokens) for _, audio, tokens in entries]
        self.bucket_size = max(1, int(bucket_size))
        if self.bucket_size == 1:
            self.items = pairs
        else:
            self.items = [pairs[i : i + self.bucket_size] for i in range(0, len(pairs), self.bucket_size)]
        logger.info("libriphone %s: %d utterances, %d items", "+".join(splits), len(pairs), len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]
