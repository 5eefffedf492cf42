"""Tests for docval_sft.documents: synthetic documents whose answers and boxes are exact."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from docval_sft import documents
from docval_sft.documents import DATASETS, DemoPaths, make_records, write_bad_records, write_demo_data

FOLDERS = {"CORD": "CORD", "DocVQA": "DocVQA/images", "FUNSD": "FUNSD",
           "SROIE": "SROIE/SROIE2019/train/img", "VisualMRC": "VisualMRC"}
PREFIXES = {"CORD": "cord_", "DocVQA": "docvqa_", "FUNSD": "funsd_", "SROIE": "sroie_X000",
            "VisualMRC": "visualmrc_val_"}
DOC_TYPES = {"CORD": "receipt", "DocVQA": "invoice", "FUNSD": "form", "SROIE": "receipt", "VisualMRC": "web page"}
STEP_PREFIX = re.compile(r"^\s*Step\s*\d+\s*:", re.IGNORECASE)


def image_path(image_dir: Path, record: dict) -> Path:
    return image_dir / FOLDERS[record["dataset"]] / record["image_file"]


def luminance(image: Image.Image, box: tuple[int, int, int, int]) -> bytes:
    return image.crop(box).convert("L").tobytes()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    image_dir = tmp_path_factory.mktemp("docs") / "images"
    return image_dir, make_records(40, image_dir, seed=7)


def test_same_seed_gives_identical_records_and_image_bytes(tmp_path: Path) -> None:
    first = make_records(12, tmp_path / "a", seed=3)
    second = make_records(12, tmp_path / "b", seed=3)
    assert first == second
    for record in first[::3]:
        assert image_path(tmp_path / "a", record).read_bytes() == image_path(tmp_path / "b", record).read_bytes()
    assert make_records(12, tmp_path / "c", seed=4) != first


def test_records_follow_the_phase_a_schema(sample: tuple[Path, list[dict]]) -> None:
    _, records = sample
    assert len(records) == 40
    for r in records:
        assert r["image_id"].startswith(PREFIXES[r["dataset"]])
        assert "/" not in r["image_file"] and r["image_file"].endswith((".png", ".jpg"))
        assert r["question"].strip() and r["answer_pred"].strip() and "\n" not in r["answer_pred"]
        assert r["answer_gt"] == (r["answer_pred"] if r["dataset"] in ("DocVQA", "VisualMRC") else "")
        assert r["bbox_gt"] is None and r["val_accept"] is True and r["val_scores"] == {"anls": 1.0, "iou": 1.0}
        steps = r["cot_steps"]
        assert len(steps) == 7
        assert all(s.strip() and "\n" not in s and not STEP_PREFIX.match(s) for s in steps)
        assert DOC_TYPES[r["dataset"]] in steps[0]
        assert r["answer_pred"] in steps[4] and str(r["bbox_pred"]) in steps[6]
        assert r["raw_output"].endswith(f"ANSWER: {r['answer_pred']}\nBBOX: {r['bbox_pred']}")
        # The answer is one of the drawn spans, with the very same box.
        assert {"text": r["answer_pred"], "bbox": r["bbox_pred"]} in [
            {"text": g["text"], "bbox": g["bbox"]} for g in r["regions"]]
    json.dumps(records)  # JSON-ready


def test_boxes_cover_ink_and_nothing_beside_it(sample: tuple[Path, list[dict]]) -> None:
    image_dir, records = sample
    for r in records:
        path = image_path(image_dir, r)
        assert path.is_file(), path
        with Image.open(path) as image:
            assert image.mode == "RGB"
            w, h = image.size
            assert 300 <= w <= 1200 and 300 <= h <= 1200
            x1, y1, x2, y2 = r["bbox_pred"]
            assert all(isinstance(v, float) for v in r["bbox_pred"])
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            box = (int(x1), int(y1), int(x2), int(y2))
            assert min(luminance(image, box)) < 100, f"no ink in the box of {r['image_id']}: {r['question']}"
            for strip in ((box[0] - 5, box[1], box[0] - 2, box[3]), (box[2] + 2, box[1], box[2] + 5, box[3])):
                pixels = luminance(image, strip)
                assert sum(pixels) / len(pixels) > 200, f"ink just outside the box of {r['image_id']}"


def test_mixes_all_datasets_with_sroie_in_its_nested_folder(sample: tuple[Path, list[dict]]) -> None:
    image_dir, records = sample
    assert set(Counter(r["dataset"] for r in records)) == set(DATASETS)
    sroie = [r for r in records if r["dataset"] == "SROIE"]
    assert all((image_dir / "SROIE" / "SROIE2019" / "train" / "img" / r["image_file"]).is_file() for r in sroie)
    assert not any((image_dir / "SROIE" / r["image_file"]).exists() for r in sroie)


def test_several_distinct_questions_per_image(sample: tuple[Path, list[dict]]) -> None:
    _, records = sample
    questions = defaultdict(list)
    for r in records:
        questions[r["image_id"]].append(r["question"])
    assert len(questions) < len(records) / 1.5
    for image_id, qs in list(questions.items())[:-1]:  # the last image may be cut short
        assert 2 <= len(qs) <= 4 and len(set(qs)) == len(qs), image_id


def test_progress_callback_reaches_the_total(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    make_records(9, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (9, 9) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_missing_fonts_fall_back_to_pillows_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Unknown file names: Pillow also searches the system font folders by name, so a wrong folder is not enough.
    monkeypatch.setattr(documents, "_FONT_FILES", {kind: f"NoSuch-{kind}.ttf" for kind in documents._FONT_FILES})
    documents._font.cache_clear()
    try:
        records = make_records(20, tmp_path / "images")
    finally:
        documents._font.cache_clear()
    assert len(records) == 20 and {r["dataset"] for r in records} == set(DATASETS)


def test_make_records_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    make_records(200, tmp_path)
    assert time.perf_counter() - start < 10


def test_write_demo_data_writes_disjoint_splits(tmp_path: Path) -> None:
    paths = write_demo_data(tmp_path / "demo", n_train=20, n_val=8, n_test=8, seed=1)
    assert paths == DemoPaths.under(tmp_path / "demo")
    assert paths.image_dir == paths.root / "images" and paths.train.name == "D3_train.json"
    splits = {}
    for path, n in ((paths.train, 20), (paths.val, 8), (paths.test, 8)):
        text = path.read_text(encoding="utf-8")
        assert text.startswith("[\n  {")  # a JSON array written with indent=2
        records = json.loads(text)
        assert len(records) == n and all(image_path(paths.image_dir, r).is_file() for r in records)
        splits[path.name] = {r["image_id"] for r in records}
    train, val, test = splits.values()
    assert not (train & val or train & test or val & test)
    assert paths.bad.is_file()


EXPECTED_BAD = ["fallback", "bbox_len", "bbox_inverted", "bbox_negative", "empty_question", "missing_field",
                "missing_image", "truncated_image", "not_an_image", "six_steps", "step_prefix", "wrong_type"]


def test_bad_records_cover_each_error_path(tmp_path: Path) -> None:
    image_dir = tmp_path / "images"
    records = write_bad_records(tmp_path / "bad_records.json", image_dir)
    assert json.loads((tmp_path / "bad_records.json").read_text(encoding="utf-8")) == records
    assert [r["_expect"] for r in records] == EXPECTED_BAD
    assert all(r["image_id"].startswith("bad_") and r["dataset"] == "CORD" for r in records)
    bad = {r["_expect"]: r for r in records}
    cord = image_dir / "CORD"

    assert len(bad["fallback"]["cot_steps"]) == 4 and bad["fallback"]["answer_pred"] == "N/A"
    assert bad["fallback"]["bbox_pred"] == [0, 0, 100, 100]
    with Image.open(cord / bad["fallback"]["image_file"]) as image:
        image.load()
    assert len(bad["bbox_len"]["bbox_pred"]) == 3
    assert bad["bbox_inverted"]["bbox_pred"][0] > bad["bbox_inverted"]["bbox_pred"][2]
    assert min(bad["bbox_negative"]["bbox_pred"]) < 0
    assert bad["empty_question"]["question"] == ""
    assert "answer_pred" not in bad["missing_field"]
    assert not list(image_dir.rglob(bad["missing_image"]["image_file"]))
    for expect in ("truncated_image", "not_an_image"):
        path = cord / bad[expect]["image_file"]
        assert path.is_file() and path.suffix == ".png"
        with pytest.raises(OSError), Image.open(path) as image:  # PIL's errors are OSError subclasses
            image.load()
    assert (cord / "receipt_truncated.png").stat().st_size == (cord / "receipt_bad.png").stat().st_size // 2
    assert len(bad["six_steps"]["cot_steps"]) == 6
    prefixed = bad["step_prefix"]["cot_steps"]
    assert len(prefixed) == 7 and all(s.startswith(f"Step {i}: ") for i, s in enumerate(prefixed, 1))
    assert isinstance(bad["wrong_type"]["cot_steps"], str)
    for expect in ("fallback", "six_steps", "step_prefix", "wrong_type", "empty_question"):
        assert (cord / bad[expect]["image_file"]).is_file()  # only the named defect is wrong
