"""The paper's analysis figures as PNG files: CAR histograms, results across CAR ranges, visuals.

The plots use matplotlib's object API (a :class:`~matplotlib.figure.Figure` rendered by Agg,
never pyplot), so they work without a display and never touch a global backend. The visual
comparison panel is composed pixel by pixel with Pillow instead: every prediction pixel keeps
its exact colour (no interpolation or anti-aliasing), so the panel can be checked and zoomed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image, ImageDraw, ImageFont

from cdkd.analysis.compare import strategy_label
from cdkd.analysis.tables import percent
from cdkd.data.io import read_image, read_mask
from cdkd.data.layout import Sample
from cdkd.errors import DataError
from cdkd.files import atomic_path
from cdkd.partition import PartitionScheme

#: Colours of the prediction rows: what each pixel of an error map means.
TRUE_POSITIVE = (255, 255, 255)
TRUE_NEGATIVE = (0, 0, 0)
FALSE_NEGATIVE = (255, 0, 0)
FALSE_POSITIVE = (0, 0, 255)
#: Outline drawn around every image, so white change stays visible on the white page.
FRAME = (150, 150, 150)
LEGEND: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("true positive", TRUE_POSITIVE),
    ("true negative", TRUE_NEGATIVE),
    ("false negative (missed)", FALSE_NEGATIVE),
    ("false positive (false alarm)", FALSE_POSITIVE),
)


def _save(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def car_distribution_figure(
    cars: Mapping[str, np.ndarray], scheme: PartitionScheme, path: str | Path, title: str
) -> Path:
    """Histograms of the CAR of each split (the paper's Fig. 5 and 6), thresholds marked.

    Left: the whole range in 2 % bins on a logarithmic axis, since most images have little
    change; right: a zoom on the first partition (CAR up to the first threshold). Counts are
    shares of each split, so splits of different sizes compare directly.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    full, zoom = fig.subplots(1, 2)
    limit = 100.0 * scheme.thresholds[0]
    for split, values in cars.items():
        pct = 100.0 * np.asarray(values, dtype=np.float64)
        weights = np.full(pct.shape, 100.0 / max(pct.size, 1))
        label = f"{split} ({pct.size})"
        full.hist(
            pct, np.linspace(0, 100, 51), weights=weights, histtype="step", lw=1.5, label=label
        )
        inside = pct <= limit
        zoom.hist(
            pct[inside],
            np.linspace(0, limit, 41),
            weights=weights[inside],
            histtype="step",
            lw=1.5,
            label=label,
        )
    for number, threshold in enumerate(scheme.thresholds, start=1):
        full.axvline(100 * threshold, color="0.3", ls="--", lw=1)
        full.annotate(
            f"th{number} = {100 * threshold:g}%",
            (100 * threshold, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
        )
    full.set_yscale("log")
    full.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    full.set_xlim(0, 100)
    full.set_title("all images (log scale)")
    zoom.set_xlim(0, limit)
    zoom.set_title(f"{scheme.buckets[0]} partition: CAR <= {limit:g}%")
    for ax in (full, zoom):
        ax.set_xlabel("CAR (%)")
        ax.set_ylabel("images (% of the split)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def car_range_figure(
    rows: Sequence[Mapping[str, Any]],
    strategies: Sequence[str],
    path: str | Path,
    title: str,
    metric: str = "mIoU",
) -> Path:
    """The paper's Fig. 8: CAR bounds of each group as bars (left axis), the metric as lines.

    Args:
        rows: :func:`cdkd.analysis.compare.car_range_rows` output.
        strategies: Row keys to draw as lines, in legend order.
        path: PNG to write.
        title: Figure title.
        metric: Name of the plotted metric, for the axis label.
    """
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax_car = fig.subplots()
    x = np.arange(1, len(rows) + 1)
    lower = np.asarray([100.0 * row["car_min"] for row in rows])
    upper = np.asarray([100.0 * row["car_max"] for row in rows])
    ax_car.bar(
        x,
        upper - lower,
        bottom=lower,
        width=0.55,
        color="#cfdcee",
        edgecolor="#4f6f9f",
        label="CAR range of the group",
    )
    # Caps at both bounds keep a group of equal CARs (a bar of height 0) visible.
    ends = np.tile(x, 2)
    ax_car.hlines(np.concatenate([lower, upper]), ends - 0.275, ends + 0.275, color="#4f6f9f")
    ax_car.set_ylabel("CAR (%)")
    ax_car.set_ylim(0, max(float(upper.max()) * 1.05, 1.0))
    ticks = [
        f"G{row['group']}\n{lo:.2f}–{hi:.2f}%\nn={row['count']}"
        for row, lo, hi in zip(rows, lower, upper, strict=True)
    ]
    ax_car.set_xticks(x, ticks, fontsize=8)
    ax_car.set_xlabel("groups of equal size by ground-truth CAR: CAR range, images")
    ax_metric = ax_car.twinx()
    for strategy in strategies:
        values = [100.0 * row[strategy] for row in rows]
        ax_metric.plot(x, values, marker="o", lw=1.8, label=strategy_label(strategy))
    ax_metric.set_ylabel(f"{metric} (%)")
    handles = [*ax_car.get_legend_handles_labels()[0], *ax_metric.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    ax_car.set_title(title)
    return _save(fig, path)


def error_map(label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` map of a prediction against its label.

    True positives are white, true negatives black, false negatives (missed change) red and
    false positives (false alarms) blue.
    """
    if label.shape != prediction.shape:
        raise ValueError(f"label shape {label.shape} differs from prediction {prediction.shape}")
    truth, predicted = label.astype(bool), prediction.astype(bool)
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    out[truth & predicted] = TRUE_POSITIVE
    out[truth & ~predicted] = FALSE_NEGATIVE
    out[~truth & predicted] = FALSE_POSITIVE
    return out


@dataclass(frozen=True)
class PanelColumn:
    """One image of a visual comparison: both dates, the label and each strategy's prediction.

    ``predictions`` maps a row title (e.g. ``"MTKD"``) to a 0/1 mask of the label's size, in row
    order; ``scores`` maps row titles to a value printed under that cell (a fraction).
    """

    name: str
    image1: np.ndarray
    image2: np.ndarray
    label: np.ndarray
    predictions: Mapping[str, np.ndarray]
    scores: Mapping[str, float] = field(default_factory=dict)


def load_column(
    sample: Sample,
    predictions: Mapping[str, Path],
    scores: Mapping[str, float] | None = None,
    label_threshold: int | None = None,
) -> PanelColumn:
    """Read one pair, its label (binarised as ``data.label_threshold`` says) and the saved
    prediction ``<dir>/<stem>.png`` of each row."""
    label = read_mask(sample.label, label_threshold)
    masks = {}
    for title, folder in predictions.items():
        path = Path(folder) / f"{Path(sample.name).stem}.png"
        mask = read_mask(path)
        if mask.shape != label.shape:
            raise DataError(
                f"{path}: size {mask.shape[0]}x{mask.shape[1]} differs from its label "
                f"{sample.label} ({label.shape[0]}x{label.shape[1]})"
            )
        masks[title] = mask
    return PanelColumn(
        sample.name,
        read_image(sample.image1),
        read_image(sample.image2),
        label,
        masks,
        scores or {},
    )


@dataclass(frozen=True)
class _Placement:
    """Where one column's images lie inside their cells."""

    left: int
    source: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]


@dataclass(frozen=True)
class PanelLayout:
    """Pixel geometry of a written visual panel, to find a source pixel in the PNG."""

    row_titles: tuple[str, ...]
    row_tops: tuple[int, ...]
    columns: tuple[_Placement, ...]
    size: tuple[int, int]

    def locate(self, row: str, column: int, y: int, x: int) -> tuple[int, int]:
        """Panel ``(y, x)`` of the centre of source pixel ``(y, x)`` in row ``row``."""
        place = self.columns[column]
        top = self.row_tops[self.row_titles.index(row)] + place.offset[0]
        left = place.left + place.offset[1]
        (src_h, src_w), (out_h, out_w) = place.source, place.scaled
        return top + int((y + 0.5) * out_h / src_h), left + int((x + 0.5) * out_w / src_w)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _scaled(array: np.ndarray, size: tuple[int, int], photo: bool) -> Image.Image:
    """``array`` resized to ``size`` (h, w): nearest for masks and enlargements, else Lanczos."""
    image = Image.fromarray(array)
    shrinking = size[0] < array.shape[0] or size[1] < array.shape[1]
    method = Image.Resampling.LANCZOS if photo and shrinking else Image.Resampling.NEAREST
    return image.resize((size[1], size[0]), method)


def visual_panel(
    columns: Sequence[PanelColumn],
    path: str | Path,
    cell: int = 256,
    metric: str = "mIoU",
    font_size: int = 14,
) -> PanelLayout:
    """The paper's Fig. 7 / 9: rows T1, T2, ground truth and one error map per strategy.

    Each image is scaled to fit a ``cell`` x ``cell`` square (nearest neighbour for masks, so
    prediction colours stay exact). Column titles are the image names; cells with a score get
    a caption such as ``mIoU 71.25``; a colour legend closes the panel.

    Returns:
        The layout, to map a source pixel to its position in the PNG.
    """
    if not columns:
        raise ValueError("a visual panel needs at least one image")
    titles = tuple(columns[0].predictions)
    if any(tuple(column.predictions) != titles for column in columns):
        raise ValueError("every column needs predictions for the same rows")
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, gap, line = 8, 4, font_size + 6
    rows = ("T1", "T2", "GT", *titles)
    captioned = {t for column in columns for t in column.scores if t in titles}
    label_width = int(max(measure.textlength(r, font=font) for r in rows)) + 2 * pad
    row_tops, top = [], pad + line + gap
    for row in rows:
        row_tops.append(top)
        top += cell + (line if row in captioned else 0) + gap
    legend_top = top + pad
    placements = []
    for i, column in enumerate(columns):
        h, w = column.label.shape
        scale = cell / max(h, w)
        scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
        offset = ((cell - scaled[0]) // 2, (cell - scaled[1]) // 2)
        placements.append(_Placement(label_width + i * (cell + gap), (h, w), scaled, offset))
    legend_widths = [line + pad + int(measure.textlength(t, font=font)) for t, _ in LEGEND]
    legend_width = pad + sum(legend_widths) + 3 * pad * (len(LEGEND) - 1)
    width = max(label_width + len(columns) * (cell + gap), legend_width) + pad
    height = legend_top + line + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for column, place in zip(columns, placements, strict=True):
        name = _fit_text(draw, column.name, font, cell)
        draw.text(
            (place.left + cell // 2, pad + line // 2), name, fill="black", font=font, anchor="mm"
        )
        images = {
            "T1": (column.image1, True),
            "T2": (column.image2, True),
            "GT": (column.label.astype(np.uint8) * 255, False),
        }
        for title in titles:
            images[title] = (error_map(column.label, column.predictions[title]), False)
        for row, top in zip(rows, row_tops, strict=True):
            array, photo = images[row]
            corner = (place.left + place.offset[1], top + place.offset[0])
            canvas.paste(_scaled(array, place.scaled, photo), corner)
            frame = (
                corner[0] - 1,
                corner[1] - 1,
                corner[0] + place.scaled[1],
                corner[1] + place.scaled[0],
            )
            draw.rectangle(frame, outline=FRAME)
            if row in column.scores:
                caption = f"{metric} {percent(column.scores[row])}"
                position = (place.left + cell // 2, top + cell + line // 2)
                draw.text(position, caption, fill="black", font=font, anchor="mm")
    for row, top in zip(rows, row_tops, strict=True):
        draw.text((pad, top + cell // 2), row, fill="black", font=font, anchor="lm")
    x = pad
    for (text, colour), item_width in zip(LEGEND, legend_widths, strict=True):
        box = (x, legend_top + 3, x + line - 6, legend_top + line - 3)
        draw.rectangle(box, fill=colour, outline=FRAME)
        draw.text(
            (x + line + 2, legend_top + line // 2), text, fill="black", font=font, anchor="lm"
        )
        x += item_width + 3 * pad
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return PanelLayout(rows, tuple(row_tops), tuple(placements), (height, width))
