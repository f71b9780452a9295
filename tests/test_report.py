"""The HTML report: renders from a scores dataset and a registered model, images embedded."""

from __future__ import annotations

import base64
import datetime as dt
import io
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.report.html import image_png, read_scores, render_report
from training import data as data_lib


class PageParser(HTMLParser):
    """Collects the <img> sources, the <section> ids and the rows of the anomaly table."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.table_rows = 0
        self.row_images: list[list[str]] = []  # the classes of the images in each anomaly-table row
        self._in_anomalies = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
            if self._in_anomalies and self.row_images:
                self.row_images[-1].append(attrs.get("class", ""))
        elif tag == "section":
            self.sections.append(attrs.get("id", ""))
        elif tag == "table":
            self._in_anomalies = attrs.get("class") == "anomalies"
        elif tag == "tr" and self._in_anomalies:
            self.table_rows += 1
            self.row_images.append([])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_anomalies = False


def parse(path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def decode_png(src: str):
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def write_scores(folder, trained, ids_prefix: str = "digits") -> tuple[str, np.ndarray]:
    """A scores dataset with the columns of the ``scores/`` contract, for the trained model's test split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scoring.calibration import Calibration
    from scoring.detector import score_images

    model, test = trained.model, trained.split.holdout
    scores = score_images(model, test.images, test.labels if model.num_classes else None, num_samples=4, seed=0)
    calibration = Calibration.from_dict(model.calibration)
    n = len(test)
    ids = test.example_ids if ids_prefix == "digits" else np.array([f"{ids_prefix}:{i}" for i in range(n)])
    table = pa.table(
        {
            "example_id": ids.astype(str),
            "neg_elbo": scores["neg_elbo"],
            "reconstruction_nll": scores["reconstruction_nll"],
            "kl": scores["kl"],
            "iwae_nll": pa.nulls(n, pa.float64()),
            "p_value": calibration.p_values(scores["neg_elbo"]),
            "threshold": np.full(n, calibration.threshold),
            "is_anomaly": calibration.is_anomaly(scores["neg_elbo"]),
            "label": test.labels.astype(np.int64),
            "model_name": [trained.model_name] * n,
            "model_version": [trained.version] * n,
            "scored_at": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
            "source": ["digits"] * n,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")
    return str(folder), scores["neg_elbo"]


@pytest.mark.parametrize("which", ["plain", "conditional"])
def test_report_renders_every_section_with_embedded_images(which, request, tmp_path):
    from mlflow import MlflowClient

    trained = request.getfixturevalue(f"trained_{which}")
    scores_dir, neg_elbo = write_scores(tmp_path / "scores", trained)
    path = render_report(scores_dir, f"models:/{trained.model_name}/{trained.version}", tmp_path / "r.html", top=7)

    page = parse(path)
    assert page.sections == [
        "overview",
        "learning-curves",
        "reconstructions",
        "latent-map",
        "latent-space",
        "samples",
        "histogram",
        "top-anomalies",
    ]
    figures = [i for i in page.images if i.get("class") == "figure"]
    digits = [i for i in page.images if i.get("class") == "digit"]
    first, second = trained.split.holdout.example_ids[np.argsort(-neg_elbo, kind="stable")[:2]]
    assert [i["alt"] for i in figures] == [
        "learning curves",
        "reconstructions",
        "latent map",
        "latent grid",
        f"interpolation from {first} to {second}",  # the two worst anomalies
        "samples per label" if which == "conditional" else "prior samples",
        "score histogram",
    ]
    latent = path.read_text().split("<section id='latent-space'>")[1].split("</section>")[0]
    assert latent.count("<img ") == 2 and latent.count("<p class='note'>") == 2  # each picture has its caption
    assert decode_png(figures[3]["src"]).size[0] > 200
    assert len(digits) == 7 and page.table_rows == 7 + 1  # the header and the top 7
    worst = trained.split.holdout.example_ids[np.argmax(neg_elbo)]
    assert digits[0]["alt"] == worst  # ranked by score, highest first
    image = decode_png(digits[0]["src"])
    assert image.size == (64, 64)  # 8x8 enlarged by whole pixels
    # beside each top anomaly's image, the heat map of its per-pixel NLL, the same size, with a caption
    assert page.row_images[1:] == [["digit", "heatmap"]] * 7
    heatmaps = [i for i in page.images if i.get("class") == "heatmap"]
    assert decode_png(heatmaps[0]["src"]).size == (64, 64) and decode_png(heatmaps[0]["src"]).mode == "RGB"
    assert heatmaps[0]["alt"].startswith(f"per-pixel NLL of {worst}")
    assert "brighter = the pixels the model found least probable" in path.read_text().lower()
    assert decode_png(figures[0]["src"]).size[0] > 200
    artifacts = MlflowClient().list_artifacts(trained.run_id, "report")
    assert [a.path for a in artifacts] == ["report/r.html"]


def test_report_command_takes_the_model_from_the_scores(trained_plain, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    scores_dir, _ = write_scores(tmp_path / "scores", trained_plain)
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(
        main, ["report", "--scores", scores_dir, "--output", str(out), "--top", "3", "--no-mlflow"]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    page = parse(out)
    assert sum(i.get("class") == "digit" for i in page.images) == 3
    assert "vae-test-plain" in out.read_text()


def test_report_finds_images_of_other_inputs_with_input(trained_plain, tmp_path):
    """Example ids that are not built-in digits need --input; without it the page says so."""
    scores_dir, _ = write_scores(tmp_path / "scores", trained_plain, ids_prefix="mine.npz")
    uri = f"models:/{trained_plain.model_name}/{trained_plain.version}"

    without = parse(render_report(scores_dir, uri, tmp_path / "a.html", top=4, log_to_mlflow=False))
    assert not [i for i in without.images if i.get("class") in ("digit", "heatmap")]
    assert "reconstructions" in without.sections and "latent-map" not in without.sections

    test = trained_plain.split.holdout
    np.savez(tmp_path / "mine.npz", x=test.images[..., 0], y=test.labels)
    with_input = parse(
        render_report(scores_dir, uri, tmp_path / "b.html", top=4, input_spec=str(tmp_path / "mine.npz"))
    )
    assert len([i for i in with_input.images if i.get("class") == "digit"]) == 4
    assert with_input.row_images[1:] == [["digit", "heatmap"]] * 4
    assert "latent-map" in with_input.sections


def test_report_errors_are_plain(trained_plain, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(FileNotFoundError):
        read_scores(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"example_id": ["a"]}), tmp_path / "bad" / "p.parquet")
    with pytest.raises(data_lib.DataError, match="neg_elbo"):
        read_scores(tmp_path / "bad")
    (tmp_path / "anonymous").mkdir()
    pq.write_table(pa.table({"example_id": ["a"], "neg_elbo": [1.0]}), tmp_path / "anonymous" / "p.parquet")
    with pytest.raises(ValueError, match="--model"):
        render_report(tmp_path / "anonymous", None, tmp_path / "x.html")


@pytest.mark.parametrize("which", ["plain", "conditional"])
def test_heat_maps_are_the_per_pixel_nll_that_sums_to_the_scored_reconstruction_nll(which, request, tmp_path):
    from pipeline.report.html import lookup_images, top_pixel_nll
    from training.data.validate import ModelSpec

    trained = request.getfixturevalue(f"trained_{which}")
    frame = read_scores(write_scores(tmp_path / "scores", trained)[0])
    images = lookup_images(frame["example_id"].to_numpy(), None, ModelSpec.of(trained.model))
    heat = top_pixel_nll(frame, trained.model, images, 5)
    top = frame.sort_values("neg_elbo", ascending=False).head(5)
    assert list(heat) == top["example_id"].tolist()
    np.testing.assert_allclose(
        [heat[e].sum() for e in heat], top["reconstruction_nll"].to_numpy(), rtol=1e-5
    )  # the same samples and seed as the scores


def test_heatmap_png_is_brighter_where_the_nll_is_higher():
    from PIL import Image

    from pipeline.report.html import heatmap_png

    values = np.zeros((8, 8, 1))
    values[2, 5] = 3.0
    picture = Image.open(io.BytesIO(heatmap_png(values)))
    assert picture.size == (64, 64) and picture.mode == "RGB"
    pixels = np.asarray(picture).astype(int).sum(axis=-1)
    assert pixels[2 * 8, 5 * 8] == pixels.max() > pixels[0, 0] == pixels.min()
    flat = np.asarray(Image.open(io.BytesIO(heatmap_png(np.ones((8, 8, 1))))))
    assert len(np.unique(flat.reshape(-1, 3), axis=0)) == 1  # no differences: one colour


def test_image_png_enlarges_by_whole_pixels():
    from PIL import Image

    png = image_png(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1))
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (64, 64) and picture.mode == "L"
    assert np.asarray(picture)[0, 0] == 0 and np.asarray(picture)[-1, -1] == 255


# --- single files written whole: the report, the grids, the evaluation's tables -------------------


def test_write_atomically_replaces_the_file_in_one_step_and_leaves_no_temporary_file(tmp_path):
    import os

    from pipeline.outputs.files import write_atomically

    path = tmp_path / "report.html"
    assert write_atomically(path, "<p>one</p>") == path and path.read_text() == "<p>one</p>"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600
    old_inode = path.stat().st_ino
    with open(path, "rb") as reader:  # a reader that opened the old file keeps reading it, whole
        write_atomically(path, b"<p>two</p>")
        assert reader.read() == b"<p>one</p>"
    assert path.read_bytes() == b"<p>two</p>" and path.stat().st_ino != old_inode  # renamed in, not rewritten
    write_atomically(path, lambda tmp: tmp.write_text("<p>three</p>"))
    assert path.read_text() == "<p>three</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_atomically_keeps_the_old_file_and_no_temporary_one_when_writing_fails(tmp_path):
    from pipeline.outputs.files import write_atomically

    path = tmp_path / "grid.png"
    path.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    with pytest.raises(FileNotFoundError):  # no folder: nothing written anywhere
        write_atomically(tmp_path / "missing" / "x.png", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_save_grid_replaces_the_png_whole_or_leaves_the_old_one(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from pipeline.report import figures

    class Broken(Figure):
        def savefig(self, fname, *args, **kwargs):
            with open(fname, "wb") as file:
                file.write(b"\x89PNG half")
            raise OSError("disk full")

    monkeypatch.setattr(figures, "read_synthetic", lambda *args, **kwargs: None)
    monkeypatch.setattr(figures, "grid_figure", lambda *args, **kwargs: Figure(figsize=(1, 1)))
    path = figures.save_grid(tmp_path / "synthetic", "prior")
    assert path == tmp_path / "synthetic-prior.png"
    old = path.read_bytes()
    assert old[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(figures, "grid_figure", lambda *args, **kwargs: Broken(figsize=(1, 1)))
    with pytest.raises(OSError, match="disk full"):
        figures.save_grid(tmp_path / "synthetic", "prior")
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["synthetic-prior.png"]


def test_render_report_replaces_report_html_whole(trained_plain, tmp_path):
    scores_dir, _ = write_scores(tmp_path / "scores", trained_plain)
    uri = f"models:/{trained_plain.model_name}/{trained_plain.version}"
    out = tmp_path / "site" / "report.html"
    out.parent.mkdir()
    out.write_text("<p>the previous report</p>")
    with open(out, encoding="utf-8") as reader:  # a reader of the previous page
        render_report(scores_dir, uri, out, top=3, log_to_mlflow=False)
        assert reader.read() == "<p>the previous report</p>"
    assert "vae-test-plain" in out.read_text() and [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_the_report_finds_the_scored_input_the_scores_name(tmp_path):
    """Without --input the report reads the images from where the scores say they came from: the
    manifest's input, else the folder holding every row's source; the built-in digits by name."""
    import json

    import pandas as pd

    from pipeline.report.html import scored_input

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for name in ("a.png", "b.png"):
        (pngs / name).write_bytes(b"")
    scores = tmp_path / "out" / "scores"
    scores.mkdir(parents=True)
    frame = pd.DataFrame({"example_id": ["a.png", "b.png"], "source": [str(pngs / "a.png"), str(pngs / "b.png")]})
    assert scored_input(scores, frame) == str(pngs)  # no manifest: the sources' folder
    (scores / "_manifest.json").write_text(json.dumps({"input": "digits:holdout"}))
    assert scored_input(scores, frame) == "digits"
    (scores / "_manifest.json").write_text(json.dumps({"input": "gone/elsewhere"}))
    assert scored_input(scores, frame.assign(source=["gone/a.png", "gone/b.png"])) is None
