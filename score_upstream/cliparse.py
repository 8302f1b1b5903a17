"""The argument parser every ``score-*`` console script uses: one way to show defaults, examples and errors.

Usage::

    from score_upstream.cliparse import ScoreArgumentParser

    p = ScoreArgumentParser(prog="score-x", description="What it does.", examples=["score-x in.pt --out out/"])
    p.add_argument("--out", default="out", help="output folder")        # --help shows: output folder [out]
    p.add_alias("--outdir", "--out")                                     # old name: accepted, one-line notice
    args = p.parse_args()

What it adds to :class:`argparse.ArgumentParser`:

* every option with a default shows it the way the shell recipes do, in brackets at the end of its help;
* an ``Examples:`` block after the options (``examples``), and no reStructuredText markup in any help text;
* a wrong invocation is one line, ``error: PROG: ...``, exit status 2; an unknown option names the nearest
  known one (``did you mean --out?``);
* :meth:`ScoreArgumentParser.add_alias`: an old option name that still works, with a one-line notice.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys

_MARKUP = [(re.compile(r":[a-z]+:`~?([^`]*)`"), r"\1"), (re.compile(r"``([^`]*)``"), r"\1"),
           (re.compile(r"::\n"), ":\n")]


def strip_markup(text: str) -> str:
    """``x`` and :func:`f` -> x and f; a reStructuredText ``::`` at a line end -> ``:``."""
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


def nearest(word: str, choices: list[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not found:
        stem = word.split("=", 1)[0]
        found = [c for c in choices if c.startswith(stem) or stem.startswith(c)][:1]
    return found[0] if found else None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; each option's default in brackets, the shell recipes' style."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "%(default)" not in text and not text.rstrip().endswith("]")
                and default is not None and default is not argparse.SUPPRESS
                and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                            argparse._HelpAction, argparse._VersionAction))
                and default != []):
            text += " [%(default)s]"
        return text


class ScoreArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` with examples, bracketed defaults, one-line errors and suggestions."""

    def __init__(self, *args, examples: list[str] | None = None, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        if examples:
            kwargs["epilog"] = "Examples:\n" + "\n".join(f"  {e}" for e in examples)
        if kwargs.get("description"):
            kwargs["description"] = strip_markup(kwargs["description"])
        super().__init__(*args, **kwargs)
        self._aliases: dict[str, str] = {}

    def add_alias(self, old: str, new: str) -> None:
        """Accept ``old`` as a deprecated spelling of ``new`` (a one-line notice on stderr when used)."""
        self._aliases[old] = new

    def format_help(self) -> str:
        return strip_markup(super().format_help())

    def format_usage(self) -> str:
        return strip_markup(super().format_usage())

    def _known_options(self) -> list[str]:
        return sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        renamed = []
        for a in args:
            name, eq, value = a.partition("=")
            if name in self._aliases:
                print(f"warning: {self.prog}: {name} is deprecated; use {self._aliases[name]}", file=sys.stderr)
                a = self._aliases[name] + eq + value
            renamed.append(a)
        return super().parse_known_args(renamed, namespace)

    def error(self, message: str):
        """One line on stderr, exit status 2; an unknown option names the nearest known one."""
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            first = m.group(1).split()[0]
            hint = nearest(first.split("=", 1)[0], self._known_options()) if first.startswith("-") else None
            what = "unknown option" if first.startswith("-") else "unexpected argument"
            message = f"{what} {first}" + (f"; did you mean {hint}?" if hint else "")
        message = " ".join(message.split())
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")
