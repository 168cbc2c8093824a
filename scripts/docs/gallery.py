"""The documentation's gallery: one picture per plot kind, from a tiny demo run.

The MkDocs hook (``scripts/docs/hooks.py``) calls :func:`make_gallery` at every build;
each picture is drawn by one function below, whose source the gallery page shows under
the picture. ``python scripts/docs/gallery.py --readme docs/assets/landscape.png`` draws
the README's picture from the same run.

Everything runs on the built-in digits data in a few seconds on one CPU thread.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.gallery")

# The tiny run every picture comes from: SGD and SAM on digits (all of it, clean labels:
# not the demo's noisy 50 per class), a 32-unit MLP.
TINY_DEMO: dict[str, Any] = {
    "optimizers": ("sgd", "sam"),
    "model_kwargs": {"hidden": [32]},
    "label_noise": 0.0,
    "n_per_class": None,
    "weight_decay": 5e-4,
    "epochs": 4,
    "grid": 17,
    "pca_grid": 13,
    "metrics": ("lambda_max", "trace"),
    "trajectory_metrics": ("lambda_max",),
    "max_samples": 256,
    "spectrum_runs": 1,
    "spectrum_steps": 24,
    "progress": False,
}


@dataclass
class Picture:
    """One gallery entry: a file name, a title, a caption and the function that draws it."""

    name: str
    title: str
    caption: str
    draw: Callable[[Any, Path], Any]


def tiny_demo(out: Path) -> Any:
    """Run ``landscape.demo.run_demo`` at the gallery's tiny size (resumes from ``out``)."""
    from landscape.demo import run_demo

    return run_demo(out, **TINY_DEMO)


def line_surface(demo: Any, out: Path) -> Path:
    """The 1-D surface from SGD's initial weights (α=0) to its final ones (α=1)."""
    from landscape.surface import surface_from_checkpoint

    run = demo.runs["sgd"]
    path = out / "surfaces" / "interpolation.h5"
    surface_from_checkpoint(
        run / "checkpoints" / "epoch_0000.pt",
        interpolate=run / "final.pt",
        dim=1,
        x="-0.5:1.5:41",
        y=None,
        split="both",
        max_samples=256,
        out=path,
        progress=False,
    )
    return path


# --- one function per picture: each returns a matplotlib Figure --------------------------


def draw_contour(demo: Any, out: Path) -> Any:
    """Contour lines of the training loss on a random filter-normalised plane."""
    from landscape.plotting import plot_surface

    return plot_surface(demo.surfaces["sgd"], "contour")


def draw_filled(demo: Any, out: Path) -> Any:
    """Filled contours on logarithmic levels."""
    from landscape.plotting import plot_contour

    return plot_contour(demo.surfaces["sgd"], "train_loss", filled=True, log=True, levels=30)


def draw_heatmap(demo: Any, out: Path) -> Any:
    """The test loss as a heatmap."""
    from landscape.plotting import plot_surface

    return plot_surface(demo.surfaces["sgd"], "heatmap", metric="test_loss")


def draw_surface(demo: Any, out: Path) -> Any:
    """The same plane as a 3-D surface."""
    from landscape.plotting import plot_surface

    return plot_surface(demo.surfaces["sgd"], "surface")


def draw_line(demo: Any, out: Path) -> Any:
    """Loss and accuracy, train and test, along the line between two checkpoints."""
    from landscape.plotting import plot_surface

    return plot_surface(line_surface(demo, out), "line", metric=None)


def draw_trajectory(demo: Any, out: Path) -> Any:
    """The training path on the PCA plane of its checkpoints, over that plane's contours."""
    from landscape.plotting import plot_trajectory

    return plot_trajectory(demo.pca_surfaces["sgd"])


def draw_surface_grid(demo: Any, out: Path) -> Any:
    """Several surfaces side by side on one shared colour scale."""
    from landscape.plotting import plot_surface_grid

    return plot_surface_grid(
        [demo.surfaces["sgd"], demo.surfaces["sam"]], titles=["SGD", "SAM"], log=True
    )


def draw_spectrum(demo: Any, out: Path) -> Any:
    """Hessian spectral densities (stochastic Lanczos quadrature) on a log axis."""
    from landscape.plotting import plot_spectrum

    return plot_spectrum([demo.spectra["sgd"], demo.spectra["sam"]], labels=["SGD", "SAM"])


def draw_training_curves(demo: Any, out: Path) -> Any:
    """Training curves read from each run folder's ``metrics.jsonl``."""
    from landscape.plotting import plot_training_curves

    return plot_training_curves([demo.runs["sgd"], demo.runs["sam"]], labels=["SGD", "SAM"])


def draw_metric_curves(demo: Any, out: Path) -> Any:
    """Curvature through training: λmax at every epoch checkpoint, one line per run."""
    from landscape.plotting import plot_metric_curves

    return plot_metric_curves([demo.trajectory_path], "lambda_max")


PICTURES = (
    Picture("contour", "Contours", "`landscape plot surf.h5 --out surf.png`", draw_contour),
    Picture(
        "filled", "Filled contours, log levels", "`--kind filled --log --levels 30`", draw_filled
    ),
    Picture("heatmap", "Heatmap", "`--kind heatmap --metric test_loss`", draw_heatmap),
    Picture("surface", "3-D surface", "`--kind surface`", draw_surface),
    Picture("line", "1-D surface", "`landscape plot line.h5 --out line.png`", draw_line),
    Picture("trajectory", "Training path", "`--kind trajectory` on a PCA surface", draw_trajectory),
    Picture("surface_grid", "Surfaces side by side", "`plot_surface_grid(...)`", draw_surface_grid),
    Picture(
        "spectrum", "Spectral density", "`landscape hessian --density --out h.json`", draw_spectrum
    ),
    Picture(
        "training_curves", "Training curves", "`plot_training_curves(...)`", draw_training_curves
    ),
    Picture(
        "metric_curves",
        "Curvature through training",
        "`landscape plot runs.json --out curves.png`",
        draw_metric_curves,
    ),
)


def make_gallery(work: Path, images: Path, *, dpi: int = 80) -> list[tuple[Picture, Path]]:
    """Run the tiny demo in ``work`` and save every picture as a PNG in ``images``."""
    from matplotlib.figure import Figure  # noqa: F401  (matplotlib needed: fail early)

    from landscape.plotting import save_figure

    start = time.perf_counter()
    demo = tiny_demo(work)
    log.info("gallery: tiny demo in %.1f s", time.perf_counter() - start)
    made = []
    for pic in PICTURES:
        fig = pic.draw(demo, work)
        made.append((pic, save_figure(fig, images / f"{pic.name}.png", dpi=dpi)))
    log.info("gallery: %d pictures in %.1f s", len(made), time.perf_counter() - start)
    return made


def gallery_markdown(made: list[tuple[Picture, Path]], prefix: str = "gallery/") -> str:
    """The gallery page: every picture, its caption and the code that drew it."""
    settings = ", ".join(f"{k}={v!r}" for k, v in TINY_DEMO.items())
    lines = [
        "# Gallery",
        "",
        "One picture per plot kind, drawn by this site's build from a tiny run on the",
        "built-in digits data (`landscape.demo.run_demo(out, "
        f"{settings})`, then each function below).",
        "Every plotting function returns a matplotlib `Figure`; `save_figure(fig, path)`",
        "writes it. The [plots guide](guides/plots.md) lists every option, and the",
        "interactive (plotly) and mesh outputs.",
        "",
    ]
    for pic, path in made:
        source = inspect.getsource(pic.draw)
        lines += [
            f"## {pic.title}",
            "",
            f"![{pic.title}]({prefix}{path.name})",
            "",
            f"On the command line: {pic.caption}.",
            "",
            '??? example "The code that drew it"',
            "",
            "    ```python",
            *[f"    {line}" if line else "" for line in source.rstrip().splitlines()],
            "    ```",
            "",
        ]
    return "\n".join(lines)


def readme_picture(out_png: Path, work: Path) -> Path:
    """The README's picture: SGD's loss surface in 3-D and as contours, λmax through training."""
    from matplotlib.figure import Figure

    from landscape.plotting import plot_contour, plot_metric_curves, plot_surface3d

    demo = tiny_demo(work)
    fig = Figure(figsize=(11.0, 3.4), layout="constrained")
    ax3d = fig.add_subplot(1, 3, 1, projection="3d")
    plot_surface3d(demo.surfaces["sgd"], ax=ax3d, title="SGD: loss surface")
    plot_contour(
        demo.pca_surfaces["sgd"],
        filled=True,
        log=True,
        ax=fig.add_subplot(1, 3, 2),
        title="SGD: training path on its PCA plane",
    )
    ax = fig.add_subplot(1, 3, 3)
    plot_metric_curves([demo.trajectory_path], "lambda_max", ax=ax)
    ax.set_title("λmax through training")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=72)
    return out_png


def main() -> None:
    """Draw the gallery (or the README picture) from the command line."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gallery", help="folder for the gallery PNGs")
    parser.add_argument("--readme", default=None, help="draw the README picture to this PNG")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as work:
        if args.readme:
            print(readme_picture(Path(args.readme), Path(work)))
        else:
            for _, path in make_gallery(Path(work), Path(args.out)):
                print(path)


if __name__ == "__main__":
    main()
