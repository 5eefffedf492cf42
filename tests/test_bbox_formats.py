"""Box formats end to end: the grid ceiling of a perfect student, and norm10000 through render, parse, convert back,
validation, preview and the training dry run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.convert import record_target
from docval_sft.format import BBOX_FORMATS, box_to_pixels, from_grid, parse_output, target_box, to_grid
from docval_sft.metrics import iou
from docval_sft.validate import prepare_split

runner = CliRunner()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def demo_boxes(demo) -> list[tuple[list[float], tuple[int, int]]]:
    """Every demo record's teacher box with its page size (train, val and test)."""
    out = []
    for name, path in (("train", demo.data.train), ("val", demo.data.val), ("test", demo.data.test)):
        split = prepare_split(name, path, demo.data.image_dir)
        out += [(list(r.bbox_pred), size) for r, size in zip(split.records, split.image_sizes, strict=True)]
    return out


def test_a_finer_grid_lifts_the_ceiling_of_a_perfect_student(demo_boxes) -> None:
    from bbox_grid_ceiling import ceiling

    measured = {fmt: ceiling(demo_boxes, fmt) for fmt in BBOX_FORMATS}
    assert measured["pixel"]["mean_iou"] == 1.0
    assert measured["norm1000"]["mean_iou"] < measured["norm10000"]["mean_iou"] < 1.0
    assert measured["norm1000"]["min_iou"] < measured["norm10000"]["min_iou"]
    # an independent bound: each coordinate moves by at most half a grid unit, so a w x h box keeps at least
    # (w - s/N)(h - t/N) of itself inside the rounded one: IoU >= that over (w + s/N)(h + t/N)
    for box, (pw, ph) in demo_boxes:
        w, h = box[2] - box[0], box[3] - box[1]
        for fmt, n in (("norm1000", 1000), ("norm10000", 10000)):
            got = iou(box_to_pixels(target_box(box, fmt, (pw, ph)), fmt, (pw, ph)), box)
            bound = (w - pw / n) * (h - ph / n) / ((w + pw / n) * (h + ph / n))
            assert got >= bound - 1e-9, (fmt, box, got, bound)


@settings(max_examples=200, deadline=None)
@given(w=st.integers(300, 4000), h=st.integers(300, 4000), data=st.data())
def test_norm10000_round_trip_within_half_a_unit(w: int, h: int, data: st.DataObject) -> None:
    xs = sorted(data.draw(st.floats(0, w)) for _ in range(2))
    ys = sorted(data.draw(st.floats(0, h)) for _ in range(2))
    box = [xs[0], ys[0], xs[1], ys[1]]
    grid = to_grid(box, w, h, 10000)
    assert all(isinstance(v, int) and 0 <= v <= 10000 for v in grid)
    back = from_grid(grid, w, h, 10000)
    assert all(abs(a - b) <= s / 20000 + 1e-9 for a, b, s in zip(back, box, (w, h, w, h)))


def test_norm10000_target_renders_parses_and_converts_back(demo) -> None:
    split = prepare_split("test", demo.data.test, demo.data.image_dir)
    for record, size in zip(split.records, split.image_sizes, strict=True):
        text = record_target(record, "norm10000", size)
        box = parse_output(text).bbox
        assert box is not None and all(float(v).is_integer() and 0 <= v <= 10000 for v in box)
        assert box_to_pixels(box, "norm10000", size) == pytest.approx(list(record.bbox_pred),
                                                                     abs=max(size) / 20000 + 1e-9)
    with pytest.raises(ValueError, match="norm10000.*needs the image size"):
        record_target(split.records[0], "norm10000")
    with pytest.raises(ValueError, match="choose one of pixel, norm1000, norm10000"):
        target_box([1, 2, 3, 4], "norm100", (10, 10))


def test_norm10000_through_validate_preview_and_the_dry_run(demo, tmp_path: Path) -> None:
    d = demo.data
    validate = runner.invoke(app, ["validate-data", "--train-data", str(d.train), "--image-dir", str(d.image_dir),
                                   "--model", str(demo.model_dir), "--bbox-format", "norm10000", "--json"])
    assert validate.exit_code == 0, validate.output
    preview = runner.invoke(app, ["preview-sample", "--train-data", str(d.train), "--image-dir", str(d.image_dir),
                                  "--model", str(demo.model_dir), "--index", "2", "--bbox-format", "norm10000",
                                  "--json"])
    assert preview.exit_code == 0, preview.output
    facts = json.loads(preview.stdout)
    box = parse_output(facts["target_text"]).bbox
    assert facts["bbox_format"] == "norm10000" and all(0 <= v <= 10000 for v in box)
    assert box_to_pixels(box, "norm10000", tuple(facts["image_size"])) == pytest.approx(facts["bbox"], abs=0.2)
    plan = runner.invoke(app, ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data",
                               str(d.train), "--image-dir", str(d.image_dir), "--output-dir", str(tmp_path / "run"),
                               "--bbox-format", "norm10000", "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.stdout)["preset"]["bbox_format"] == "norm10000"
    refused = runner.invoke(app, ["validate-data", "--train-data", str(d.train), "--image-dir", str(d.image_dir),
                                  "--bbox-format", "norm100"])
    assert refused.exit_code == 2 and "norm10000" in refused.output


def test_an_unknown_bbox_format_in_a_model_dir_is_one_clear_line(demo, tmp_path: Path) -> None:
    import shutil

    from docval_sft.errors import DocvalError
    from docval_sft.inference import student_identity

    merged = tmp_path / "merged"
    shutil.copytree(demo.model_dir, merged)
    (merged / "docval_sft.json").write_text(json.dumps({"base_model": "x", "bbox_format": "norm100000"}))
    with pytest.raises(DocvalError, match=r"docval_sft\.json: bbox_format 'norm100000' is unknown"):
        student_identity(None, merged)
