"""Find and check the document image of a record, following the original DocVAL folder layout.

Images are never substituted: a missing, unreadable or truncated image is an error that names the record and
every path tried (the original trainers trained on a blank white image, or silently dropped SROIE).

Where: the record's dataset key (``PhaseARecord.prefix``: the ``dataset`` field, else the image_id prefix)
picks the released folders (``CORD/``, ``DocVQA/images/``, the three SROIE places, ...); then
``<root>/<dataset>/<file>`` (a custom set: ``dataset: MyInvoices`` -> ``ROOT/MyInvoices/inv1.png``),
``<root>/<file>`` and ``<root>/<dataset>/images/<file>``. ``<dataset>`` is the released folder name for the
released sets, else the ``dataset`` field as written (folder names are case-sensitive).

Safety: paths stay inside the image root (or the data file's folder for record-local relative paths), a
lexical check so that a dataset folder symlinked in from another disk still works; an absolute record-local
path needs ``allow_absolute_paths``. Whatever a path resolves to (through any symlink) must be a regular file
outside the system trees (``/proc``, ``/sys``, ``/dev`` except the ``/dev/shm`` RAM disk, ``/etc``, ``/boot``):
never a device such as ``/dev/zero``, a FIFO (which would block the reader) or a directory.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import DocvalError
from .records import DATASETS, PhaseARecord

# Files of the running system, never document images: a path (or symlink) into them is refused. Not /run
# (removable drives mount under /run/media) nor /dev/shm (a RAM disk people copy datasets to).
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/etc", "/boot")
ALLOWED_UNDER_SYSTEM_DIRS = ("/dev/shm",)

# Folder(s) under the image root for each image_id prefix, in the order they are tried.
DATASET_DIRS: dict[str, tuple[str, ...]] = {
    "cord": ("CORD",),
    "docvqa": ("DocVQA/images",),
    "funsd": ("FUNSD",),
    "sroie": ("SROIE", "SROIE/SROIE2019/train/img", "SROIE/SROIE2019/test/img"),
    "visualmrc": ("VisualMRC",),
}


class ImageProblem(DocvalError):
    """Why a record's image cannot be used; ``code`` is stable, ``str()`` is for humans. Uncaught, it is a user
    error like any other (one line, exit code 2)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    width: int
    height: int
    mode: str


def _inside(path: Path, root: Path) -> bool:
    """Lexical check (``..`` collapsed, symlinks NOT followed): a dataset folder linked in from another disk
    is inside the root; ``../`` in a record is not."""
    return Path(os.path.normpath(path.absolute())).is_relative_to(os.path.normpath(root.absolute()))


def candidate_paths(record: PhaseARecord, image_root: Path, data_dir: Path,
                    *, allow_absolute_paths: bool = False) -> list[Path]:
    """Every place the record's image may be, in lookup order. Raises ImageProblem for an escaping path."""
    if record.image_path is not None:
        local = Path(record.image_path)
        if local.is_absolute():
            if not allow_absolute_paths:
                raise ImageProblem("absolute_path", f"record gives an absolute image path {local}; "
                                   "pass --allow-absolute-paths to use it")
            return [local]
        if not _inside(data_dir / local, data_dir):
            raise ImageProblem("path_escape", f"image path {local} leaves the data file's folder {data_dir}")
        return [data_dir / local]
    key = record.prefix
    dirs = list(DATASET_DIRS.get(key, ()))
    name = DATASETS.get(key, record.dataset or "")  # the dataset's folder: <root>/<name>/ and <root>/<name>/images/
    places = [image_root / d / record.image_file for d in dirs]
    if name:
        places.append(image_root / name / record.image_file)
    places.append(image_root / record.image_file)
    if name:
        places.append(image_root / name / "images" / record.image_file)
    unique = list(dict.fromkeys(places))
    escaping = [p for p in unique if not _inside(p, image_root)]
    if escaping:
        raise ImageProblem("path_escape", f"image path {escaping[0]} leaves the image root {image_root}")
    return unique


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_target(path: Path) -> None:
    """ImageProblem unless ``path`` (through any symlinks) is a regular file outside the system trees."""
    real = Path(os.path.realpath(path))
    via = f" (a symlink to {real})" if real != Path(os.path.abspath(path)) else ""
    try:
        mode = os.stat(path).st_mode  # follows symlinks; never opens (a FIFO would block)
    except OSError as exc:
        raise ImageProblem("missing_image", f"image path {path}{via} cannot be read "
                                            f"({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise ImageProblem("not_a_regular_file", f"image path {path}{via} is {_kind(mode)}; an image must be a "
                                                 "regular file")
    system = next((d for d in SYSTEM_DIRS if real.is_relative_to(d)), None)
    if system is not None and not any(real.is_relative_to(d) for d in ALLOWED_UNDER_SYSTEM_DIRS):
        raise ImageProblem("system_path", f"image path {path}{via} is a system file under {system}, not a "
                                          "document image; link or copy the real image instead")


def resolve_image(record: PhaseARecord, image_root: Path, data_dir: Path,
                  *, allow_absolute_paths: bool = False) -> Path:
    """The first candidate path that exists (a symlink counts, even a broken one), checked by ``check_target``;
    ImageProblem listing every path tried if none exists."""
    tried = candidate_paths(record, image_root, data_dir, allow_absolute_paths=allow_absolute_paths)
    for path in tried:
        if os.path.lexists(path):
            check_target(path)
            return path
    listed = ", ".join(str(p) for p in tried)
    raise ImageProblem("missing_image", f"image {record.image_file!r} not found; tried: {listed}")


def check_image_dir(image_root: Path, records: list[PhaseARecord], data_file: Path) -> None:
    """One DocvalError for an image root that cannot hold any image, instead of one "not found" per record.
    Only when a record looks its image up there: records that all carry their own ``image``/``image_path``
    need no image root at all."""
    users = sum(1 for r in records if r.image_path is None)
    if not users or image_root.is_dir():
        return
    what = "is not a directory" if image_root.exists() else "does not exist"
    raise DocvalError(f"--image-dir {image_root} {what}, but {users} record(s) of {data_file} look up their image "
                      "under it; give the folder that holds CORD/, DocVQA/images/, ... (or your dataset folders)")


# 16-bit and float modes: PIL's RGB conversion (which the processors use) clips them to mostly white.
UNSUPPORTED_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def open_image(path: Path) -> Image.Image:
    """Decode and check an image for the model (ImageProblem if it cannot be used). It is NOT converted here:
    the processor's own RGB conversion composites transparency onto white, as for the training dataset (a
    plain ``convert("RGB")`` turns a transparent background black)."""
    try:
        if path.stat().st_size == 0:  # an interrupted download or copy: say so rather than "not readable"
            raise ImageProblem("not_an_image", f"{path}: empty file (0 bytes), not an image")
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x MAX_IMAGE_PIXELS; such an image is as unusable for training.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # a full decode: catches truncation
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem("image_too_large", f"{path}: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageProblem("not_an_image", f"{path}: not a readable image file") from exc
    except OSError as exc:
        # PIL reports a cut-off file as OSError("image file is truncated ...")
        raise ImageProblem("unreadable_image", f"{path}: cannot decode image ({exc})") from exc
    if img.mode in UNSUPPORTED_MODES:
        raise ImageProblem("unsupported_mode", f"{path}: {img.mode} (16-bit/float) image; the RGB conversion "
                           "would clip it, convert it to 8-bit first")
    return img


def check_image(path: Path) -> ImageInfo:
    """Check that the image can be used and return its size (the pixels are released)."""
    img = open_image(path)
    return ImageInfo(path, img.width, img.height, img.mode)
