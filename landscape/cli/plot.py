"""``landscape plot``: draw a stored surface (format from the output's extension)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plot`` subcommand."""
    from landscape.plotting.static import PLOT_KINDS

    p = subparsers.add_parser(
        "plot",
        help="draw a surface file as a picture, an interactive page or a mesh",
        description=(
            "Draw a surface .h5 file. The output's extension picks the format: "
            ".png/.pdf/.svg (matplotlib), .html (interactive plotly, offline), "
            ".vtp/.vtu/.vtk/.obj/.stl/.ply (mesh for ParaView and 3-D tools)."
        ),
    )
    p.add_argument("surface", help="surface HDF5 file")
    p.add_argument(
        "--kind",
        choices=PLOT_KINDS,
        default=None,
        help="plot kind (default: contour for 2-D surfaces, line for 1-D)",
    )
    p.add_argument("--out", required=True, help="output file: .png .pdf .svg .html .vtp .obj .stl")
    p.add_argument(
        "--metric",
        default=None,
        help="stored metric to draw (default train_loss; 1-D: every metric)",
    )
    p.add_argument("--log", action="store_true", help="logarithmic levels / colour / height")
    p.add_argument("--levels", type=int, default=30, help="number of contour levels (default 30)")
    p.add_argument("--vmin", type=float, default=None, help="lower end of the colour range")
    p.add_argument("--vmax", type=float, default=None, help="upper end of the colour range")
    p.add_argument("--scale", type=float, default=1.0, help="height scale of mesh exports")
    p.add_argument("--dpi", type=int, default=150, help="resolution of raster images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw the surface as asked and write the output file."""
    from landscape.plotting import plot_file

    out = plot_file(
        args.surface,
        args.out,
        kind=args.kind,
        metric=args.metric,
        log=args.log,
        levels=args.levels,
        vmin=args.vmin,
        vmax=args.vmax,
        scale=args.scale,
        dpi=args.dpi,
    )
    print(f"wrote {Path(out)}")
    return 0
