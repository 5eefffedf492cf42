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
    expected = png(data_dir / "imgs" / "page.png")
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
    """A directory with the image's name is not taken for the image."""
    root, data_dir, data_file = layout
    (root / "CORD" / "receipt.png").mkdir(parents=True)
    rec = record(data_file, image_id="cord_1", image_file="receipt.png")
    with pytest.raises(ImageProblem) as info:
        resolve_image(rec, root, data_dir)
    assert info.value.code == "missing_image"


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
