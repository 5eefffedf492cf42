"""Image lookup and image checks: every documented place resolves, nothing escapes, bad files get stable codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from docval_sft.errors import Location
from docval_sft.images import ImageInfo, ImageProblem, candidate_paths, check_image, resolve_image
from docval_sft.records import PhaseARecord, load_records, parse_record
from docval_sft.validate import prepare_split

BASE: dict[str, Any] = {
    "question": "What is the total amount?",
    "cot_steps": [f"step text {i}" for i in range(1, 8)],
    "answer_pred": "12.50",
    "bbox_pred": [1.0, 2.0, 30.0, 40.0],
}


def png(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB", fmt: str = "PNG") -> Path:
    """Write a tiny real image (creating its folders) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path, format=fmt)
    return path


def record(data_file: Path, **fields: Any) -> PhaseARecord:
    """A valid PhaseARecord built through the real parser (``fields`` override BASE; None drops a key)."""
    raw = {k: v for k, v in {**BASE, **fields}.items() if v is not None}
    rec, issues = parse_record(raw, Location(data_file, 0))
    assert rec is not None, [str(i) for i in issues]
    return rec


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(image root, data folder, data file): the root and the data file live in different folders."""
    root, data_dir = tmp_path / "images", tmp_path / "data"
    root.mkdir()
    data_dir.mkdir()
    return root, data_dir, data_dir / "D3_train.json"


# ------------------------------------------------------------------ dataset folders

@pytest.mark.parametrize(
    ("image_id", "image_file", "folder"),
    [
        ("cord_00000", "receipt_00000.png", "CORD"),
        ("docvqa_nkbl0226_p0", "nkbl0226_p0.jpg", "DocVQA/images"),
        ("funsd_82092117", "82092117.png", "FUNSD"),
        ("sroie_X00016469612", "X00016469612.jpg", "SROIE"),
        ("sroie_X00016469612", "X00016469612.jpg", "SROIE/SROIE2019/train/img"),
        ("sroie_X00016469612", "X00016469612.jpg", "SROIE/SROIE2019/test/img"),
        ("visualmrc_val_00012", "val_00012.png", "VisualMRC"),
    ],
    ids=["cord", "docvqa", "funsd", "sroie-flat", "sroie-2019-train", "sroie-2019-test", "visualmrc"],
)
def test_dataset_place_resolves(layout: tuple[Path, Path, Path], image_id: str, image_file: str, folder: str) -> None:
    """Each prefix finds its image in the original layout; all three SROIE places work (the old trainers dropped SROIE)."""
    root, data_dir, data_file = layout
    expected = png(root / folder / image_file)
    rec = record(data_file, image_id=image_id, image_file=image_file)
    assert resolve_image(rec, root, data_dir) == expected


def test_sroie_lookup_order(layout: tuple[Path, Path, Path]) -> None:
    """Candidates are tried in the documented order; the flat SROIE/ place wins over the nested ones."""
    root, data_dir, data_file = layout
    rec = record(data_file, image_id="sroie_X1", image_file="X1.jpg")
    assert candidate_paths(rec, root, data_dir) == [
        root / "SROIE" / "X1.jpg",
        root / "SROIE/SROIE2019/train/img" / "X1.jpg",
        root / "SROIE/SROIE2019/test/img" / "X1.jpg",
        root / "X1.jpg",
        root / "SROIE" / "images" / "X1.jpg",
    ]
    png(root / "SROIE/SROIE2019/test/img/X1.jpg")
    flat = png(root / "SROIE/X1.jpg")
    assert resolve_image(rec, root, data_dir) == flat


@pytest.mark.parametrize(
    ("image_id", "place"),
    [
        ("cord_00001", "{file}"),
        ("funsd_82000001", "{file}"),
        ("cord_00001", "CORD/images/{file}"),
        ("funsd_82000001", "FUNSD/images/{file}"),
        ("visualmrc_val_00001", "VisualMRC/images/{file}"),
    ],
)
def test_fallback_places(layout: tuple[Path, Path, Path], image_id: str, place: str) -> None:
    """<root>/<file> and <root>/<DATASET>/images/<file> are accepted when the dataset folder lacks the image."""
    root, data_dir, data_file = layout
    expected = png(root / place.format(file="doc.png"))
    rec = record(data_file, image_id=image_id, image_file="doc.png")
    assert resolve_image(rec, root, data_dir) == expected


@pytest.mark.parametrize(
    ("image_id", "dataset", "folder"),
    [
        ("bad_fallback", "CORD", "CORD"),
        ("X00016469612", "SROIE", "SROIE/SROIE2019/test/img"),
        ("page_17", "DocVQA", "DocVQA/images"),
    ],
)
def test_unknown_prefix_uses_dataset_field(layout: tuple[Path, Path, Path], image_id: str, dataset: str,
                                           folder: str) -> None:
    """An image_id without a known prefix falls back to the ``dataset`` field's folders."""
    root, data_dir, data_file = layout
    expected = png(root / folder / "doc.png")
    rec = record(data_file, image_id=image_id, image_file="doc.png", dataset=dataset)
    assert resolve_image(rec, root, data_dir) == expected


def test_unknown_dataset_field_cannot_leave_root(layout: tuple[Path, Path, Path]) -> None:
    """A ``dataset`` value with ``..`` (used for the generic <DATASET>/images place) is a path_escape, not a lookup."""
    root, data_dir, data_file = layout
    rec = record(data_file, image_id="x_1", image_file="doc.png", dataset="../../etc")
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "path_escape"


def test_symlinked_dataset_folder_resolves(tmp_path: Path) -> None:
    """A user-made symlink for a dataset folder under the image root is a normal layout, not an escape."""
    root, elsewhere = tmp_path / "images", tmp_path / "disk" / "CORD"
    root.mkdir()
    real = png(elsewhere / "receipt_1.png")
    (root / "CORD").symlink_to(elsewhere, target_is_directory=True)
    rec = record(tmp_path / "d.json", image_id="cord_1", image_file="receipt_1.png")
    found = resolve_image(rec, root, tmp_path)
    assert found == root / "CORD" / "receipt_1.png" and found.resolve() == real.resolve()


# ------------------------------------------------------------------ record-local paths

@pytest.mark.parametrize("key", ["image_path", "image"])
def test_record_local_relative_path(layout: tuple[Path, Path, Path], key: str) -> None:
    """``image_path`` / ``image`` relative to the data file's folder resolves (image_file is then optional)."""
    root, data_dir, data_file = layout
    expected = png(data_dir / "imgs" / "page.png")
    png(root / "CORD" / "page.png")  # a same-named root image must not win over the record's own path
    rec = record(data_file, image_id="cord_1", image_file=None, **{key: "imgs/page.png"})
    assert rec.image_file == "page.png"
    assert resolve_image(rec, root, data_dir) == expected


def test_record_local_path_through_loader(layout: tuple[Path, Path, Path]) -> None:
    """End to end: prepare_split resolves a relative ``image_path`` against the folder of the file it loaded."""
    root, data_dir, data_file = layout
    expected = png(data_dir / "imgs" / "page.png", size=(64, 48))  # holds BASE's box
    data_file.write_text(json.dumps([{**BASE, "image_id": "cord_1", "image_path": "imgs/page.png"}]), "utf-8")
    assert load_records(data_file).issues == []
    split = prepare_split("train", data_file, root)
    assert split.errors == [] and split.image_paths == [expected]


@pytest.mark.parametrize("local", ["../outside.png", "imgs/../../outside.png"])
def test_record_local_path_escape(layout: tuple[Path, Path, Path], local: str) -> None:
    """A relative record path that leaves the data file's folder is refused even when the file exists."""
    root, data_dir, data_file = layout
    png(data_dir.parent / "outside.png")
    rec = record(data_file, image_id="cord_1", image_path=local)
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "path_escape"
    assert local in str(info.value)


def test_absolute_record_path_needs_flag(layout: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """An absolute record path is refused (absolute_path, naming --allow-absolute-paths) unless explicitly allowed."""
    root, data_dir, data_file = layout
    absolute = png(tmp_path / "elsewhere" / "page.png")
    rec = record(data_file, image_id="cord_1", image_path=str(absolute))
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "absolute_path"
    assert "--allow-absolute-paths" in str(info.value)
    assert resolve_image(rec, root, data_dir, allow_absolute_paths=True) == absolute


# ------------------------------------------------------------------ missing image

@pytest.mark.parametrize(
    ("image_id", "dataset", "n_places"),
    [("sroie_X1", None, 5), ("cord_00001", None, 3), ("bad_x", "FUNSD", 3), ("bad_x", None, 1)],
)
def test_missing_image_lists_every_path(layout: tuple[Path, Path, Path], image_id: str, dataset: str | None,
                                        n_places: int) -> None:
    """A missing image is ``missing_image`` and the message names every path tried, nothing substituted."""
    root, data_dir, data_file = layout
    rec = record(data_file, image_id=image_id, image_file="nowhere.png", dataset=dataset)
    tried = candidate_paths(rec, root, data_dir)
    assert len(tried) == n_places
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "missing_image"
    message = str(info.value)
    for path in tried:
        assert str(path) in message
    assert "nowhere.png" in message


def test_missing_record_local_image(layout: tuple[Path, Path, Path]) -> None:
    """A record-local path that does not exist is missing_image naming the one path tried."""
    root, data_dir, data_file = layout
    rec = record(data_file, image_id="cord_1", image_path="imgs/none.png")
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "missing_image"
    assert str(data_dir / "imgs" / "none.png") in str(info.value)


def test_directory_is_not_an_image(layout: tuple[Path, Path, Path]) -> None:
    """A directory with the image's name is never taken for the image: refused, naming what it is."""
    root, data_dir, data_file = layout
    (root / "CORD" / "receipt.png").mkdir(parents=True)
    rec = record(data_file, image_id="cord_1", image_file="receipt.png")
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "not_a_regular_file" and "is a directory" in str(info.value)


# ------------------------------------------------------------------ check_image

def _noise_png() -> bytes:
    """A PNG with incompressible content, so cutting it in half really cuts image data."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    """A PNG cut to half its bytes is ``unreadable_image`` (never a blank substitute)."""
    data = _noise_png()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageProblem) as info:
        check_image(path)
    assert info.value.code == "unreadable_image"
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [("text.png", b"This is a text file, not a PNG image.\n"), ("empty.png", b"")],
    ids=["text", "zero-bytes"],
)
def test_non_image_file(tmp_path: Path, name: str, content: bytes) -> None:
    """A text file or a 0-byte file named .png is ``not_an_image``."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageProblem) as info:
        check_image(path)
    assert info.value.code == "not_an_image"
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("mode", "fmt", "name"),
    [("CMYK", "JPEG", "cmyk.jpg"), ("RGBA", "PNG", "rgba.png"),
     ("P", "PNG", "palette.png"), ("L", "PNG", "gray.png"), ("RGB", "JPEG", "rgb.jpg")],
)
def test_unusual_modes_pass(tmp_path: Path, mode: str, fmt: str, name: str) -> None:
    """Valid images in any common mode pass and report their real size and mode."""
    path = png(tmp_path / name, size=(13, 7), mode=mode, fmt=fmt)
    assert check_image(path) == ImageInfo(path, 13, 7, mode)


def test_16_bit_images_are_refused_not_clipped(tmp_path: Path) -> None:
    """PIL's RGB conversion clips 16-bit values to 255 (a white page): an error, never a silent corruption."""
    path = png(tmp_path / "gray16.png", size=(13, 7), mode="I;16", fmt="PNG")
    with pytest.raises(ImageProblem) as info:
        check_image(path)
    assert info.value.code == "unsupported_mode" and "convert it to 8-bit" in str(info.value)


def test_transparent_background_reaches_the_model_white(tmp_path: Path) -> None:
    """open_image leaves RGBA to the processor, which composites onto white (convert('RGB') would give black)."""
    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    from docval_sft.images import open_image

    path = tmp_path / "transparent.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    image = open_image(path)
    assert image.mode == "RGBA"
    assert convert_to_rgb(image, return_numpy=True)[0, 0].tolist() == [255, 255, 255]


def test_decompression_bomb_is_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image past PIL's pixel limit is ``image_too_large`` (limit lowered instead of allocating a huge image)."""
    path = png(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 x limit: PIL raises, not just warns
    with pytest.raises(ImageProblem) as info:
        check_image(path)
    assert info.value.code == "image_too_large"
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ custom datasets


def test_custom_dataset_folder_resolves(layout: tuple[Path, Path, Path]) -> None:
    """``dataset: MyInvoices`` finds ROOT/MyInvoices/inv1.png; its own folder is tried before the root."""
    root, data_dir, data_file = layout
    expected = png(root / "MyInvoices" / "inv1.png")
    rec = record(data_file, image_id="inv1", image_file="inv1.png", dataset="MyInvoices")
    assert candidate_paths(rec, root, data_dir) == [
        root / "MyInvoices" / "inv1.png", root / "inv1.png", root / "MyInvoices" / "images" / "inv1.png"]
    png(root / "inv1.png")  # a same-named image at the root does not win over the dataset's folder
    assert resolve_image(rec, root, data_dir) == expected


def test_dataset_field_wins_over_a_released_looking_prefix(layout: tuple[Path, Path, Path]) -> None:
    """``cord_17`` in ``dataset: MyInvoices`` is looked up in MyInvoices/ (the field is the key, see records.py)."""
    root, data_dir, data_file = layout
    expected = png(root / "MyInvoices" / "cord_17.png")
    rec = record(data_file, image_id="cord_17", image_file="cord_17.png", dataset="MyInvoices")
    assert resolve_image(rec, root, data_dir) == expected


def test_custom_dataset_counts_and_lookups_through_prepare_split(layout: tuple[Path, Path, Path]) -> None:
    """validate-data's per-dataset counts group by the dataset field; the released lookups are unchanged."""
    root, data_dir, data_file = layout
    png(root / "MyInvoices" / "inv1.png", size=(64, 48))
    png(root / "DocVQA" / "images" / "p1.png", size=(64, 48))
    rows = [{**BASE, "image_id": "inv_1", "image_file": "inv1.png", "dataset": "MyInvoices"},
            {**BASE, "image_id": "docvqa_p1", "image_file": "p1.png", "dataset": "DocVQA"},
            {**BASE, "image_id": "docvqa_p1", "image_file": "p1.png", "question": "Which date?"}]
    data_file.write_text(json.dumps(rows), "utf-8")
    split = prepare_split("train", data_file, root)
    assert split.errors == [] and split.summary()["per_dataset"] == {"docvqa": 2, "myinvoices": 1}
    assert split.image_paths == [root / "MyInvoices" / "inv1.png"] + [root / "DocVQA" / "images" / "p1.png"] * 2


# ------------------------------------------------------------------ the image root itself


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_unusable_image_dir_is_one_error(layout: tuple[Path, Path, Path], kind: str) -> None:
    """A wrong --image-dir is one DocvalError before any record is checked, not one "not found" per record."""
    from docval_sft.errors import DocvalError

    root, data_dir, data_file = layout
    bad_root = root / "nope"
    if kind == "file":
        bad_root.write_text("not a folder\n")
    data_file.write_text(json.dumps([{**BASE, "image_id": f"cord_{i}", "image_file": f"{i}.png"}
                                     for i in range(64)]), "utf-8")
    with pytest.raises(DocvalError) as info:
        prepare_split("train", data_file, bad_root)
    what = "does not exist" if kind == "missing" else "is not a directory"
    assert str(info.value).startswith(f"--image-dir {bad_root} {what}, but 64 record(s) of {data_file}")


def test_image_dir_not_needed_when_records_carry_their_paths(layout: tuple[Path, Path, Path]) -> None:
    """Records that all name their own image need no image root: a missing one is not an error."""
    root, data_dir, data_file = layout
    expected = png(data_dir / "imgs" / "page.png", size=(64, 48))
    data_file.write_text(json.dumps([{**BASE, "image_id": "cord_1", "image_path": "imgs/page.png"}]), "utf-8")
    split = prepare_split("train", data_file, root / "does-not-exist")
    assert split.errors == [] and split.image_paths == [expected]


# ------------------------------------------------------------------ what a path may resolve to


def _linked(root: Path, target: str | Path, data_file: Path) -> PhaseARecord:
    """A cord record whose image CORD/x.png is a symlink to ``target``."""
    (root / "CORD").mkdir(parents=True, exist_ok=True)
    (root / "CORD" / "x.png").symlink_to(target)
    return record(data_file, image_id="cord_x", image_file="x.png")


@pytest.mark.parametrize(
    ("target", "code", "says"),
    [("/dev/zero", "not_a_regular_file", "is a character device"),
     ("/dev/null", "not_a_regular_file", "is a character device"),
     ("/etc/hostname", "system_path", "is a system file under /etc"),
     ("/proc/self/status", "system_path", "is a system file under /proc"),
     ("/etc", "not_a_regular_file", "is a directory")],
)
def test_symlink_to_a_device_or_system_file_is_refused(layout: tuple[Path, Path, Path], target: str, code: str,
                                                       says: str) -> None:
    """A symlink inside the root may point anywhere on disk, but never to a device, a directory or a system file."""
    root, data_dir, data_file = layout
    if not Path(target).exists():
        pytest.skip(f"{target} does not exist here")
    rec = _linked(root, target, data_file)
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == code and says in str(info.value)
    assert f"{root / 'CORD' / 'x.png'} (a symlink to " in str(info.value)


def test_symlink_to_a_fifo_is_refused_without_blocking(layout: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes: it is refused from its file type, through prepare_split too."""
    import os

    root, data_dir, data_file = layout
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _linked(root, fifo, data_file)
    data_file.write_text(json.dumps([{**BASE, "image_id": "cord_x", "image_file": "x.png"}]), "utf-8")
    (issue,) = prepare_split("train", data_file, root).errors
    assert issue.code == "not_a_regular_file" and "is a FIFO" in issue.message and issue.field == "image_file"


def test_symlink_to_a_regular_file_outside_the_root_is_followed(layout: tuple[Path, Path, Path],
                                                                tmp_path: Path) -> None:
    """Linked-in images from another disk keep working (the lexical containment check is unchanged)."""
    root, data_dir, data_file = layout
    real = png(tmp_path / "other-disk" / "scan.png")
    rec = _linked(root, real, data_file)
    assert resolve_image(rec, root, data_dir) == root / "CORD" / "x.png"


def test_broken_symlink_names_its_target(layout: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, data_dir, data_file = layout
    rec = _linked(root, tmp_path / "gone.png", data_file)
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "missing_image" and str(tmp_path / "gone.png") in str(info.value)


def test_absolute_record_path_to_a_device_is_refused(layout: tuple[Path, Path, Path]) -> None:
    """--allow-absolute-paths allows paths outside the root, not devices."""
    root, data_dir, data_file = layout
    rec = record(data_file, image_id="cord_1", image_path="/dev/zero")
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir, allow_absolute_paths=True)
    assert info.value.code == "not_a_regular_file"


# ------------------------------------------------------------------ boxes against the image size


@pytest.mark.parametrize(
    ("box", "field", "ok"),
    [([0, 0, 128, 96], "bbox_pred", True),  # exactly 2x the 64x48 image: still accepted
     ([0, 0, 60, 97], "bbox_pred", False),  # y past 2 x 48
     ([129, 0, 130, 10], "bbox_pred", False),  # x past 2 x 64
     ([0, 0, 1000, 1000], "bbox_gt", False)],
)
def test_box_far_outside_the_image_is_an_error(layout: tuple[Path, Path, Path], box: list[int], field: str,
                                               ok: bool) -> None:
    """Once the image size is known, a box beyond twice its width/height is one error naming record and field."""
    root, data_dir, data_file = layout
    png(root / "CORD" / "r.png", size=(64, 48))
    raw = {**BASE, "image_id": "cord_1", "image_file": "r.png", field: box}
    data_file.write_text(json.dumps([raw]), "utf-8")
    split = prepare_split("train", data_file, root)
    if ok:
        assert split.errors == [] and len(split.records) == 1
        return
    (issue,) = split.errors
    assert (issue.code, issue.field, issue.location.index) == ("bbox_outside_image", field, 0)
    assert f"lies far outside the 64x48 image (x up to 128, y up to 96 allowed)" in issue.message
    assert split.records == []


def test_preview_refuses_a_box_far_outside_its_image(layout: tuple[Path, Path, Path]) -> None:
    """preview-sample/sample pick a record through select_record: the same check, one line naming the field."""
    from docval_sft.errors import DocvalError
    from docval_sft.preview import select_record

    root, data_dir, data_file = layout
    png(root / "CORD" / "r.png", size=(64, 48))
    data_file.write_text(json.dumps([{**BASE, "image_id": "cord_1", "image_file": "r.png",
                                      "bbox_pred": [0, 0, 500, 40]}]), "utf-8")
    with pytest.raises(DocvalError) as info:
        select_record(data_file, root, index=0)
    assert "record 0 [image_id=cord_1]: field 'bbox_pred': box [0, 0, 500, 40] lies far outside" in str(info.value)
