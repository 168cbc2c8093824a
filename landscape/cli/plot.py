"""``landscape plot``: draw a stored surface, or comparisons against the epoch."""

from __future__ import annotations

import argparse
from pathlib import Path

from landscape.cli._args import comma_list, finite_float, positive_float


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plot`` subcommand."""
    from landscape.plotting.static import PLOT_KINDS

    p = subparsers.add_parser(
        "plot",
        help="draw a surface file or comparison files as a picture, a page or a mesh",
        description=(
            "Draw a surface .h5 file, or the metrics of one or more comparison .json files "
            "(landscape compare --out) against the epoch, one line per run. The output's "
            "extension picks the format: .png/.pdf/.svg (matplotlib), .html (interactive "
            "plotly, offline), .vtp/.vtu/.vtk/.obj/.stl/.ply (mesh of a surface)."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE",
        help="one surface .h5 file, or one or more comparison .json files",
    )
    p.add_argument(
        "--kind",
        choices=PLOT_KINDS,
        default=None,
        help="surface plot kind (default: contour for 2-D surfaces, line for 1-D)",
    )
    p.add_argument("--out", required=True, help="output file: .png .pdf .svg .html .vtp .obj .stl")
    p.add_argument(
        "--metric",
        default=None,
        help="metric to draw (surface default train_loss, 1-D every metric; "
        "comparisons: one panel per metric)",
    )
    p.add_argument(
        "--labels",
        type=comma_list,
        default=None,
        help="comma-separated legend labels, one per comparison file (default: file names)",
    )
    p.add_argument("--log", action="store_true", help="logarithmic levels / colour / height / axis")
    p.add_argument("--levels", type=int, default=None, help="number of contour levels (default 30)")
    p.add_argument("--vmin", type=finite_float, default=None, help="lower end of the colour range")
    p.add_argument("--vmax", type=finite_float, default=None, help="upper end of the colour range")
    p.add_argument(
        "--scale",
        type=positive_float,
        default=None,
        help="height scale of mesh exports (default 1)",
    )
    p.add_argument("--dpi", type=int, default=150, help="resolution of raster images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw the inputs as asked and write the output file."""
    from landscape._io import check_output
    from landscape.plotting import MESH_FORMATS, STATIC_FORMATS, plot_inputs

    check_output(args.out)  # before reading anything: a folder, below a file, read-only
    formats = (*STATIC_FORMATS, ".html", *MESH_FORMATS)
    if Path(args.out).suffix.lower() not in (*formats, ".htm"):
        raise ValueError(f"--out must end in one of {formats}, got {Path(args.out).name!r}")
    out = plot_inputs(
        args.inputs,
        args.out,
        kind=args.kind,
        metric=args.metric,
        labels=args.labels,
        log=args.log,
        levels=args.levels,
        vmin=args.vmin,
        vmax=args.vmax,
        scale=args.scale,
        dpi=args.dpi,
    )
    print(f"wrote {Path(out)}")
    return 0
