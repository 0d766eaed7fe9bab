"""A picture of a memory timeline (:class:`~flash_vstream.inference.timeline.Timeline`), with matplotlib.

matplotlib is an optional extra (``pip install "flash-vstream[plot]"``) and is imported only when a picture is
drawn. The figure is built with matplotlib's object API on the Agg canvas (no ``pyplot``, so no global figure
state and no display needed).

Top: the stream's time axis; each temporal cluster is a bar at its members' weighted-mean time, as tall as its
weight (the frames, or Flash temporal patches, it stands for); the retrieved frames (STAR) or DAM key frames (Flash)
are red lines, STAR's spatial window green. Below: thumbnails of the retrieved frames, then of the spatial window,
each captioned with its frame and time.

>>> plot_timeline(answer.timeline, "memory.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MissingExtraError", "plot_timeline", "require_matplotlib"]

MAX_PICTURES = 12  # thumbnails drawn under the axis (a Flash DAM holds up to 60 key frames)


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require_matplotlib():
    """Import matplotlib's Figure and Agg canvas, or raise :class:`MissingExtraError` naming the extra.

    Returns:
        ``(Figure, FigureCanvasAgg)``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingExtraError(
            'drawing a memory timeline needs matplotlib: pip install "flash-vstream[plot]"'
        ) from err
    return Figure, FigureCanvasAgg


def plot_timeline(timeline, path: str | Path | None = None, *, title: str | None = None, dpi: int = 120):
    """Draw ``timeline``; write it to ``path`` (PNG, or any format matplotlib knows by the suffix) when given.

    Args:
        timeline: a :class:`~flash_vstream.inference.timeline.Timeline` (``Answer.timeline``).
        path: the image file to write (its folder must exist).
        title: the figure's title (default: family, frames and stream span).
        dpi: resolution of the written image.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        MissingExtraError: without matplotlib.
        ValueError: when ``timeline`` is ``None`` (an answer without one).
        FileNotFoundError: when ``path``'s folder does not exist.
    """
    if timeline is None:
        raise ValueError("this answer has no memory timeline; ask with timeline=True (or through a StreamSession)")
    figure_class, canvas_class = require_matplotlib()
    if path is not None and not Path(path).parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: its folder {Path(path).parent} does not exist")
    pictures = [(f, "retrieved" if timeline.family == "star" else "key frame") for f in timeline.retrieved]
    pictures += [(f, "recent") for f in timeline.recent]
    pictures = [(f, kind) for f, kind in pictures if f.thumbnail is not None][:MAX_PICTURES]
    columns = max(len(pictures), 1)
    fig = figure_class(figsize=(max(8.0, 1.4 * columns), 4.6 if pictures else 2.8))
    canvas_class(fig)
    grid = fig.add_gridspec(2 if pictures else 1, columns, height_ratios=[2.2, 1] if pictures else [1])
    axis = fig.add_subplot(grid[0, :])
    _draw_axis(axis, timeline)
    for column, (frame, kind) in enumerate(pictures):
        thumb = fig.add_subplot(grid[1, column])
        thumb.imshow(frame.thumbnail.image, interpolation="nearest")
        exact = "" if frame.thumbnail.frame == frame.frame else "~"
        thumb.set_title(f"{kind}\n{exact}#{frame.frame}, {frame.seconds:.1f} s", fontsize=7)
        thumb.set_axis_off()
    fig.suptitle(title or f"{timeline.family} memory after {timeline.num_frames} frames "
                 f"({timeline.start_seconds:.1f}-{timeline.end_seconds:.1f} s)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _draw_axis(axis, timeline) -> None:
    """The time axis: cluster bars (height = weight), retrieved frames in red, the spatial window in green."""
    span = max(timeline.end_seconds - timeline.start_seconds, 1e-6)
    width = span / max(4 * len(timeline.clusters), 40)
    if timeline.clusters:
        axis.bar([c.seconds for c in timeline.clusters], [c.weight for c in timeline.clusters], width=width,
                 color="tab:blue", alpha=0.8, label="temporal clusters (height: weight)")
    for i, frame in enumerate(timeline.retrieved):
        axis.axvline(frame.seconds, color="tab:red", linewidth=1.2, label="retrieved" if i == 0 else None)
    for i, frame in enumerate(timeline.recent):
        axis.axvline(frame.seconds, color="tab:green", linewidth=1.2, linestyle="--",
                     label="spatial window" if i == 0 else None)
    axis.set_xlim(timeline.start_seconds - 0.02 * span, timeline.end_seconds + 0.02 * span)
    top = max((c.weight for c in timeline.clusters), default=1.0)
    axis.set_ylim(0, 1.4 * top)  # headroom for the legend
    axis.set_xlabel("stream time (s)")
    axis.set_ylabel("weight (frames)" if timeline.family == "star" else "weight (patches)")
    axis.legend(loc="upper center", ncol=3, fontsize=7, frameon=False)
