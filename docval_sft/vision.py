"""What the model sees: Gemma 3's vision input settings (pan & scan) and the views the processor makes of a page.

Gemma 3 sees one square (896x896 for the 4B-27B models): a tall receipt is squashed into it. Pan & scan adds
896x896 crops of the page after the whole image (transformers' Gemma 3 image processor). The four settings are
preset fields spelled like the processor's kwargs; they are given to ``AutoProcessor.from_pretrained`` (see
``build.load_processor``), so the one processor object of a run applies them everywhere images go through it:
TRL's collator (training, token counts, preview) and ``inference.generate``; ``save_pretrained`` keeps them in the
saved processor (final/, merged directories), and ``docval_sft.json`` records them for ``sample``/``evaluate``.

Nothing here re-implements the processor: the crop geometry is read back by running the image processor's own
``pan_and_scan`` on an image whose pixels hold their coordinates, and the views are its ``pixel_values``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import DocvalError

# transformers' Gemma3Processor.images_kwargs defaults (processing_gemma3.py), which the preset fields mirror.
VISION_FIELDS = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                 "pan_and_scan_min_ratio_to_activate")
VISION_DEFAULTS: dict[str, Any] = {"do_pan_and_scan": False, "pan_and_scan_min_crop_size": 256,
                                   "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2}


def vision_kwargs(source: Any, *, do_pan_and_scan: bool | None = None) -> dict[str, Any]:
    """The four processor kwargs from a Preset, a ``docval_sft.json`` dict (its "vision" entry; absent: a model
    trained before pan & scan existed, i.e. off) or None (defaults); ``do_pan_and_scan`` overrides the switch."""
    if source is None:
        values = dict(VISION_DEFAULTS)
    elif isinstance(source, Mapping):
        values = {**VISION_DEFAULTS, **{k: v for k, v in dict(source.get("vision") or {}).items()
                                        if k in VISION_FIELDS}}
    else:
        values = {name: getattr(source, name) for name in VISION_FIELDS}
    if do_pan_and_scan is not None:
        values["do_pan_and_scan"] = do_pan_and_scan
    return values


def check_processor(processor: Any, kwargs: Mapping[str, Any]) -> None:
    """Pan & scan on a processor that has none (not Gemma 3) would be silently ignored: refuse it."""
    if not kwargs.get("do_pan_and_scan"):
        return
    valid = getattr(getattr(processor.image_processor, "valid_kwargs", None), "__annotations__", {})
    if "do_pan_and_scan" not in valid:
        raise DocvalError(f"do_pan_and_scan: the processor {type(processor).__name__} has no pan & scan (Gemma 3 "
                          "only); set do_pan_and_scan false")


def applied(processor: Any) -> dict[str, Any]:
    """The pan & scan settings a processor call will actually use (transformers' own kwargs merge)."""
    merged = processor._merge_kwargs(processor.valid_processor_kwargs,
                                     tokenizer_init_kwargs=processor.tokenizer.init_kwargs)["images_kwargs"]
    return {k: merged.get(k) for k in VISION_FIELDS}


def override_note(trained: Mapping[str, Any], used: Mapping[str, Any]) -> str | None:
    """A one-line warning when inference looks at pages differently from training, else None."""
    if bool(trained.get("do_pan_and_scan")) == bool(used.get("do_pan_and_scan")):
        return None
    was = "with" if trained.get("do_pan_and_scan") else "without"
    now = "with" if used.get("do_pan_and_scan") else "without"
    return (f"warning: the model was trained {was} pan & scan crops and is run {now} them: it sees pages "
            "differently from training (drop --pan-and-scan/--no-pan-and-scan to use the training setting)")


# ---------------------------------------------------------------- the views the processor makes of one page


@dataclass(frozen=True)
class View:
    """One square the vision encoder sees: the whole page (crop None) or a crop (x, y, width, height) in pixels."""

    crop: tuple[int, int, int, int] | None
    image: Any  # PIL image, size x size, de-normalised pixel_values

    def map_box(self, box: Any, page_size: tuple[int, int]) -> list[float] | None:
        """A page box (pixels) in this view's pixels, clipped to the view; None if it lies outside the view."""
        x0, y0, w, h = self.crop if self.crop is not None else (0, 0, *page_size)
        sx, sy = self.image.width / w, self.image.height / h
        x1, y1 = max(float(box[0]), x0), max(float(box[1]), y0)
        x2, y2 = min(float(box[2]), x0 + w), min(float(box[3]), y0 + h)
        if x2 <= x1 or y2 <= y1:
            return None
        return [(x1 - x0) * sx, (y1 - y0) * sy, (x2 - x0) * sx, (y2 - y0) * sy]


def crop_boxes(processor: Any, page_size: tuple[int, int], kwargs: Mapping[str, Any]) -> list[tuple[int, int, int, int]]:
    """Where the image processor crops a page of ``page_size`` (x, y, width, height each), [] without crops.

    Its own ``pan_and_scan`` runs on an image whose channels hold each pixel's x and y: the crops it returns
    carry their origin in their first pixel, so the geometry is the processor's, not a copy of it."""
    import numpy as np

    if not kwargs.get("do_pan_and_scan"):
        return []
    w, h = page_size
    coords = np.zeros((3, h, w), dtype=np.float64)
    coords[0] = np.arange(w)[None, :]
    coords[1] = np.arange(h)[:, None]
    args = {k: kwargs[k] for k in VISION_FIELDS[1:]}
    ip = processor.image_processor
    if hasattr(ip, "pan_and_scan_batched"):  # torchvision backend: a batch of tensors
        import torch

        crops = [c[0].numpy() for c in ip.pan_and_scan_batched(torch.from_numpy(coords)[None], **args)]
    else:  # PIL backend: one numpy array, channels first
        crops = ip.pan_and_scan(coords, **args)
    return [(int(c[0, 0, 0]), int(c[1, 0, 0]), int(c.shape[2]), int(c.shape[1])) for c in crops]


def views(processor: Any, pixel_values: Any, page_size: tuple[int, int], kwargs: Mapping[str, Any]) -> list[View]:
    """The whole-page view then each crop, as PIL images de-normalised from the processor's ``pixel_values``
    (one record's: the page first, then its crops); their number must match the crop geometry."""
    import numpy as np
    from PIL import Image

    crops = crop_boxes(processor, page_size, kwargs)
    if len(pixel_values) != 1 + len(crops):
        raise DocvalError(f"the processor made {len(pixel_values)} image(s) of a {page_size[0]}x{page_size[1]} page, "
                          f"its crop geometry says {1 + len(crops)}")
    ip = processor.image_processor
    mean = np.asarray(ip.image_mean if ip.do_normalize else [0.0] * 3, dtype=np.float32)[:, None, None]
    std = np.asarray(ip.image_std if ip.do_normalize else [1.0] * 3, dtype=np.float32)[:, None, None]
    scale = ip.rescale_factor if ip.do_rescale else 1.0
    out = []
    for crop, values in zip([None, *crops], pixel_values, strict=True):
        arr = (np.asarray(values, dtype=np.float32) * std + mean) / scale
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8).transpose(1, 2, 0))
        out.append(View(crop, img))
    return out

