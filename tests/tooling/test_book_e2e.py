"""End to end: build the site from the committed notebooks and read a chapter in headless Chromium.

Checks what a reader sees: the math is typeset by the bundled MathJax, the figures are there, and the
page makes no request that leaves 127.0.0.1. The build here does not execute notebooks (nbval already
ran them); `make book` is the strict, executing build.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHAPTER = "book/ch01_attention_gpt"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-default-apps", "--disable-extensions"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    message = "Chromium is not installed: run `make browser` (apt-get install chromium) to run this test"
    if os.environ.get("MINILLM_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the book without executing notebooks (strict: warnings are errors)."""
    out = tmp_path_factory.mktemp("site")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(out),
           "--config", str(config_path), "--all", "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _render(url: str, tmp_path: Path) -> tuple[str, list[tuple[str, str]]]:
    """The DOM after scripts ran, and (url, initiator) of every request the page itself made.

    Chromium's net log marks each request a page causes with the page's origin as initiator; the
    browser's own background traffic (sign-in, update checks) has none, and is not the book's doing.
    """
    netlog = tmp_path / "netlog.json"
    cmd = [_chromium(), *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={netlog}",
           "--virtual-time-budget=20000", "--dump-dom", url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    events = json.loads(netlog.read_text(errors="replace"))["events"]
    requests = {(e["params"]["url"], e["params"]["initiator"]) for e in events
                if "url" in e.get("params", {}) and str(e["params"].get("initiator", "")).startswith("http")}
    return result.stdout, sorted(requests)


def test_static_pages_reference_no_outside_scripts_or_styles(site):
    outside = re.compile(r'<(script|link|img)[^>]+(src|href)="(https?:)?//(?!127\.0\.0\.1)[^"]+"')
    pages = list(site.rglob("*.html"))
    assert any(p.name == "ch01_attention_gpt.html" for p in pages)
    for page in pages:
        found = outside.findall(page.read_text(encoding="utf-8"))
        assert not found, f"{page.relative_to(site)} loads from outside: {found[:3]}"


def test_chapter_page_typesets_math_shows_figures_and_stays_local(server, site, tmp_path):
    dom, urls = _render(f"{server}/{CHAPTER}.html", tmp_path)
    # MathJax (bundled, offline) replaced the TeX with rendered containers.
    assert dom.count("<mjx-container") >= 10, "math was not typeset by MathJax"
    assert "<mjx-merror" not in dom, "MathJax reported a TeX error"
    # The figures from the executed notebook are on the page, and their files are real PNGs.
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', dom)
    assert len(images) >= 3, f"expected the chapter's figures, found {images}"
    for src in images:
        png = (site / "book" / src).resolve()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{src} is not a PNG"
    # Numbers glued from the run made it into the prose.
    assert re.search(r"validation loss of\s*(<[^>]+>\s*)*[0-9]\.[0-9]{3}", dom), "glued validation loss missing"
    # Every request the page made (stylesheets, scripts, MathJax, fonts, figures) went to the local server.
    assert len(urls) >= 10, f"the net log recorded too few page requests: {urls}"
    assert any("mathjax" in u.lower() for u, _ in urls), "MathJax was not loaded from the local site"
    outside = sorted({u for u, _ in urls if urlparse(u).hostname != "127.0.0.1"})
    assert not outside, f"the page requested resources outside 127.0.0.1: {outside[:5]}"


def test_every_toc_page_was_built(site):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    for f in files:
        assert (site / f"{f}.html").exists(), f"{f} missing from the site"
