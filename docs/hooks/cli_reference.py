"""MkDocs hook: the command-line reference, rendered from the ``wsiseg`` argument parser.

``docs/reference/cli.md`` holds a marker comment; at build time it is replaced by
``wsiseg --help`` and, for each subcommand of ``wsiseg.cli.build_parser()``, its
``format_help()`` in a code block. The page therefore always matches the installed
``wsiseg`` (build the site from an environment where the package is installed, e.g.
``pip install -e .``).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PAGE = "reference/cli.md"
MARKER = "<!-- cli-reference -->"
WIDTH = 100  # help text wrap width, fixed so the page does not depend on the terminal


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help at $COLUMNS (via shutil.get_terminal_size)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _fenced(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text.rstrip()}\n{fence}\n"


def _build_parser(root: Path) -> argparse.ArgumentParser:
    """``wsiseg.cli.build_parser()``; from ``src/`` when wsiseg is not installed (its
    dependencies still have to be)."""
    try:
        from wsiseg.cli import build_parser
    except ModuleNotFoundError as err:
        if err.name != "wsiseg":
            raise
        sys.path.insert(0, str(root / "src"))
        from wsiseg.cli import build_parser
    return build_parser()


def render(root: Path) -> str:
    """Markdown: the top-level help, then one section per subcommand."""
    with _columns(WIDTH):
        parser = _build_parser(root)
        parts = ["## wsiseg\n", _fenced(parser.format_help())]
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                parts.append(f"## wsiseg {name}\n")
                if helps.get(name):
                    parts.append(f"{helps[name][0].upper()}{helps[name][1:]}.\n")
                parts.append(_fenced(sub.format_help()))
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE}: the marker {MARKER} is missing")
    return markdown.replace(MARKER, render(Path(config["config_file_path"]).parent))
