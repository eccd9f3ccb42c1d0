"""MkDocs hook: the configuration reference page is ``config/README.md``.

``config/README.md`` is generated from the config schema (the command is named at its
top) and a test keeps the two in step, so the site shows it as it is, read at build
time: never a hand-made copy that could go stale.
"""

from __future__ import annotations

from pathlib import Path

PAGE = "reference/configuration.md"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    source = Path(config["config_file_path"]).parent / "config" / "README.md"
    text = source.read_text(encoding="utf-8")
    note = (
        '\n!!! info "Generated"\n'
        "    This page is `config/README.md`, generated from the config schema and read when the\n"
        "    site is built. `snakemake -n` checks a config against the same schema.\n"
    )
    # after the first heading, so the page keeps config/README.md's title
    first, _, rest = text.partition("\n")
    return f"{first}\n{note}\n{rest}"
