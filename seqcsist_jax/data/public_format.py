"""The on-disk layouts of the public SeqCSIST and CSIST-100K releases (SPEC §3, §9), read and written exactly.

Layout of one split (:class:`PublicLayout`; ``SEQCSIST_LAYOUT`` is the default of every function here)::

    {root}/{split}/image/image_{N}.png        8-bit grey PNG, size × size (11 × 11)
    {root}/{split}/annotation/COS{N}.xml      one <object> per target

and for CSIST-100K (``layout=CSIST100K_LAYOUT``; one image per "trajectory", ``frames_per_trajectory=1``)::

    {root}/{split}/cso_img/image_{N}.png
    {root}/{split}/Annotations/CSO{N}.xml     (CSO, not COS; <filename>CSO{N}</filename>)

Files sort by the first integer in their name; the ``frames_per_trajectory`` (20) frames of one trajectory are
consecutive numbers. Whether ``N`` starts at 0 or 1 is unknown, so reading accepts any start. The annotation
layout is the one the public ``gen_annotation.py`` writes (minidom pretty print, tab indentation; the
CSIST-100K writer differs only in the ``CSO`` prefix)::

    <?xml version="1.0" ?>
    <annotation>
    \t<filename>COS{N}</filename>
    \t<size>
    \t\t<width>11</width>
    \t\t<height>11</height>
    \t\t<depth>1</depth>
    \t</size>
    \t<sigma>0.5</sigma>
    \t<object>
    \t\t<name>Target</name>
    \t\t<coordinate>
    \t\t\t<xc>…</xc>
    \t\t\t<yc>…</yc>
    \t\t\t<brightness>…</brightness>
    \t\t</coordinate>
    \t</object>
    </annotation>

Numbers are written as ``repr(float(np.float32(v)))`` (the float64 spelling of the float32 value), so reading
them back (float64 parse, then float32) gives the same float32 bits and the public PyTorch code reads exactly
the values the frames were rendered from. Round trip through :func:`write_public_split` and
:func:`read_public_split` is exact.

Every file is written under a temporary hidden name in its own directory and renamed into place
(``os.replace``), so no half-written file ever carries a public name; all inputs are validated before the first
file is written. Reading parses XML with ``defusedxml`` and raises :class:`PublicFormatError` (a ValueError)
naming the offending file for: an image without annotation or vice versa, unparsable or hostile XML, missing or
non-numeric fields, a non-positive or non-finite brightness, an image that is not ``size × size`` 8-bit grey, a
frame count that is not a multiple of the trajectory length, non-consecutive numbers inside a trajectory, and
targets outside the image ``[-0.5, size - 0.5]²``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from seqcsist_jax.fileio import atomic_write

__all__ = [
    "CSIST100K_LAYOUT",
    "PublicFormatError",
    "PublicLayout",
    "SEQCSIST_LAYOUT",
    "annotation_xml",
    "parse_annotation",
    "read_image",
    "read_public_split",
    "write_public_split",
    "split_files",
]

_FIRST_INT = re.compile(r"\d+")


class PublicFormatError(ValueError):
    """A file of the public layout is missing, malformed or inconsistent; the message names the file."""


@dataclasses.dataclass(frozen=True)
class PublicLayout:
    """Folder and file names of one public release; the file formats are the same for all of them.

    Attributes:
      image_dir: folder of ``image_{N}.png`` inside a split folder.
      annotation_dir: folder of ``{annotation_prefix}{N}.xml`` inside a split folder.
      annotation_prefix: prefix of the annotation file names and of their ``<filename>``.
    """

    image_dir: str = "image"
    annotation_dir: str = "annotation"
    annotation_prefix: str = "COS"


#: The SeqCSIST release: ``{split}/image/image_{N}.png`` + ``{split}/annotation/COS{N}.xml``.
SEQCSIST_LAYOUT = PublicLayout()
#: The CSIST-100K release (GrokCSO): ``{split}/cso_img/image_{N}.png`` + ``{split}/Annotations/CSO{N}.xml``.
CSIST100K_LAYOUT = PublicLayout(image_dir="cso_img", annotation_dir="Annotations", annotation_prefix="CSO")


def _fmt(value: float) -> str:
    """Float32 value spelled so that ``np.float32(float(text))`` gives back the same bits."""
    return repr(float(np.float32(value)))


def annotation_xml(
    number: int, targets: np.ndarray, size: int = 11, sigma: float = 0.5, layout: PublicLayout = SEQCSIST_LAYOUT
) -> str:
    """The annotation document of frame ``number``.

    Args:
      number: the ``N`` of ``COS{N}`` (``CSO{N}`` with the CSIST-100K layout).
      targets: ``(K, 3)`` real target rows ``(xc, yc, brightness)`` (no padding rows).
      size: image side written as width and height.
      sigma: PSF width written in ``<sigma>``.
      layout: gives the ``<filename>`` prefix.
    """
    lines = [
        '<?xml version="1.0" ?>',
        "<annotation>",
        f"\t<filename>{layout.annotation_prefix}{number}</filename>",
        "\t<size>",
        f"\t\t<width>{size}</width>",
        f"\t\t<height>{size}</height>",
        "\t\t<depth>1</depth>",
        "\t</size>",
        f"\t<sigma>{sigma}</sigma>",
    ]
    for xc, yc, brightness in np.asarray(targets, dtype=np.float32).reshape(-1, 3):
        lines += [
            "\t<object>",
            "\t\t<name>Target</name>",
            "\t\t<coordinate>",
            f"\t\t\t<xc>{_fmt(xc)}</xc>",
            f"\t\t\t<yc>{_fmt(yc)}</yc>",
            f"\t\t\t<brightness>{_fmt(brightness)}</brightness>",
            "\t\t</coordinate>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _number(field: Any, what: str, path: Path) -> float:
    if field is None or field.text is None or not field.text.strip():
        raise PublicFormatError(f"{path}: missing field <{what}>")
    try:
        value = float(field.text.strip())
    except ValueError:
        raise PublicFormatError(f"{path}: field <{what}> is not a number: {field.text.strip()!r}") from None
    if not np.isfinite(value):
        raise PublicFormatError(f"{path}: field <{what}> is not finite: {field.text.strip()!r}")
    return value


def parse_annotation(path: str | os.PathLike, size: int = 11) -> np.ndarray:
    """Target rows of one annotation file.

    Args:
      path: a ``COS{N}.xml`` (or ``CSO{N}.xml``) file.
      size: expected image side; ``<width>``/``<height>`` must equal it and targets must lie in
        ``[-0.5, size - 0.5]²``.

    Returns:
      ``(K, 3)`` float32 rows ``(xc, yc, brightness)`` in file order.

    Raises:
      PublicFormatError: naming ``path`` for unparsable or hostile XML (entities, external references),
        missing or non-numeric fields, non-positive brightness or targets outside the image.
    """
    import defusedxml
    import defusedxml.ElementTree as safe_et

    path = Path(path)
    try:
        root = safe_et.parse(path).getroot()
    except defusedxml.DefusedXmlException as e:
        raise PublicFormatError(f"{path}: refused hostile XML ({type(e).__name__}: {e})") from None
    except safe_et.ParseError as e:
        raise PublicFormatError(f"{path}: unparsable XML ({e})") from None
    except OSError as e:
        raise PublicFormatError(f"{path}: cannot read ({e})") from None
    if root.tag != "annotation":
        raise PublicFormatError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size_el = root.find("size")
    if size_el is None:
        raise PublicFormatError(f"{path}: missing field <size>")
    for axis in ("width", "height"):
        if _number(size_el.find(axis), f"size/{axis}", path) != size:
            found = size_el.find(axis).text.strip()
            raise PublicFormatError(f"{path}: <size>/<{axis}> is {found}, expected {size}")
    sigma = _number(root.find("sigma"), "sigma", path)
    if sigma <= 0:
        raise PublicFormatError(f"{path}: <sigma> must be > 0, got {sigma}")
    rows = []
    for i, obj in enumerate(root.findall("object")):
        coord = obj.find("coordinate")
        if coord is None:
            raise PublicFormatError(f"{path}: <object> #{i} has no <coordinate>")
        row = [_number(coord.find(k), f"object[{i}]/coordinate/{k}", path) for k in ("xc", "yc", "brightness")]
        if row[2] <= 0:
            raise PublicFormatError(f"{path}: object #{i} has brightness {row[2]} (must be > 0)")
        if not all(-0.5 <= v <= size - 0.5 for v in row[:2]):
            raise PublicFormatError(
                f"{path}: object #{i} at (xc, yc) = ({row[0]}, {row[1]}) lies outside the {size}×{size} image "
                f"[-0.5, {size - 0.5}]"
            )
        rows.append(row)
    values = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    with np.errstate(over="ignore", under="ignore"):
        cast = values.astype(np.float32)
    # Validated again after the float32 cast: 1e300 becomes inf and 1e-50 becomes 0.0, the padding marker that
    # num_targets would still count.
    for i, (before, after) in enumerate(zip(values, cast)):
        if not np.all(np.isfinite(after)):
            raise PublicFormatError(f"{path}: object #{i} has a value beyond the float32 range {before.tolist()}")
        if after[2] <= 0:
            raise PublicFormatError(f"{path}: object #{i} has brightness {before[2]!r}, which is 0 in float32 "
                                    f"(must be >= {float(np.finfo(np.float32).tiny)})")
    return cast


def read_image(path: str | os.PathLike, size: int = 11) -> np.ndarray:
    """One frame as ``(size, size)`` uint8.

    Raises:
      PublicFormatError: naming ``path`` unless it decodes as an 8-bit grey (mode ``L``) ``size × size`` image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            mode, dims = im.mode, im.size
            if mode != "L" or dims != (size, size):
                raise PublicFormatError(
                    f"{path}: expected an 8-bit grey (mode 'L') {size}×{size} image, got mode {mode!r} "
                    f"size {dims[0]}×{dims[1]}"
                )
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise PublicFormatError(f"{path}: file not found") from None
    except Image.DecompressionBombError as e:
        raise PublicFormatError(f"{path}: refused a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PublicFormatError(f"{path}: cannot decode image ({e})") from None


_MAX_FRAME_NUMBER = 2**31 - 1  # frame_numbers / image_number are int32 features


def _numbered(directory: Path, suffix: str) -> dict[int, Path]:
    """``{first integer in name: path}`` for the visible ``*{suffix}`` files of ``directory``."""
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise PublicFormatError(f"{directory}: cannot list the directory ({e.strerror or e})") from None
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not name.lower().endswith(suffix):
            continue  # hidden files include our own temporary names of an interrupted write
        try:
            is_file = entry.is_file()
            if entry.is_symlink():
                os.stat(entry.path)  # a dangling link or a symlink loop raises here
        except OSError as e:
            raise PublicFormatError(f"{directory / name}: cannot read ({e.strerror or e})") from None
        if not is_file:  # a folder, a device (a link to /dev/zero): it would be reported as missing
            raise PublicFormatError(f"{directory / name}: not a regular file")
        match = _FIRST_INT.search(name)
        if match is None:
            raise PublicFormatError(f"{directory / name}: no frame number in the file name")
        number = int(match.group())
        if number > _MAX_FRAME_NUMBER:
            raise PublicFormatError(f"{directory / name}: frame number {number} does not fit the int32 frame numbers "
                                    f"of the dataset (at most {_MAX_FRAME_NUMBER})")
        if number in found:
            raise PublicFormatError(f"{directory / name}: frame number {number} also used by {found[number]}")
        found[number] = directory / name
    return found


def split_files(
    root: str | os.PathLike, split: str, layout: PublicLayout = SEQCSIST_LAYOUT
) -> list[tuple[int, Path, Path]]:
    """``(number, image path, annotation path)`` of every frame of a split, sorted by number.

    Raises:
      PublicFormatError: missing directories, or an image without annotation (or vice versa), naming the file.
    """
    base = Path(root) / split
    image_dir, ann_dir = base / layout.image_dir, base / layout.annotation_dir
    for d in (image_dir, ann_dir):
        try:
            os.stat(d)
        except OSError as e:
            raise PublicFormatError(f"{d}: directory not found ({e.strerror or e})") from None
        if not d.is_dir():
            raise PublicFormatError(f"{d}: not a directory")
    images, anns = _numbered(image_dir, ".png"), _numbered(ann_dir, ".xml")
    lonely_images, lonely_anns = sorted(set(images) - set(anns)), sorted(set(anns) - set(images))
    if lonely_images:
        n = lonely_images[0]
        raise PublicFormatError(f"{images[n]}: image without annotation (expected "
                                f"{ann_dir}/{layout.annotation_prefix}{n}.xml; "
                                f"{len(lonely_images)} such images)")
    if lonely_anns:
        n = lonely_anns[0]
        raise PublicFormatError(f"{anns[n]}: annotation without image (expected {image_dir}/image_{n}.png; "
                                f"{len(lonely_anns)} such annotations)")
    return [(n, images[n], anns[n]) for n in sorted(images)]


def _maybe_tqdm(items: Iterable, total: int, desc: str, progress: bool) -> Iterable:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="frame")


def _map(fn: Callable, items: list, desc: str, progress: bool, workers: int) -> list:
    """``[fn(x) for x in items]``, in order; on a thread pool when ``workers > 1``."""
    if workers <= 1 or len(items) < 64:
        return list(_maybe_tqdm(map(fn, items), len(items), desc, progress))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(_maybe_tqdm(pool.map(fn, items, chunksize=64), len(items), desc, progress))


def read_public_split(
    root: str | os.PathLike,
    split: str,
    frames_per_trajectory: int = 20,
    max_targets: int | None = None,
    progress: bool = True,
    size: int = 11,
    workers: int | None = None,
    layout: PublicLayout = SEQCSIST_LAYOUT,
    first_number: int | None = None,
) -> dict[str, np.ndarray]:
    """Reads one split of the public layout into the simulator's arrays.

    Args:
      root: directory holding ``{split}/image`` and ``{split}/annotation`` (the folders of ``layout``).
      split: split directory name (``train``, ``val``, ``test`` or any other).
      frames_per_trajectory: ``T``; consecutive groups of ``T`` frames (by number) form one trajectory.
      max_targets: ``MAXT`` of the padded target axis; ``None`` = the largest count found. A frame with more
        targets raises PublicFormatError.
      progress: show a progress bar.
      size: image side in pixels.
      workers: reader threads. Default 1: decoding and XML parsing hold the GIL, and threads measured slower.
      layout: folder and file names (``CSIST100K_LAYOUT`` with ``frames_per_trajectory=1`` for CSIST-100K).
      first_number: the number of the split's first frame when known (0 or 1); then a missing first frame is
        an error too. ``None`` accepts any start; trajectory ``i`` must then start at ``first + i·T``.

    Returns:
      ``frames (N, T, size, size) uint8``, ``targets (N, T, MAXT, 3) float32`` (zero padded, file order),
      ``num_targets (N, T) int32``, ``frame_numbers (N, T) int64`` (the ``N`` of the file names).

    Raises:
      PublicFormatError: naming the offending file (see the module docstring for the cases).
    """
    if frames_per_trajectory < 1:
        raise ValueError(f"frames_per_trajectory must be >= 1, got {frames_per_trajectory}")
    files = split_files(root, split, layout)
    if not files:
        raise PublicFormatError(f"{Path(root) / split}: empty split (no image/annotation pairs)")
    if first_number is not None and files[0][0] != first_number:
        raise PublicFormatError(
            f"{files[0][1]}: the split starts at frame {files[0][0]}, expected {first_number}; "
            f"frames {first_number}..{files[0][0] - 1} missing?"
        )
    if len(files) % frames_per_trajectory:
        raise PublicFormatError(
            f"{Path(root) / split}: {len(files)} frames is not a multiple of frames_per_trajectory="
            f"{frames_per_trajectory}"
        )
    numbers = np.array([f[0] for f in files], dtype=np.int64).reshape(-1, frames_per_trajectory)
    gaps = np.nonzero(np.diff(numbers, axis=1) != 1)
    if gaps[0].size:
        i, j = int(gaps[0][0]), int(gaps[1][0])
        raise PublicFormatError(
            f"{files[i * frames_per_trajectory + j + 1][1]}: frame numbers of trajectory {i} are not consecutive "
            f"({numbers[i, j]} then {numbers[i, j + 1]}); is a frame missing?"
        )
    # Consecutive inside every trajectory is not enough: frame 21 missing and an extra frame 41 would be read as
    # trajectories shifted by one. Each trajectory must start T numbers after the previous one.
    starts = numbers[:, 0]
    expected = starts[0] + frames_per_trajectory * np.arange(len(starts))
    bad = np.nonzero(starts != expected)[0]
    if bad.size:
        i = int(bad[0])
        raise PublicFormatError(
            f"{files[i * frames_per_trajectory][1]}: trajectory {i} starts at frame {starts[i]}, expected "
            f"{expected[i]} ({numbers[i - 1, -1]} then {starts[i]}); is frame {numbers[i - 1, -1] + 1} missing?"
        )

    def load(item: tuple[int, Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        return read_image(item[1], size), parse_annotation(item[2], size)

    loaded = _map(load, files, f"read {split}", progress, workers or 1)
    counts = np.array([t.shape[0] for _, t in loaded], dtype=np.int32)
    maxt = int(counts.max(initial=0)) if max_targets is None else int(max_targets)
    if counts.size and counts.max() > maxt:
        worst = int(np.argmax(counts))
        raise PublicFormatError(f"{files[worst][2]}: {counts[worst]} targets exceed max_targets={maxt}")
    n = len(files)
    frames = np.empty((n, size, size), dtype=np.uint8)
    targets = np.zeros((n, maxt, 3), dtype=np.float32)
    for i, (img, tgt) in enumerate(loaded):
        frames[i] = img
        targets[i, : tgt.shape[0]] = tgt
    t = frames_per_trajectory
    return {
        "frames": frames.reshape(-1, t, size, size),
        "targets": targets.reshape(-1, t, maxt, 3),
        "num_targets": counts.reshape(-1, t),
        "frame_numbers": numbers,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    # Whole or not at all; no fsync per file: an export of 100,000 frames would spend minutes in fsync, and a
    # crashed export is simply rerun.
    atomic_write(path, data, fsync=False)


def _validate_arrays(arrays: Mapping[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        frames, targets = np.asarray(arrays["frames"]), np.asarray(arrays["targets"])
    except KeyError as e:
        raise ValueError(f"arrays needs key {e.args[0]!r} (as returned by simulate_seqcsist)") from None
    if frames.dtype != np.uint8:
        raise ValueError(f"arrays['frames'] must be uint8 (quantise first), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[2:] != (size, size):
        raise ValueError(f"arrays['frames'] must have shape (N, T, {size}, {size}), got {frames.shape}")
    if targets.ndim != 4 or targets.shape[:2] != frames.shape[:2] or targets.shape[3] != 3:
        want = frames.shape[:2] + ("MAXT", 3)
        raise ValueError(f"arrays['targets'] must have shape {want}, got {targets.shape}")
    real = targets[..., 2] != 0
    if "num_targets" in arrays:
        counts = np.asarray(arrays["num_targets"])
        if counts.shape != frames.shape[:2]:
            raise ValueError(f"arrays['num_targets'] must have shape {frames.shape[:2]}, got {counts.shape}")
        slots = np.arange(targets.shape[2])
        if not np.array_equal(real, slots < counts[..., None]):
            raise ValueError("arrays['targets'] padding (brightness 0) disagrees with arrays['num_targets']; "
                             "real rows must come first")
    else:
        counts = real.sum(-1).astype(np.int32)
    t = targets.astype(np.float32)
    if not np.all(np.isfinite(t)) or np.any(t[..., 2] < 0):
        raise ValueError("arrays['targets'] holds non-finite values or negative brightness")
    pos = t[..., :2][real]
    if pos.size and (pos.min() < -0.5 or pos.max() > size - 0.5):
        raise ValueError(f"arrays['targets'] has targets outside the {size}×{size} image [-0.5, {size - 0.5}]")
    return frames, t, counts


def write_public_split(
    root: str | os.PathLike,
    split: str,
    arrays: Mapping[str, np.ndarray],
    start_index: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    size: int = 11,
    sigma: float = 0.5,
    workers: int | None = None,
    layout: PublicLayout = SEQCSIST_LAYOUT,
) -> Path:
    """Writes simulator arrays in the public layout: frame ``(n, t)`` becomes number ``start_index + n·T + t``.

    Args:
      root: output root; files go to ``{root}/{split}/image`` and ``{root}/{split}/annotation`` (the folders
        of ``layout``).
      split: split directory name.
      arrays: at least ``frames (N, T, size, size) uint8`` and ``targets (N, T, MAXT, 3)`` (zero padded, real
        rows first); ``num_targets (N, T)`` is checked against the padding when present.
      start_index: number of the first frame (0 or 1; the public release's start is unknown).
      progress: show a progress bar.
      overwrite: when the split already holds files, delete its ``*.png``/``*.xml`` first; otherwise raise
        FileExistsError (a mix of two generations would read back as garbage).
      size, sigma: written into every annotation (``sigma`` is informational).
      workers: writer threads (``None`` = 4): creating files dominates and releases the GIL.
      layout: folder and file names (``CSIST100K_LAYOUT`` writes one image per frame of ``T = 1``).

    Returns:
      The split directory ``{root}/{split}``.
    """
    from PIL import Image

    if isinstance(start_index, bool) or not isinstance(start_index, (int, np.integer)) or start_index < 0:
        raise ValueError(f"start_index must be a non-negative integer, got {start_index!r}")
    frames, targets, counts = _validate_arrays(arrays, size)
    base = Path(root) / split
    image_dir, ann_dir = base / layout.image_dir, base / layout.annotation_dir
    existing = [p for d in (image_dir, ann_dir) if d.is_dir() for p in d.iterdir()
                if p.suffix.lower() in (".png", ".xml")]
    if existing and not overwrite:
        raise FileExistsError(f"{base}: already holds {len(existing)} files (e.g. {existing[0]}); "
                              "pass overwrite=True (--overwrite on the command line) to replace them")
    for p in existing:
        p.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    n_traj, t = frames.shape[:2]
    flat_frames = frames.reshape(-1, size, size)
    flat_targets = targets.reshape(n_traj * t, -1, 3)
    flat_counts = counts.reshape(-1)

    def write_one(i: int) -> None:
        number = start_index + i
        png = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(flat_frames[i])).save(png, format="PNG")  # 2-D uint8 → mode "L"
        _atomic_write(image_dir / f"image_{number}.png", png.getvalue())
        xml = annotation_xml(number, flat_targets[i, : flat_counts[i]], size=size, sigma=sigma, layout=layout)
        _atomic_write(ann_dir / f"{layout.annotation_prefix}{number}.xml", xml.encode("utf-8"))

    _map(write_one, list(range(n_traj * t)), f"write {split}", progress, workers or 4)
    return base
