"""advcl-lite site (issue 31): the executed tour as static pages, checked in Chromium: the index and every
notebook page load, every image on them loads, every internal link resolves. Uses the tour CI just ran
(``ADVCL_TOUR_OUT``) or, without one, a one-notebook tour made here. Needs the ``docs`` extra (Sphinx,
myst-nb) and Debian's Chromium; skipped with the reason where either is missing, except where
``ADVCL_REQUIRE_DOCS=1`` / ``ADVCL_REQUIRE_BROWSER=1`` (``.ci/run`` sets both)."""
from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import threading
from pathlib import Path

import nbformat
import pytest

from advcl_lite.cli import main
from advcl_lite.site import SiteError, build_site

try:
    import myst_nb  # noqa: F401
    import sphinx  # noqa: F401
    DOCS = True
except ImportError:
    DOCS = False
if not DOCS and os.environ.get("ADVCL_REQUIRE_DOCS") == "1":
    raise RuntimeError('ADVCL_REQUIRE_DOCS=1 but Sphinx or myst-nb is missing; pip install -e ".[docs]"')
pytestmark = [pytest.mark.skipif(not DOCS, reason='the site needs the docs extra: pip install -e ".[docs]"'),
              pytest.mark.filterwarnings("ignore")]    # the theme's deprecation noise under Sphinx 9

PAGE_STATE = r"""(async () => {
  const all = [...document.images];
  const imgs = all.filter(i => i.src.startsWith(location.origin));      // the site's own images
  const external = all.filter(i => !i.src.startsWith(location.origin)).map(i => i.src);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
  const links = [...new Set([...document.querySelectorAll('a[href]')].map(a => a.href)
                 .filter(h => h.startsWith(location.origin)).map(h => h.split('#')[0]))];
  const dead = [];
  for (const h of links) { const r = await fetch(h, {method: 'GET'}); if (!r.ok) dead.push(h + ' ' + r.status); }
  return {title: document.title, images: imgs.length, broken, links: links.length, dead, external};
})()"""


def _fake_tour(folder: Path) -> Path:
    """A tour folder with one executed notebook holding a heading and a PNG figure."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 A figure\n\nText."),
                                         nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
                                             "display_data", data={"image/png": base64.b64encode(buf.getvalue()).decode()})])])
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "01_figure.ipynb")
    (folder / "summary.json").write_text(json.dumps({"preset": "smoke", "data": "sample", "headline": ["a line"],
                                                     "notebooks": [{"notebook": "01_figure", "status": "ok",
                                                                    "seconds": 1.5}]}))
    return folder


def test_the_site_builds_and_every_page_loads_its_images_and_links_in_chromium(tmp_path, capsys):
    """One build (a few seconds), then its files, the refusals, and every page in Chromium."""
    given = os.environ.get("ADVCL_TOUR_OUT")
    tour = Path(given) if given else _fake_tour(tmp_path / "tour")
    out = tmp_path / "site"
    build_site(tour, out)
    ok = [r["notebook"] for r in json.loads((tour / "summary.json").read_text())["notebooks"] if r["status"] == "ok"]
    assert ok and all((out / "notebooks" / f"{n}.html").exists() for n in ok)
    assert (out / "api.html").exists() and "advcl_lite.spectra" in (out / "api.html").read_text()
    index = (out / "index.html").read_text()
    assert all(f"notebooks/{n}.html" in index and f"/{n}.ipynb" in index for n in ok)   # page and download
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(SiteError, match="not an earlier site"):
        build_site(tour, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    rc = main(["site", "--tour", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")])
    assert rc == 2 and "not a tour folder" in capsys.readouterr().err
    from jupyterlab_browser import Browser, chromium_path, free_port
    chromium = chromium_path()
    if chromium is None:
        if os.environ.get("ADVCL_REQUIRE_BROWSER") == "1":
            raise RuntimeError("ADVCL_REQUIRE_BROWSER=1 but no Chromium was found")
        pytest.skip("the site was built and checked; its pages were not opened: no Chromium here "
                    "(Debian: apt-get install chromium)")
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = Browser(chromium, tmp_path / "profile")
    try:
        pages = ["index.html"] + [f"notebooks/{p.name}" for p in sorted((out / "notebooks").glob("*.html"))]
        for page in pages:
            browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/{page}")
            import time
            deadline = time.time() + 30
            while browser.js("document.readyState") != "complete" and time.time() < deadline:
                time.sleep(0.2)
            state = browser.js(PAGE_STATE)
            assert not state["broken"] and not state["dead"], (page, state)
            # the only image from elsewhere is the notebooks' "Open in Colab" badge (no network here to load it)
            assert all(u.startswith("https://colab.research.google.com/assets/") for u in state["external"]), state
            assert state["links"] > 0, page
            if page != "index.html":
                assert state["images"] > 0, (page, "a notebook page without its figures")
    finally:
        browser.close()
        server.shutdown()
