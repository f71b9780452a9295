"""One self-contained HTML page about a model and the scores it made: learning curves,
reconstructions, samples, the latent map, the decoded latent space (a grid over its leading
directions and an interpolation between the two worst anomalies), the score histogram with its threshold, and the top
anomalies with their images. Every image is embedded as a base64 PNG, so the page travels alone
(e-mail it, attach it to a ticket, open it from MLflow's artifact view).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.outputs.png import to_uint8
from training import data as data_lib
from training.data.validate import ModelSpec
from training.paths import is_remote

if TYPE_CHECKING:
    from training.registry import ModelRef

log = logging.getLogger(__name__)

CURVE_KEYS = ("neg_elbo", "reconstruction", "kl")
SCORE_COLUMNS = ("anomaly_score", "neg_elbo", "reconstruction_nll", "kl", "iwae_nll", "p_value")


def ranking_column(frame) -> str:
    """``anomaly_score``; ``neg_elbo`` in scores written before it existed."""
    return "anomaly_score" if "anomaly_score" in frame.columns else "neg_elbo"


@dataclass(frozen=True)
class Section:
    key: str  # the section element's id
    title: str
    body: str  # HTML


def figure_png(figure, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def image_png(image: np.ndarray, scale: int | None = None) -> bytes:
    """One (H, W, C) image in [0, 1] as a PNG, enlarged by whole pixels to about 64 pixels a side."""
    from PIL import Image

    pixels = to_uint8(image)
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = scale or max(1, 64 // max(pixels.shape[:2]))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(pixel_nll: np.ndarray, scale: int | None = None, colormap: str = "inferno") -> bytes:
    """One image's per-pixel NLL, (H, W, C), as a colour PNG the size :func:`image_png` makes of the
    image: the channels summed, scaled from the image's least to its most improbable pixel, so
    brighter = less probable."""
    import matplotlib
    from PIL import Image

    values = np.asarray(pixel_nll, dtype=np.float64).sum(axis=-1)
    low, high = float(values.min()), float(values.max())
    unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    rgb = to_uint8(matplotlib.colormaps[colormap](unit)[..., :3])
    picture = Image.fromarray(rgb)
    scale = scale or max(1, 64 // max(values.shape))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def top_pixel_nll(frame, model, images: dict, top: int) -> dict[str, np.ndarray]:
    """example_id -> per-pixel NLL (H, W, C) of the ``top`` anomalies whose images were found, with the
    model's own score samples and seed, so each map sums to the row's ``reconstruction_nll``."""
    from scoring.elbo import pixel_nll

    ranked = frame.sort_values(ranking_column(frame), ascending=False, kind="stable").head(top)
    ids = [str(e) for e in ranked["example_id"] if str(e) in images]
    if model.num_classes:  # a conditional model scores an image with its label
        ids = [e for e in ids if images[e][1] is not None]
    if not ids:
        return {}
    x = np.stack([images[e][0] for e in ids]).astype(np.float32)
    labels = np.array([images[e][1] for e in ids], dtype=np.int64) if model.num_classes else None
    samples, seed = getattr(model, "score_samples", 16), getattr(model, "score_seed", 0)
    maps = pixel_nll(model, x, labels, num_samples=samples, seed=seed)
    return dict(zip(ids, maps, strict=True))


def img_tag(png: bytes, alt: str, css_class: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def read_scores(path: str | Path, model_name: str | None = None, model_version: str | None = None):
    """The scores dataset as a pandas frame, narrowed to one model's rows when the dataset holds several."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such scores dataset")
    try:
        # not pixel_nll (vae score --pixel-scores): a list per row; the report recomputes its top rows'
        names = [n for n in pq.ParquetDataset(path).schema.names if n != "pixel_nll"]
        frame = pq.read_table(path, columns=names).to_pandas()
    except Exception as exc:
        raise data_lib.DataError(f"{path}: not a readable Parquet scores dataset ({exc})") from exc
    missing = [c for c in ("example_id", "neg_elbo") if c not in frame.columns]
    if missing:
        raise data_lib.DataError(f"{path}: the scores dataset has no {', '.join(missing)} column")
    if frame.empty:
        raise data_lib.DataError(f"{path}: the scores dataset is empty")
    if model_name and {"model_name", "model_version"} <= set(frame.columns):
        mine = (frame["model_name"] == model_name) & (frame["model_version"].astype(str) == str(model_version))
        if mine.any() and not mine.all():
            log.info("%s: %d of %d rows were scored by %s v%s", path, mine.sum(), len(frame), model_name, model_version)
            frame = frame[mine]
    return frame.reset_index(drop=True)


def model_uri_from_scores(frame) -> str:
    """``models:/NAME/VERSION`` of the model that made the (first) rows."""
    if not {"model_name", "model_version"} <= set(frame.columns):
        raise ValueError("the scores dataset does not say which model made it; pass --model")
    return f"models:/{frame['model_name'].iloc[0]}/{frame['model_version'].iloc[0]}"


def lookup_images(
    example_ids: np.ndarray, input_spec: str | None, spec: ModelSpec
) -> dict[str, tuple[np.ndarray, int | None]]:
    """example_id -> (image, label) from the scored input (``input_spec``; the built-in digits for
    ``digits:<index>`` ids without it), read and validated exactly as ``vae score`` read it for the
    model ``spec`` (its shape, classes and pixel scale); rows it rejected are not found."""
    from training.data.reader import plan_input
    from training.data.validate import validate_batch

    ids = [str(i) for i in example_ids]
    if input_spec is None:
        if not ids or not all(i.startswith("digits:") for i in ids):
            return {}
        input_spec = "digits"
    wanted = set(ids)
    found: dict[str, tuple[np.ndarray, int | None]] = {}
    for shard in plan_input(input_spec).shards:
        for batch in shard.read(4096):
            valid, _ = validate_batch(batch, spec)
            if valid is None:
                continue
            labels = valid.label_out.to_pylist()
            for j, example_id in enumerate(valid.example_ids.to_pylist()):
                if example_id in wanted:  # the first row read, the one vae score kept
                    found.setdefault(example_id, (valid.images[j], labels[j]))
    return found


def learning_history(run_id: str | None, work_dir: str | os.PathLike | None = None) -> dict[str, list[float]]:
    """Per-epoch metrics of a training run, from MLflow's metric history (empty if there is none)."""
    if not run_id:
        return {}
    from training import registry

    client = registry.client(work_dir)
    history = {}
    for key in CURVE_KEYS:
        for name in (key, f"val_{key}"):
            points = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
            if points:
                history[name] = [float(m.value) for m in points]
    return history


def _stat(label: str, value: object) -> str:
    return f"<tr><th>{html.escape(label)}</th><td>{html.escape(str(value))}</td></tr>"


def _number(value: object, digits: int = 3) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"


def build_sections(
    frame,
    ref: ModelRef,
    model,
    run_id: str | None,
    history: dict[str, list[float]],
    images: dict,
    top: int,
    seed: int = 0,
) -> list[Section]:
    """The report's sections, in page order: ``model`` is the loaded ``ref``, ``history`` its training
    run's per-epoch metrics."""
    from training import plots

    sections = []
    threshold = None
    if getattr(model, "calibration", None):
        threshold = float(model.calibration["threshold"])
    elif "threshold" in frame.columns and frame["threshold"].notna().any():
        threshold = float(frame["threshold"].dropna().iloc[0])
    flagged = int(frame["is_anomaly"].fillna(False).astype(bool).sum()) if "is_anomaly" in frame.columns else None
    ranked_by = ranking_column(frame)
    scores = frame[ranked_by].to_numpy(dtype=np.float64)
    overview = [
        _stat("model", f"{ref.name} version {ref.version}"),
        _stat("kind", ("conditional" if model.num_classes else "plain") + f" VAE, {model.likelihood} likelihood"),
        _stat("latent size", model.latent_dim),
        _stat("training run", run_id or "not in MLflow"),
        _stat("rows scored", f"{len(frame):,}"),
        _stat("flagged anomalous", "unknown" if flagged is None else f"{flagged:,} ({flagged / len(frame):.1%})"),
        _stat("threshold", "unknown" if threshold is None else f"{threshold:.3f} ({ranked_by})"),
        _stat("mean negative ELBO", f"{np.nanmean(frame['neg_elbo'].to_numpy(dtype=np.float64)):.3f} nats"),
    ]
    if "source" in frame.columns:
        overview.append(_stat("source", ", ".join(sorted({str(s) for s in frame["source"].dropna().unique()}))))
    sections.append(Section("overview", "Overview", f"<table class='stats'>{''.join(overview)}</table>"))

    if history:
        body = img_tag(figure_png(plots.learning_curves(history)), "learning curves")
    else:
        body = "<p class='note'>No per-epoch metrics: the model is not from an MLflow run of this store.</p>"
    sections.append(Section("learning-curves", "Learning curves", body))

    found = [(eid, *images[eid]) for eid in frame["example_id"].astype(str) if eid in images]
    usable = [item for item in found if not model.num_classes or item[2] is not None]
    if usable:
        subset = usable[:1000]
        x = np.stack([item[1] for item in subset])
        labels = np.array([item[2] for item in subset]) if all(item[2] is not None for item in subset) else None
        model_labels = labels if model.num_classes else None
        recon = plots.reconstructions(model, x, model_labels)
        sections.append(Section("reconstructions", "Reconstructions", img_tag(figure_png(recon), "reconstructions")))
        latent = plots.latent_map(model, x, labels)
        sections.append(Section("latent-map", "Latent map", img_tag(figure_png(latent), "latent map")))
        sections.append(Section("latent-space", "Latent space", latent_space_body(frame, model, usable, x, labels)))
    else:
        note = (
            "<p class='note'>The scored images were not found where the scores say they came from; pass --input "
            "with the scored data.</p>"
        )
        sections.append(Section("reconstructions", "Reconstructions", note))
    if model.num_classes:
        grid = plots.per_label_grid(model, seed=seed)
        sections.append(Section("samples", "Samples per label", img_tag(figure_png(grid), "samples per label")))
    else:
        grid = plots.prior_grid(model, seed=seed)
        sections.append(Section("samples", "Samples from the prior", img_tag(figure_png(grid), "prior samples")))

    histogram = plots.score_histogram(
        scores[np.isfinite(scores)],
        threshold if threshold is not None else math.nan,
        title=f"scored {ranked_by}",
        label=ranked_by,
    )
    sections.append(Section("histogram", "Score histogram", img_tag(figure_png(histogram), "score histogram")))
    heat = top_pixel_nll(frame, model, images, top)
    sections.append(Section("top-anomalies", f"Top {top} anomalies", top_table(frame, images, top, heat)))
    return sections


def latent_space_body(frame, model, usable: list, x: np.ndarray, labels: np.ndarray | None) -> str:
    """The decoded latent grid over the posterior means of ``x``, and the interpolation between the two
    most anomalous of the ``usable`` (example_id, image, label) found, each with its caption."""
    from training import plots

    grid = plots.latent_grid_figure(model, x, labels)
    wide = model.latent_dim > 2
    body = [
        img_tag(figure_png(grid), "latent grid"),
        "<p class='note'>What the decoder draws across the latent: each tile decodes one point of an even grid over "
        + ("the two leading principal directions of" if wide else "the two latent coordinates, spanning")
        + " the scored images' posterior means (5th to 95th percentile"
        + ("; the other directions held at the means' mean" if wide else "")
        + ").</p>",
    ]
    by_id = {item[0]: item for item in usable}
    ranked = frame.sort_values(ranking_column(frame), ascending=False, kind="stable")["example_id"].astype(str)
    pair = [by_id[e] for e in dict.fromkeys(ranked) if e in by_id][:2]
    if len(pair) < 2:
        body.append("<p class='note'>No interpolation: fewer than two scored images were found.</p>")
        return "".join(body)
    (id_a, image_a, label_a), (id_b, image_b, label_b) = pair
    conditional = bool(model.num_classes)
    path = plots.interpolation_figure(
        model,
        image_a,
        image_b,
        label_a=label_a if conditional else None,
        label_b=label_b if conditional else None,
        title=f"{id_a} to {id_b}",
    )
    body.append(img_tag(figure_png(path), f"interpolation from {id_a} to {id_b}"))
    body.append(
        f"<p class='note'>The two most anomalous images found, <code>{html.escape(id_a)}</code> (left) and "
        f"<code>{html.escape(id_b)}</code> (right), and between them the decoded straight line from the first's "
        "posterior mean to the second's"
        + (f", decoded with the first's label {_label_text(label_a)}" if conditional else "")
        + ".</p>"
    )
    return "".join(body)


HEATMAP_NOTE = (
    "<p class='note'>Beside each image, where it is unusual: each pixel's share of its reconstruction NLL "
    "(&minus;log p(x|z), in nats, averaged over the model's score samples; the pixels sum to "
    "<code>reconstruction_nll</code>). Brighter = the pixels the model found least probable; each map is "
    "scaled from its own least to its most improbable pixel.</p>"
)


def top_table(frame, images: dict, top: int, heat: dict[str, np.ndarray] | None = None) -> str:
    """The top anomalies, highest score first, with their images and, where ``heat`` has one, the
    heat map of their per-pixel NLL."""
    heat = heat or {}
    ranked = frame.sort_values(ranking_column(frame), ascending=False, kind="stable").head(top)
    columns = [c for c in SCORE_COLUMNS if c in ranked.columns and ranked[c].notna().any()]
    head = ["rank", "image", "per-pixel NLL", "example_id", "label", *columns, "flagged"]
    rows = []
    for rank, (_, row) in enumerate(ranked.iterrows(), 1):
        eid = str(row["example_id"])
        picture = img_tag(image_png(images[eid][0]), eid, "digit") if eid in images else "–"
        if eid in heat:
            values = heat[eid]
            alt = f"per-pixel NLL of {eid}: {values.min():.2f} to {values.max():.2f} nats"
            heatmap = img_tag(heatmap_png(values), alt, "heatmap")
        else:
            heatmap = "–"
        label = row.get("label")
        flagged = row.get("is_anomaly")
        cells = [
            str(rank),
            picture,
            heatmap,
            html.escape(eid),
            _label_text(label),
            *(_number(row[c], 4 if c == "p_value" else 3) for c in columns),
            "yes" if flagged is True or flagged == 1 else ("no" if flagged is not None else "–"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    note = HEATMAP_NOTE if heat else ""
    return f"{note}<table class='anomalies'>{header}{''.join(rows)}</table>"


def _label_text(label: object) -> str:
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return "–"
    if isinstance(label, float) and label.is_integer():  # an int column with nulls reads as float
        return str(int(label))
    return html.escape(str(label))


def scored_input(scores: str | Path, frame) -> str | None:
    """The input the scores were made from, where it can still be read: the ``input`` of the scores'
    manifest, else the folder (or file) that holds every row's ``source``; None if neither is reachable."""
    from pipeline.outputs.manifest import read_manifest

    candidates = []
    with contextlib.suppress(ValueError, OSError):  # no manifest, or not one this code wrote
        candidates.append(str(read_manifest(scores).get("input") or ""))
    if "source" in frame.columns:
        sources = sorted({str(s) for s in frame["source"].dropna().unique()})
        if sources and all(not is_remote(s) for s in sources):
            with contextlib.suppress(ValueError):  # absolute and relative sources mixed: no common folder
                candidates.append(sources[0] if len(sources) == 1 else os.path.commonpath(sources))
    for spec in candidates:
        name = spec.partition(":")[0]
        if name in data_lib.BUILTIN and not Path(spec).exists():
            return name  # the ids are rows of the whole built-in set
        if spec and Path(spec).exists():
            log.info("the scored images are read from %s (named in the scores)", spec)
            return spec
    return None


def output_of_scores(scores: str | Path) -> Path | None:
    """The output folder ``OUTPUT`` of ``OUTPUT/scores`` or ``OUTPUT/scores/KEY=VALUE``; None for a
    folder not named so."""
    path = Path(os.path.abspath(scores))  # not resolved: OUTPUT/scores is a link into OUTPUT/.versions
    if path.name == "scores":
        return path.parent
    if path.parent.name == "scores" and "=" in path.name:
        return path.parent.parent
    return None


MONITORING_ROWS = 10  # the latest rows the report lists


def monitoring_section(scores: str | Path) -> Section | None:
    """The trend of ``OUTPUT/monitoring/`` (what ``vae monitor`` draws) and its latest rows, when the
    scores' output folder has one; None otherwise."""
    from pipeline.monitoring import monitoring_path, read_rows
    from pipeline.monitoring.plot import trend_figure
    from pipeline.monitoring.trend import frame_of, shadow_cells, shadow_rows, trend, trend_cells

    output = output_of_scores(scores)
    if output is None or not Path(monitoring_path(output)).is_dir():
        return None
    frame = frame_of(read_rows(output))
    points = trend(frame) if len(frame) else frame
    if points.empty:
        return None
    latest = points.tail(MONITORING_ROWS)
    body = [
        img_tag(figure_png(trend_figure(points)), "monitoring trend"),
        "<p class='note'>One point per partition (its latest run) or per run: the anomaly rate inside its "
        "acceptance bound at the target false positive rate, the Kolmogorov-Smirnov drift of the scores from "
        "the model's calibration scores under its limit, and the score's quantiles. From "
        f"<code>{html.escape(str(monitoring_path(output)))}</code>; <code>vae monitor</code> prints it.</p>",
        _cells_table(*trend_cells(latest)),
    ]
    shadows = shadow_rows(frame, last=MONITORING_ROWS)
    if not shadows.empty:
        body += ["<h3>Shadow agreement</h3>", _cells_table(*shadow_cells(shadows))]
    return Section("monitoring", "Monitoring", "".join(body))


def _cells_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    header = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='monitoring'>{header}{body}</table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; } th, td { padding: .25em .6em; text-align: left; }
table.anomalies td, table.anomalies th, table.monitoring td, table.monitoring th { border-bottom: 1px solid #eee; }
img.figure { max-width: 100%; }
img.digit, img.heatmap { image-rendering: pixelated; width: 48px; height: 48px; border: 1px solid #bbb; }
.note { color: #777; }
"""


def render_html(title: str, sections: list[Section]) -> str:
    nav = " · ".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in sections)
    body = "\n".join(f"<section id='{s.key}'>\n<h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>" for s in sections)
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class='note'>created {created} · {nav}</p>\n{body}\n</body>\n</html>\n"
    )


def render_report(
    scores: str | Path,
    model_uri: str | None = None,
    output: str | Path = "report.html",
    *,
    top: int = 20,
    input_spec: str | None = None,
    log_to_mlflow: bool = True,
    seed: int = 0,
    work_dir: str | os.PathLike | None = None,
) -> Path:
    """Writes the HTML report for a scores dataset and the model that made it; returns its path.

    ``model_uri``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a ``.keras`` file (default:
    the model named in the scores). ``input_spec``: the scored input, to show the images (the
    built-in digits are found by their ``digits:<index>`` ids without it). With
    ``log_to_mlflow`` the page is also logged as an artifact of the model's training run
    (``report/<file name>``). ``work_dir``: the working folder whose MLflow store holds the model.
    """
    from training import registry

    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    frame = read_scores(scores)
    uri = model_uri or model_uri_from_scores(frame)
    ref = registry.pin(uri, work_dir)
    model = ref.load()
    frame = read_scores(scores, ref.name, ref.version)
    run_id = registry.run_id(ref.name, ref.version, work_dir)
    top_ids = frame.sort_values(ranking_column(frame), ascending=False).head(top)["example_id"].astype(str).to_numpy()
    if input_spec is None:
        input_spec = scored_input(scores, frame)
    images = lookup_images(frame["example_id"].astype(str).to_numpy(), input_spec, ModelSpec.of(model))
    if images and not any(i in images for i in top_ids):
        log.warning("none of the top anomalies' images were found in the input")
    sections = build_sections(frame, ref, model, run_id, learning_history(run_id, work_dir), images, top, seed)
    monitoring = monitoring_section(scores)
    if monitoring is not None:
        sections.append(monitoring)
    from pipeline.outputs.files import write_atomically

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, render_html(f"VAE anomaly report: {ref.name} v{ref.version}", sections))  # whole
    if log_to_mlflow and run_id:
        registry.client(work_dir).log_artifact(run_id, str(path), "report")
    return path.resolve()
