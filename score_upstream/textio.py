"""Reading the plain-text inputs users hand us (lexicons, transcripts, QUESST lists) as UTF-8.

LibriSpeech's lexicons and transcripts are ASCII, so UTF-8 reads them; a file saved in another encoding
(Latin-1 from an old tool, say) is one error naming the file and the first byte that is not UTF-8, rather
than a ``UnicodeDecodeError`` traceback from deep inside a data loader.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_utf8(path: str | os.PathLike, error: type[Exception] = ValueError) -> str:
    """The text of ``path`` decoded as UTF-8.

    Args:
        path: the file to read.
        error: the exception type raised for a file that is not UTF-8 (the caller's own error type, so its
            command-line entry point prints it as one line).

    Raises:
        ``error``: the file is not valid UTF-8; the message names the byte offset, its line and its value.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{path}: not UTF-8 text: byte offset {e.start} (line {line}) is 0x{data[e.start]:02x}; "
            "save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 OLD > NEW"
        ) from None
