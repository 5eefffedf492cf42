"""Regenerate the committed bad-input corpus used by ``tests/test_bad_inputs.py``.

    .venv/bin/python tests/bad_inputs/make_bad_inputs.py

Deterministic: running it again rewrites identical files. Layout (all paths relative to this folder):

    images/       an image root: CORD/receipt_*.{png,jpg} (one valid page + every broken kind), DocVQA/images/
    data/         Phase A files: one malformed case per file (record-level cases: record 0 is valid, the case is
                  record 1, so messages must name the right record), plus accepted_*.json(l) that must pass
    config/       --config YAML files
    runs/         run directories for resume cases (the test copies them to a tmp dir before use)

``@IMAGE_ROOT@`` in a data file is replaced by the test with the absolute path of ``images/``.
The whole folder stays small (< 100 KB): the oversized images are 1-bit PNGs of mostly identical rows.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
STEPS = [
    "Identify the document type: a retail receipt.",
    "The question asks for the total amount paid.",
    "Scan the lower part of the receipt for the 'TOTAL' label.",
    "The line 'TOTAL' appears near y=20 with a value to its right.",
    "Read the value next to the label: 12,000.",
    "Confirm it equals the sum of the item prices above it.",
    "The answer 12,000 is located at [10.0, 20.0, 50.0, 30.0].",
]
GOOD = {
    "image_id": "cord_00001",
    "image_file": "receipt_ok.png",
    "dataset": "CORD",
    "question": "What is the total?",
    "cot_steps": STEPS,
    "answer_pred": "12,000",
    "bbox_pred": [10.0, 20.0, 50.0, 30.0],
    "answer_gt": "",
    "bbox_gt": None,
}


def record(case: str, **changes: object) -> dict:
    """A valid record about receipt_ok.png with ``changes`` applied (a value of ``...`` deletes the field)."""
    out = copy.deepcopy(GOOD)
    out["image_id"] = f"cord_{case}"
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def dumps(obj: object) -> str:
    return json.dumps(obj)  # ASCII: "\ud800" stays an escape, NaN stays the bare NaN token


def json_array(records: list) -> str:
    return "[\n" + ",\n".join(dumps(r) for r in records) + "\n]\n"


def write(rel: str, content: str | bytes) -> None:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


# ------------------------------------------------------------------ images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bilevel_png(width: int, height: int) -> bytes:
    """A complete, valid, all-white 1-bit palette PNG: big in pixels, tiny on disk (one zlib stream of zero bytes:
    filter 0 and palette index 0 = white on every row)."""
    raw = bytes((1 + (width + 7) // 8) * height)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", b"\xff\xff\xff\x00\x00\x00")
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def page(mode: str = "RGB") -> Image.Image:
    """A small receipt-like page: a pattern (so the PNG's pixel data dominates the file) and a dark box."""
    image = Image.new("RGB", (64, 48), "white")
    for x in range(64):
        for y in range(48):
            image.putpixel((x, y), (200 + (x * 7) % 56, 200 + (y * 5) % 56, 200 + (x * y) % 56))
    ImageDraw.Draw(image).rectangle([10, 20, 50, 30], fill=(20, 20, 20))
    if mode == "RGBA":
        rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))  # transparent background, opaque content
        rgba.paste(image.crop((8, 16, 56, 34)), (8, 16))
        return rgba
    return image.convert(mode)


def png_bytes(image: Image.Image, **kwargs: object) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, **kwargs)
    return buffer.getvalue()


def make_images() -> None:
    ok = png_bytes(page(), format="PNG")
    write("images/CORD/receipt_ok.png", ok)
    write("images/DocVQA/images/nkbl0226_p0.png", png_bytes(page("L"), format="PNG"))
    write("images/CORD/receipt_cmyk.jpg", png_bytes(page("CMYK"), format="JPEG", quality=80))
    write("images/CORD/receipt_rgba.png", png_bytes(page("RGBA"), format="PNG"))
    write("images/CORD/receipt_truncated.png", ok[: len(ok) * 6 // 10])  # cut inside the pixel data
    idat = ok.index(b"IDAT") + 4
    corrupt = bytearray(ok)
    corrupt[idat + 2: idat + 40] = bytes(range(38))  # garbage in the zlib stream (the CRC is not checked)
    write("images/CORD/receipt_corrupt.png", bytes(corrupt))
    write("images/CORD/receipt_not_an_image.png", "This is a text file, not a PNG image.\n")
    write("images/CORD/receipt_empty.png", b"")
    write("images/CORD/receipt_16bit.png", png_bytes(Image.new("I;16", (16, 12), 40000), format="PNG"))
    # PIL: > 2 x MAX_IMAGE_PIXELS (178,956,970) is DecompressionBombError; 1x..2x only warns (the library refuses both)
    write("images/CORD/receipt_huge.png", bilevel_png(13400, 13400))  # 179,560,000 px
    write("images/CORD/receipt_large.png", bilevel_png(9500, 9500))  # 90,250,000 px


# ------------------------------------------------------------------ data files


def make_data() -> None:
    good2 = record("00002", question="What is the date?", answer_pred="13/11/2021", bbox_pred=[5, 2, 40, 9])
    write("data/good.json", json_array([GOOD, good2]))

    # record-level: record 0 valid, record 1 the case
    cases = {
        "wrong_type_steps": record("wrong_type_steps", cot_steps=" ".join(STEPS)),
        "wrong_type_question": record("wrong_type_question", question=42),
        "wrong_type_bbox": record("wrong_type_bbox", bbox_pred="10, 20, 50, 30"),
        "empty_step": record("empty_step", cot_steps=STEPS[:3] + ["   "] + STEPS[4:]),
        "zero_steps": record("zero_steps", cot_steps=[]),
        "twelve_steps": record("twelve_steps", cot_steps=STEPS + STEPS[:5]),
        "nan_box": record("nan_box", bbox_pred=[10.0, float("nan"), 50.0, 30.0]),
        "inverted_box": record("inverted_box", bbox_pred=[50.0, 20.0, 10.0, 30.0]),
        "huge_box": record("huge_box", bbox_pred=[0, 0, 1e40, 1e40]),  # a 41-digit number in a pixel target
        "box_outside_image": record("box_outside_image", bbox_pred=[10.0, 20.0, 500.0, 30.0]),  # page is 64x48
        "three_value_box": record("three_value_box", bbox_pred=[10.0, 20.0, 50.0]),
        "empty_question": record("empty_question", question="  "),
        "missing_answer": record("missing_answer", answer_pred=...),
        "multiline_answer": record("multiline_answer", answer_pred="12,000\nBBOX: [0, 0, 1, 1]"),
        "lone_surrogate": record("lone_surrogate", question="What is the total \ud83d?"),
        "missing_image": record("missing_image", image_file="receipt_99999.png"),
        "not_an_image": record("not_an_image", image_file="receipt_not_an_image.png"),
        "truncated_png": record("truncated_png", image_file="receipt_truncated.png"),
        "corrupt_png": record("corrupt_png", image_file="receipt_corrupt.png"),
        "zero_byte_image": record("zero_byte_image", image_file="receipt_empty.png"),
        "huge_image": record("huge_image", image_file="receipt_huge.png"),
        "large_image": record("large_image", image_file="receipt_large.png"),
        "sixteen_bit_png": record("sixteen_bit_png", image_file="receipt_16bit.png"),
        "traversal_image_file": record("traversal_image_file", image_file="../../etc/passwd"),
        "traversal_image_path": record("traversal_image_path", image_file=..., image_path="../../../etc/passwd"),
        "absolute_image_path": record("absolute_image_path", image_file=...,
                                      image_path="@IMAGE_ROOT@/CORD/receipt_ok.png"),
    }
    for name, bad in cases.items():
        write(f"data/{name}.json", json_array([GOOD, bad]))
    write("data/all_bad.json", json_array([cases["nan_box"], cases["missing_image"]]))
    write("data/record_not_object.json", json_array([GOOD, ["cord_00003", "receipt_ok.png", "What is the total?"]]))
    # JSON Lines with a blank line: record 2 is on line 4
    negative = record("negative_box", bbox_pred=[-4.0, 20.0, 50.0, 30.0])
    write("data/negative_box.jsonl", "\n".join([dumps(GOOD), "", dumps(good2), dumps(negative)]) + "\n")

    # file-level
    write("data/invalid_json.json", '[\n{"image_id": \'cord_00001\', "question": "What is the total?"}\n]\n')
    full = json_array([GOOD, good2])
    write("data/truncated.json", full[: len(full) - 150])
    lines = dumps(GOOD) + "\n" + dumps(good2) + "\n"
    write("data/truncated.jsonl", lines[: len(lines) - 60])
    write("data/malformed_line.jsonl", dumps(GOOD) + "\n" + dumps(good2)[:-1] + ",}\n" + dumps(GOOD) + "\n")
    write("data/not_utf8.json", json_array([GOOD, record("latin1", question="Quel est le total pay\u00e9 ?")])
          .encode("utf-8").replace("\\u00e9".encode(), b"\xe9"))
    write("data/empty.json", b"")
    write("data/blank.jsonl", "\n   \n\t\n")
    write("data/empty_array.json", "[]\n")
    write("data/top_level_object.json", json.dumps({"version": 1, "data": [GOOD]}, indent=2) + "\n")
    write("data/top_level_object_one_line.jsonl", dumps({"records": [GOOD, good2]}) + "\n")
    write("data/deep_nesting.json", "[" * 2000 + "]" * 2000 + "\n")
    write("data/huge_integer.json", json_array([record("huge_integer")])
          .replace('"bbox_pred": [10.0, 20.0, 50.0', '"bbox_pred": [10.0, 20.0, 5' + "0" * 5000))

    # accepted
    dup = [record("x", image_id="docvqa_nkbl0226_p0", image_file="nkbl0226_p0.png", dataset="DocVQA", question=q,
                  answer_pred=a, bbox_pred=b)
           for q, a, b in (("What is the date?", "13/11/2021", [5, 2, 40, 9]),
                           ("What is the total?", "12,000", [10, 20, 50, 30]),
                           ("Who is the sender?", "J. Smith", [4, 34, 60, 44]))]
    write("data/accepted_duplicate_image_id.json", json_array(dup))
    write("data/accepted_cmyk.json", json_array([record("cmyk", image_file="receipt_cmyk.jpg")]))
    write("data/accepted_rgba.json", json_array([record("rgba", image_file="receipt_rgba.png")]))
    extra = record("00004", cot_steps=[f"Step {i}: {s}" for i, s in enumerate(STEPS, 1)],
                   regions=[{"id": 0, "bbox": [10, 20, 50, 30], "text": "12,000", "confidence": 0.9}],
                   val_scores={"anls": 1.0}, val_accept=True, a_future_field={"tolerated": True})
    write("data/accepted_bom_crlf.jsonl", "\ufeff" + "\r\n".join([dumps(GOOD), dumps(extra)]) + "\r\n")
    write("data/accepted_one_record.jsonl", dumps(GOOD) + "\n")


# ------------------------------------------------------------------ configs and run directories


def make_configs() -> None:
    write("config/unknown_key.yaml", "preset: demo\nlerning_rate: 2.0e-4\nmax_steps: 1\n")
    write("config/malformed.yaml", "preset: demo\nlearning_rate: [2.0e-4\nmax_steps: 1\n")
    write("config/not_a_mapping.yaml", "- preset: demo\n- max_steps: 1\n")
    write("config/bad_value.yaml", "preset: demo\nlearning_rate: fast\nmax_steps: 1\n")
    write("config/not_utf8.yaml", b"preset: demo\n# r\xe9glages du run\nmax_steps: 1\n")
    write("config/preset_list.yaml", "preset: [demo]\nmax_steps: 1\n")
    write("config/report_to_string.yaml", "report_to: tensorboard\nmax_steps: 1\n")
    write("config/strict_string.yaml", 'strict: "no"\nmax_steps: 1\n')


def make_runs() -> None:
    from docval_sft.presets import get_preset

    config = {
        "base_preset": "demo",
        "overrides": {},
        "preset": get_preset("demo").to_dict(),
        "run": {"train_data": "D3_train.json", "val_data": None, "image_dir": "images", "output_dir": "run",
                "strict": False, "skip_bad": False, "allow_absolute_paths": False, "report_to": []},
    }
    text = json.dumps(config, indent=2) + "\n"
    state = '{"global_step": 1, "max_steps": 2, "log_history": []}\n'
    write("runs/no_checkpoint/training_config.json", text)
    write("runs/no_config/checkpoint-1/trainer_state.json", state)
    write("runs/incomplete_checkpoint/training_config.json", text)
    write("runs/incomplete_checkpoint/checkpoint-2/adapter_config.json", "{}\n")
    write("runs/malformed_config/training_config.json", text[: len(text) // 2])
    write("runs/malformed_config/checkpoint-1/trainer_state.json", state)
    unknown = copy.deepcopy(config)
    unknown["preset"]["lerning_rate"] = unknown["preset"].pop("learning_rate")
    write("runs/config_unknown_field/training_config.json", json.dumps(unknown, indent=2) + "\n")
    write("runs/config_unknown_field/checkpoint-1/trainer_state.json", state)
    write("runs/config_without_run/training_config.json",
          json.dumps({k: v for k, v in config.items() if k != "run"}, indent=2) + "\n")
    write("runs/config_without_run/checkpoint-1/trainer_state.json", state)
    write("runs/config_not_utf8/training_config.json", text.replace('"demo"', '"d\xe9mo"', 1).encode("latin-1"))
    write("runs/config_not_utf8/checkpoint-1/trainer_state.json", state)


if __name__ == "__main__":
    make_images()
    make_data()
    make_configs()
    make_runs()
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"wrote the corpus under {HERE}: {total / 1024:.1f} KiB")
