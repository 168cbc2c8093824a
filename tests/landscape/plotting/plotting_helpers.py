"""Helpers of the plotting tests: surface files in the analysis.md layout (via landscape.store)."""

from __future__ import annotations

import numpy as np

from landscape.store import open_surface_file


def bowl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An anisotropic quadratic bowl, (ny, nx) with rows along y."""
    xx, yy = np.meshgrid(x, y)
    return 0.1 + xx**2 + 3.0 * yy**2


def write_surface(
    path,
    *,
    nx: int = 9,
    ny: int | None = 6,
    func=bowl,
    nan_cells=(),
    undone_cells=(),
    trajectory=None,
    attrs=None,
    test: bool = True,
):
    """Write a complete surface file; returns the (ny, nx) train_loss written."""
    x = np.linspace(-1.0, 1.0, nx)
    y = None if ny is None else np.linspace(-0.5, 0.75, ny)
    if y is None:
        loss = 0.1 + x**2
    else:
        loss = func(x, y)
    fields = ["train_loss", "train_acc"] + (["test_loss", "test_acc"] if test else [])
    vals = {
        "train_loss": loss,
        "train_acc": 100.0 / (1.0 + loss),
        "test_loss": loss * 1.2 + 0.05,
        "test_acc": 95.0 / (1.0 + loss),
    }
    for cell in nan_cells:
        vals["train_loss"][cell] = np.nan
    undone = {tuple(np.atleast_1d(c)) for c in undone_cells}
    with open_surface_file(
        path,
        x=x,
        y=y,
        fields=fields,
        identity={"test": str(path)},
        attrs=dict(attrs or {}),
        trajectory=trajectory,
    ) as w:
        shape = loss.shape
        idx = [i for i in range(loss.size) if np.unravel_index(i, shape) not in undone]
        results = [{f: float(vals[f].ravel()[i]) for f in fields} for i in idx]
        w.write(idx, results)
    return loss


# --- headless Chromium --------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_HOOK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('error: ' + (e.message || (e.target && e.target.src) || e));
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__errors.push('rejection: ' + e.reason);
});
(function () {
  var orig = console.error;
  console.error = function () {
    window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return orig.apply(console, arguments);
  };
})();
window.alert = function (m) { window.__errors.push('alert: ' + m); };
window.addEventListener('load', function () {
  setTimeout(function () {
    var pre = document.createElement('pre');
    pre.id = '__test_errors';
    pre.textContent = JSON.stringify(window.__errors);
    document.body.appendChild(pre);
  }, 3000);
});
</script>"""


def find_chromium():
    """Path of a Chromium executable, or None."""
    import shutil

    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def instrument(html: str) -> str:
    """Insert the error-recording hook as the first thing the page runs."""
    i = html.find("<head>")
    if i < 0:
        return _HOOK + html
    i += len("<head>")
    return html[:i] + _HOOK + html[i:]


def run_chromium(chromium: str, page, workdir, *, budget_ms: int = 20000) -> tuple[str, str]:
    """Load ``page`` in headless Chromium; return (DOM after the budget, stderr log)."""
    import subprocess

    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-unsafe-swiftshader",  # software WebGL for the 3-D scenes
        f"--user-data-dir={workdir / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout, proc.stderr


def page_errors(dom: str, log: str) -> list[str]:
    """JavaScript errors recorded by the hook, plus uncaught ones in Chromium's log."""
    import json
    import re

    m = re.search(r'<pre id="__test_errors">(.*?)</pre>', dom, re.S)
    if m is None:
        return ["the error hook never reported (page did not finish loading)"]
    import html as _html

    errors = list(json.loads(_html.unescape(m.group(1))))
    errors += [ln for ln in log.splitlines() if "CONSOLE" in ln and "Uncaught" in ln]
    return errors


def graph_divs(dom: str) -> list[str]:
    """The DOM of each plotly graph div, in page order."""
    import re

    starts = [m.start() for m in re.finditer(r'<div id="[^"]+" class="plotly-graph-div', dom)]
    return [dom[a:b] for a, b in zip(starts, [*starts[1:], len(dom)])]
