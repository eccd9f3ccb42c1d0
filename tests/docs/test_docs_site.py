"""The documentation site builds without warnings and every page renders in a browser.

Builds ``mkdocs.yml`` with ``mkdocs build --strict`` into a temporary folder, serves it
with ``python -m http.server`` on a free localhost port, and opens every page in headless
Chromium: each page shows its title (H1) and article, none is a 404, and every link
to another page of the site (and every stylesheet, script and image) resolves to a file of
the built site, anchors included. One screenshot of the landing page must be a non-blank PNG.

Skips, saying why, when MkDocs (with Material and mkdocstrings) or Chromium is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from support.paths import ROOT

DOCS_PACKAGES = {
    "mkdocs": "mkdocs>=1.6",
    "material": "mkdocs-material>=9.5",
    "mkdocstrings_handlers.python": "mkdocstrings[python]>=0.26",
}


def _missing_docs_packages() -> list[str]:
    missing = []
    for module, requirement in DOCS_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # parent package absent
            found = False
        if not found:
            missing.append(requirement)
    return missing


def _chromium_binary() -> str | None:
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(candidate)
        if path:
            return path
    return None


pytestmark = [
    pytest.mark.skipif(
        bool(_missing_docs_packages()),
        reason=f"documentation tools not installed: pip install {' '.join(repr(r) for r in _missing_docs_packages())}",
    ),
    pytest.mark.skipif(
        _chromium_binary() is None,
        reason="headless Chromium is not installed (/usr/bin/chromium or chromium on PATH; Debian: apt-get install -y chromium)",
    ),
]


class _Page(HTMLParser):
    """What the checks need from a page: H1 text, article, ids, and the URLs it refers to."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.h1: list[str] = []
        self.article = False
        self.ids: set[str] = set()
        self.links: list[str] = []  # <a href>
        self.resources: list[str] = []  # stylesheets, scripts, images
        self._in_h1 = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "h1":
            self._in_h1 += 1
            self.h1.append("")
        elif tag == "article":
            self.article = True
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "link" and a.get("href") and a.get("rel") in ("stylesheet", "icon"):
            self.resources.append(a["href"])
        elif tag in ("script", "img") and a.get("src"):
            self.resources.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1" and self._in_h1:
            self._in_h1 -= 1

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.h1[-1] += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _h1(page: _Page) -> str:
    # Material's permalink anchor adds a "¶" inside the heading
    return " ".join(page.h1[0].replace("¶", "").split()) if page.h1 else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*args: str, profile: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([_chromium_binary(), *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    log = built.stdout + built.stderr
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    assert (out / "index.html").is_file()
    return out


@pytest.fixture(scope="module")
def server(site):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            pytest.fail(f"python -m http.server did not answer on {base}")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pages(site: Path) -> list[Path]:
    """Every page of the site: its HTML files outside assets/ and search/, 404.html aside."""
    return sorted(
        p
        for p in site.rglob("*.html")
        if p.name != "404.html" and p.relative_to(site).parts[0] not in ("assets", "search")
    )


def _target(site: Path, base: str, url: str) -> Path | None:
    """The built file a same-site URL serves, or None for a URL of another site."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not url.startswith(base):
        return None
    path = site / unquote(parts.path[len(urlsplit(base).path) :])
    return path / "index.html" if url.split("#")[0].split("?")[0].endswith("/") or path.is_dir() else path


def test_every_page_renders_in_chromium_and_its_links_resolve(site, server, tmp_path):
    pages = _pages(site)
    expected = {
        "index.html",
        "getting-started/index.html",
        "how-to/own-slides/index.html",
        "reference/cli/index.html",
        "reference/configuration/index.html",
        "reference/api/index.html",
        "explanation/how-it-works/index.html",
    }
    assert expected <= {p.relative_to(site).as_posix() for p in pages}

    def render(page: Path) -> tuple[Path, subprocess.CompletedProcess]:
        url = urljoin(server, page.relative_to(site).as_posix().removesuffix("index.html"))
        return page, _chromium(
            "--dump-dom", url, profile=tmp_path / f"profile-{page.relative_to(site).as_posix().replace('/', '_')}"
        )

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        rendered = list(pool.map(render, pages))

    ids: dict[Path, set[str]] = {}  # anchors of each built page, parsed once

    problems = []
    for page, result in rendered:
        name = page.relative_to(site).as_posix()
        url = urljoin(server, name.removesuffix("index.html"))
        if result.returncode != 0 or "<html" not in result.stdout:
            problems.append(f"{name}: chromium exited {result.returncode}: {result.stderr[-500:]}")
            continue
        dom = _parse(result.stdout)
        title = _h1(dom)
        if not title or title != _h1(_parse(page.read_text(encoding="utf-8"))):
            problems.append(
                f"{name}: H1 {title!r} in the browser, {_h1(_parse(page.read_text(encoding='utf-8')))!r} in the file"
            )
        if "404" in title or "Error code: 404" in result.stdout:
            problems.append(f"{name}: a 404 page")
        if not dom.article:
            problems.append(f"{name}: no <article> (main content) in the rendered page")
        for href in dom.links + dom.resources:
            absolute = urljoin(url, href)
            target = _target(site, server, absolute)
            if target is None:
                continue  # another site (GitHub, snakemake.readthedocs.io, ...)
            if not target.is_file():
                problems.append(f"{name}: link {href!r} -> {target.relative_to(site)} does not exist in the built site")
                continue
            fragment = urlsplit(absolute).fragment
            if fragment and target.suffix == ".html" and target not in ids:
                ids[target] = _parse(target.read_text(encoding="utf-8")).ids
            if fragment and target.suffix == ".html" and fragment not in ids[target]:
                problems.append(f"{name}: link {href!r}: no id {fragment!r} in {target.relative_to(site)}")
    assert not problems, "\n".join(problems)


def test_generated_reference_pages_hold_the_generated_text(site):
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for stage in ("demo", "convert", "patches", "train", "predict", "report", "info"):
        assert f"wsiseg {stage}" in cli
    assert "usage: wsiseg convert" in cli
    config = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "predict.threshold" in config and "train.encoder_weights" in config
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in (
        "wsiseg.convert.convert_slide",
        "wsiseg.predict.predict_slide",
        "wsiseg.rle.encode",
        "wsiseg.modelcard",
    ):
        assert f'id="{name}"' in api, name


def test_landing_page_screenshot_is_a_non_blank_png(site, server, tmp_path):
    np = pytest.importorskip("numpy")
    image_module = pytest.importorskip("PIL.Image")
    shot = tmp_path / "landing.png"
    result = _chromium(
        f"--screenshot={shot}",
        "--window-size=1280,900",
        "--virtual-time-budget=3000",
        server,
        profile=tmp_path / "profile-shot",
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with image_module.open(shot) as img:
        assert img.size == (1280, 900)
        pixels = np.asarray(img.convert("RGB"))
    # the header bar, the navigation and the text: many colours, far from one flat fill
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert pixels.std() > 20
