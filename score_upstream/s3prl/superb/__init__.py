"""SUPERB assets that the s3prl 0.4.18 package does not ship, and their injection into s3prl.

How to use::

    from score_upstream.s3prl.superb import asset_path, install_s3prl_modules
    install_s3prl_modules()                 # before s3prl's `ctc` downstream imports its corpus
    cfg = asset_path("pr/config.yaml")      # packaged PR (libriphone) config

s3prl's ``ctc`` downstream imports ``.corpus.libriphone`` (``s3prl/downstream/ctc/data.py``), a
module its package lacks. :func:`install_s3prl_modules` registers our own dataset module under that
name in ``sys.modules``, so s3prl's files stay untouched. Importing this package is light.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["SuperbAssetError", "asset_path", "install_s3prl_modules", "ROOT"]

ROOT = Path(__file__).resolve().parent
"""Directory holding the packaged SUPERB assets (``asr/``, ``pr/``, ``qbe/``)."""

# s3prl module path -> our module that serves it. A value of None is a bare package we create.
_INJECTED: dict[str, str | None] = {
    "s3prl.downstream.ctc.corpus": None,
    "s3prl.downstream.ctc.corpus.libriphone": "score_upstream.s3prl.superb.pr.libriphone",
}


class SuperbAssetError(FileNotFoundError):
    """A packaged SUPERB asset is missing (a broken install, or a wrong asset name)."""


def asset_path(name: str) -> Path:
    """Return the path of a packaged asset, relative to ``score_upstream/s3prl/superb/``.

    Args:
        name: e.g. ``"pr/config.yaml"``, ``"pr/phones.txt"``, ``"qbe/config.yaml"``.

    Returns:
        The absolute path of the file.

    Raises:
        SuperbAssetError: the asset does not exist.
    """
    path = (ROOT / name).resolve()
    if ROOT not in path.parents or not path.is_file():
        have = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".yaml", ".txt", ".dict"})
        raise SuperbAssetError(
            f"{path}: packaged SUPERB asset {name!r} not found; known assets: {', '.join(have) or 'none'}"
            " (reinstall the package with `pip install -e .` if one of these is missing)"
        )
    return path


def install_s3prl_modules() -> list[str]:
    """Register the modules s3prl 0.4.18 imports by path but does not ship. Idempotent.

    After it, ``import s3prl.downstream.ctc.corpus.libriphone`` yields
    :mod:`score_upstream.s3prl.superb.pr.libriphone`, which is what s3prl's
    ``ctc/data.py`` (``from .corpus.libriphone import LibriPhoneDataset``) needs. s3prl itself is
    not imported here; the parent package ``s3prl.downstream.ctc`` is resolved lazily by Python's
    import system when the child is first imported.

    Returns:
        The module names newly added to ``sys.modules`` (empty on a second call).
    """
    added = []
    for name, target in _INJECTED.items():
        if name in sys.modules:
            continue
        if target is None:
            module = types.ModuleType(name, f"Package injected by {__name__}: s3prl 0.4.18 does not ship it.")
            module.__path__ = []  # a package, so its children resolve through sys.modules
            module.__package__ = name
        else:
            module = importlib.import_module(target)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        added.append(name)
    if added:
        logger.debug("injected into sys.modules: %s", ", ".join(added))
    return added
