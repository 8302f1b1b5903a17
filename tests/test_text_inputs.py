"""Text inputs users hand us (lexicon, transcripts, QUESST language lists) in another encoding than UTF-8:
one error line naming the file and the byte offset, never a traceback."""

from __future__ import annotations

import shutil

import pytest

from score_upstream.s3prl.superb.pr.prepare import main as pr_prepare_main
from score_upstream.s3prl.superb.qbe.prepare import main as qbe_prepare_main
from tests.test_recipes import _mini_librispeech

LATIN1_WORD = "CAFÉ".encode("latin-1")  # 0xc9 is not UTF-8 on its own


@pytest.mark.parametrize("where", ["lexicon", "transcript"])
def test_pr_prepare_latin1_file_is_one_line(tmp_path, capsys, where):
    ls, lexicon = _mini_librispeech(tmp_path)
    if where == "lexicon":
        bad = lexicon
        bad.write_bytes(b"HELLO\tHH AH0 L OW1\n" + LATIN1_WORD + b"\tK AE0 F EY1\n")
        offset = len(b"HELLO\tHH AH0 L OW1\n") + 3
    else:
        bad = next((ls / "dev-clean").rglob("*.trans.txt"))
        bad.write_bytes(bad.read_bytes() + b"101-7-0009 " + LATIN1_WORD + b"\n")
        offset = len(bad.read_bytes()) - 2
    rc = pr_prepare_main(["--librispeech", str(ls), "--lexicon", str(lexicon), "--out", str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(bad) in err[0] and f"not UTF-8 text: byte offset {offset} " in err[0] and "0xc9" in err[0]
    assert not (tmp_path / "c.yaml").exists()


def test_qbe_prepare_latin1_language_list_is_one_line(tiny_corpus, tmp_path, capsys):
    root = tmp_path / "quesst14Database"
    shutil.copytree(tiny_corpus / "quesst14Database", root)
    lst = root / "scoring" / "language_key_utterances.lst"
    lst.write_bytes(lst.read_bytes() + b"quesst14Database/Audio/" + LATIN1_WORD + b".wav nnenglish\n")
    assert qbe_prepare_main([str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(lst) in err[0] and "not UTF-8 text" in err[0], err
