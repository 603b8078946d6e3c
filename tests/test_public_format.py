"""Public SeqCSIST on-disk layout (SPEC §3): exact round trip, exact XML layout, and every bad-input error."""

from __future__ import annotations

import os
import shutil
import xml.dom.minidom
import xml.etree.ElementTree as StdET

import numpy as np
import pytest
from PIL import Image

from seqcsist_jax.data import public_format
from seqcsist_jax.data.public_format import PublicFormatError, read_public_split, write_public_split
from seqcsist_jax.data.simulate import simulate_seqcsist

T_SMALL = 4  # short trajectories keep the error-case fixtures tiny


@pytest.fixture(scope="module")
def arrays():
    return simulate_seqcsist(2, 99)


@pytest.fixture(scope="module")
def small_arrays():
    return simulate_seqcsist(3, 5, frames_per_trajectory=T_SMALL)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, small_arrays):
    root = tmp_path_factory.mktemp("pristine")
    write_public_split(root, "test", small_arrays, start_index=0, progress=False)
    return root


@pytest.fixture
def split(tmp_path, pristine):
    """A fresh, writable copy of a valid split; returns its directory ``root/test``."""
    shutil.copytree(pristine / "test", tmp_path / "test")
    return tmp_path / "test"


def _read(split_dir, **kw):
    return read_public_split(split_dir.parent, split_dir.name, frames_per_trajectory=T_SMALL, progress=False,
                             **kw)


@pytest.mark.parametrize("start", [0, 1])
def test_round_trip_is_exact(tmp_path, arrays, start):
    base = write_public_split(tmp_path, "val", arrays, start_index=start, progress=False)
    assert base == tmp_path / "val"
    assert len(os.listdir(base / "image")) == 40 and len(os.listdir(base / "annotation")) == 40
    # The files do not record MAXT: without max_targets the padded axis is the largest count found.
    assert read_public_split(tmp_path, "val", progress=False)["targets"].shape[2] == arrays["num_targets"].max()
    back = read_public_split(tmp_path, "val", max_targets=arrays["targets"].shape[2], progress=False)
    assert back["frames"].dtype == np.uint8 and back["targets"].dtype == np.float32
    assert back["num_targets"].dtype == np.int32 and back["frame_numbers"].dtype == np.int64
    for key in ("frames", "targets", "num_targets"):
        assert back[key].shape == arrays[key].shape
        assert back[key].tobytes() == arrays[key].tobytes(), key
    np.testing.assert_array_equal(back["frame_numbers"], np.arange(start, start + 40).reshape(2, 20))
    # Frame n·T + t is trajectory n, frame t, as an independent decode of one file shows.
    img = np.asarray(Image.open(base / "image" / f"image_{start + 27}.png"))
    np.testing.assert_array_equal(img, arrays["frames"][1, 7])


def _public_style_xml(number: int, rows) -> str:
    """The annotation as the public writer builds it: ElementTree, then minidom's pretty print."""
    root = StdET.Element("annotation")
    StdET.SubElement(root, "filename").text = f"COS{number}"
    size = StdET.SubElement(root, "size")
    for tag, text in (("width", "11"), ("height", "11"), ("depth", "1")):
        StdET.SubElement(size, tag).text = text
    StdET.SubElement(root, "sigma").text = "0.5"
    for xc, yc, b in rows:
        obj = StdET.SubElement(root, "object")
        StdET.SubElement(obj, "name").text = "Target"
        coord = StdET.SubElement(obj, "coordinate")
        for tag, v in (("xc", xc), ("yc", yc), ("brightness", b)):
            StdET.SubElement(coord, tag).text = repr(float(v))
    return xml.dom.minidom.parseString(StdET.tostring(root, encoding="utf-8")).toprettyxml()


def test_annotation_layout_matches_public_writer(split, small_arrays):
    text = (split / "annotation" / "COS6.xml").read_text(encoding="utf-8")
    k = small_arrays["num_targets"][1, 2]
    rows = small_arrays["targets"][1, 2, :k]
    assert text == _public_style_xml(6, rows)


def test_float32_values_survive_text(tmp_path):
    # Values whose shortest float64 spelling differs from the float32 value (0.1, 1/3, ...).
    targets = np.zeros((1, 1, 4, 3), np.float32)
    targets[0, 0] = [[0.1, 1 / 3, 220.1], [5.000001, 9.999999, 249.99998], [-0.49999, 10.49999, 1e-3], [0, 0, 0]]
    frames = np.zeros((1, 1, 11, 11), np.uint8)
    write_public_split(tmp_path, "x", {"frames": frames, "targets": targets}, progress=False)
    back = read_public_split(tmp_path, "x", frames_per_trajectory=1, max_targets=4, progress=False)
    assert back["targets"].tobytes() == targets.tobytes()
    np.testing.assert_array_equal(back["num_targets"], [[3]])


def test_any_start_index_and_numeric_sort(tmp_path, small_arrays):
    write_public_split(tmp_path, "s", small_arrays, start_index=7, progress=False)
    back = read_public_split(tmp_path, "s", frames_per_trajectory=T_SMALL, progress=False)
    np.testing.assert_array_equal(back["frame_numbers"].ravel(), np.arange(7, 19))  # 9 < 10 numerically
    assert back["frames"].tobytes() == small_arrays["frames"].tobytes()
    # Regrouping the same files into trajectories of 2 frames.
    back2 = read_public_split(tmp_path, "s", frames_per_trajectory=2, progress=False)
    np.testing.assert_array_equal(back2["frames"].reshape(-1, 11, 11), small_arrays["frames"].reshape(-1, 11, 11))


def test_max_targets_pads_and_limits(split, small_arrays):
    back = _read(split, max_targets=6)
    assert back["targets"].shape == (3, T_SMALL, 6, 3)
    np.testing.assert_array_equal(back["targets"][..., :4, :], small_arrays["targets"])
    with pytest.raises(PublicFormatError, match=r"COS\d+\.xml.*max_targets=1"):
        _read(split, max_targets=1)


def test_hidden_and_foreign_files_are_ignored(split, small_arrays):
    (split / "image" / ".image_3.png.1.2.tmp").write_bytes(b"partial")
    (split / "image" / "README.txt").write_text("not a frame")
    assert _read(split)["frames"].tobytes() == small_arrays["frames"].tobytes()


# --- bad input: each raises PublicFormatError naming the file -----------------------------------------------


def test_image_without_annotation(split):
    os.remove(split / "annotation" / "COS5.xml")
    with pytest.raises(PublicFormatError, match=r"image_5\.png: image without annotation"):
        _read(split)


def test_annotation_without_image(split):
    os.remove(split / "image" / "image_11.png")
    with pytest.raises(PublicFormatError, match=r"COS11\.xml: annotation without image"):
        _read(split)


def test_duplicate_frame_number(split):
    shutil.copy(split / "image" / "image_3.png", split / "image" / "image_03.png")
    with pytest.raises(PublicFormatError, match=r"image_0?3\.png.*also used"):
        _read(split)


def test_count_not_multiple_of_trajectory_length(split):
    for name in ("image/image_11.png", "annotation/COS11.xml"):
        os.remove(split / name)
    with pytest.raises(PublicFormatError, match=r"test: 11 frames is not a multiple"):
        _read(split)


def test_gap_inside_trajectory(split):
    for n in (5, 8, 9, 10, 11):  # 0-4 | 6 7 (gap at 5)
        os.remove(split / "image" / f"image_{n}.png")
        os.remove(split / "annotation" / f"COS{n}.xml")
    # 7 files left: not a multiple; with T=7 the gap 4 → 6 is inside the single trajectory.
    with pytest.raises(PublicFormatError, match=r"image_6\.png: frame numbers of trajectory 0"):
        read_public_split(split.parent, "test", frames_per_trajectory=7, progress=False)


def test_missing_split_directory(tmp_path):
    with pytest.raises(PublicFormatError, match="image: directory not found"):
        read_public_split(tmp_path, "nope", progress=False)


def _set_xml(split, number, text):
    path = split / "annotation" / f"COS{number}.xml"
    path.write_text(text, encoding="utf-8")
    return f"COS{number}\\.xml"


def test_unparsable_xml(split):
    name = _set_xml(split, 2, "<annotation><size>")
    with pytest.raises(PublicFormatError, match=f"{name}: unparsable XML"):
        _read(split)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename></annotation>
"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["entity-expansion", "external-entity"])
def test_hostile_xml_is_refused(split, doc):
    name = _set_xml(split, 9, doc)
    with pytest.raises(PublicFormatError, match=f"{name}: refused hostile XML"):
        _read(split)


def _edit_xml(split, number, old, new):
    path = split / "annotation" / f"COS{number}.xml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return f"COS{number}\\.xml"


def _first_value(split, number, tag):
    text = (split / "annotation" / f"COS{number}.xml").read_text(encoding="utf-8")
    start = text.index(f"<{tag}>") + len(tag) + 2
    return text[start: text.index(f"</{tag}>")]


@pytest.mark.parametrize(
    "tag, replacement, message",
    [
        ("yc", None, "missing field <object\\[0\\]/coordinate/yc>"),
        ("xc", "abc", "field <object\\[0\\]/coordinate/xc> is not a number: 'abc'"),
        ("brightness", "", "missing field <object\\[0\\]/coordinate/brightness>"),
        ("brightness", "nan", "not finite"),
        ("brightness", "-3", "brightness -3.0"),
        ("sigma", "x", "<sigma> is not a number"),
        ("width", "12", "<width> is 12, expected 11"),
        ("xc", "10.6", "outside the 11×11 image"),
        ("yc", "-0.51", "outside the 11×11 image"),
    ],
)
def test_bad_fields(split, tag, replacement, message):
    value = _first_value(split, 4, tag)
    old = f"<{tag}>{value}</{tag}>"
    name = _edit_xml(split, 4, old, "" if replacement is None else f"<{tag}>{replacement}</{tag}>")
    with pytest.raises(PublicFormatError, match=f"{name}: .*{message}"):
        _read(split)


def test_wrong_root_and_missing_coordinate(split):
    name = _edit_xml(split, 1, "<annotation>", "<notes>")
    _edit_xml(split, 1, "</annotation>", "</notes>")
    with pytest.raises(PublicFormatError, match=f"{name}: root element is <notes>"):
        _read(split)
    shutil.copy(split / "annotation" / "COS2.xml", split / "annotation" / "COS1.xml")  # valid again
    name = _edit_xml(split, 1, "<coordinate>", "<coord>")
    _edit_xml(split, 1, "</coordinate>", "</coord>")
    with pytest.raises(PublicFormatError, match=f"{name}: <object> #0 has no <coordinate>"):
        _read(split)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Image.fromarray(np.zeros((11, 12), np.uint8)), "size 12×11"),
        (lambda: Image.fromarray(np.zeros((11, 11, 3), np.uint8)), "mode 'RGB'"),
        (lambda: Image.fromarray(np.zeros((11, 11), np.uint16)), "mode 'I;16'"),
        (lambda: Image.fromarray(np.zeros((11, 11), np.uint8)).convert("1"), "mode '1'"),
        (None, "cannot decode image"),
    ],
    ids=["12x11", "rgb", "16bit", "1bit", "garbage"],
)
def test_bad_images(split, make, message):
    path = split / "image" / "image_10.png"
    if make is None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    else:
        make().save(path, format="PNG")
    with pytest.raises(PublicFormatError, match=f"image_10\\.png: .*{message}"):
        _read(split)


# --- writing ------------------------------------------------------------------------------------------------


def test_write_refuses_existing_and_overwrites_cleanly(tmp_path, small_arrays, arrays):
    write_public_split(tmp_path, "t", arrays, progress=False)  # 40 frames
    with pytest.raises(FileExistsError, match="overwrite"):
        write_public_split(tmp_path, "t", small_arrays, progress=False)
    write_public_split(tmp_path, "t", small_arrays, progress=False, overwrite=True)  # 12 frames, no stale ones
    back = read_public_split(tmp_path, "t", frames_per_trajectory=T_SMALL, progress=False)
    assert back["frames"].tobytes() == small_arrays["frames"].tobytes()


def test_write_validates_before_writing(tmp_path, small_arrays):
    bad = dict(small_arrays, frames=small_arrays["frames"].astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_public_split(tmp_path, "t", bad, progress=False)
    outside = dict(small_arrays, targets=small_arrays["targets"].copy())
    outside["targets"][2, 3, 0, 0] = 10.7
    with pytest.raises(ValueError, match="outside"):
        write_public_split(tmp_path, "t", outside, progress=False)
    mismatch = dict(small_arrays, num_targets=small_arrays["num_targets"] + 1)
    with pytest.raises(ValueError, match="num_targets"):
        write_public_split(tmp_path, "t", mismatch, progress=False)
    assert not (tmp_path / "t").exists()


def test_interrupted_write_leaves_no_partial_files(tmp_path, small_arrays, monkeypatch):
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(public_format.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        write_public_split(tmp_path, "t", small_arrays, progress=False, workers=1)
    monkeypatch.undo()
    names = os.listdir(tmp_path / "t" / "image") + os.listdir(tmp_path / "t" / "annotation")
    assert names and not [n for n in names if n.startswith(".")]  # temporary files cleaned up
    for n in os.listdir(tmp_path / "t" / "image"):  # every published image is complete
        assert np.asarray(Image.open(tmp_path / "t" / "image" / n)).shape == (11, 11)
    # The reader reports the incomplete split instead of returning wrong trajectories.
    with pytest.raises(PublicFormatError):
        read_public_split(tmp_path, "t", frames_per_trajectory=T_SMALL, progress=False)
