"""Bad inputs give the project's own one-line error naming the file, field or split (issue 11, inputs part)."""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from seqcsist_jax.data import public_format
from seqcsist_jax.data.public_format import PublicFormatError, read_public_split, write_public_split
from seqcsist_jax.data.simulate import simulate_seqcsist
from tests.xla_env import xla_flags

T = 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    write_public_split(root, "s", simulate_seqcsist(3, 5, frames_per_trajectory=T), start_index=1, progress=False)
    return root


@pytest.fixture
def root(tmp_path, pristine):
    shutil.copytree(pristine / "s", tmp_path / "s")
    return tmp_path


def read(root, **kw):
    return read_public_split(root, "s", frames_per_trajectory=T, progress=False, **kw)


def _set_brightness(path: pathlib.Path, text: str) -> None:
    xml = path.read_text()
    start = xml.index("<brightness>") + len("<brightness>")
    path.write_text(xml[:start] + text + xml[xml.index("</brightness>"):])


@pytest.mark.parametrize("text,message", [("1e300", "beyond the float32 range"), ("1e-50", "which is 0 in float32")])
def test_annotation_values_are_validated_after_the_float32_cast(root, text, message):
    victim = root / "s" / "annotation" / "COS6.xml"
    _set_brightness(victim, text)
    with pytest.raises(PublicFormatError, match=message) as info:
        read(root)
    assert str(victim) in str(info.value)
    # The float64 value alone would have passed (finite, > 0): it is the cast that is checked.
    assert np.isfinite(float(text)) and float(text) > 0


def test_smallest_float32_brightness_is_accepted(root):
    tiny = float(np.finfo(np.float32).tiny)
    _set_brightness(root / "s" / "annotation" / "COS6.xml", repr(tiny))
    assert read(root)["targets"][1, 1, 0, 2] == np.float32(tiny)


def test_decompression_bomb_is_refused_naming_the_file(root, monkeypatch):
    victim = root / "s" / "image" / "image_3.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(victim)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64×64 = 4096 > 2·100: PIL calls it a bomb
    with pytest.raises(PublicFormatError, match="decompression bomb") as info:
        read(root)
    assert str(victim) in str(info.value)


def test_symlink_loop_is_an_error_naming_it(root):
    victim = root / "s" / "image" / "image_3.png"
    victim.unlink()
    os.symlink(victim, victim)  # a link to itself: ELOOP
    with pytest.raises(PublicFormatError, match="cannot read") as info:
        read(root)
    assert str(victim) in str(info.value)


def test_split_directory_symlink_loop_is_an_error(tmp_path):
    (tmp_path / "s").mkdir()
    os.symlink(tmp_path / "s" / "image", tmp_path / "s" / "image")
    (tmp_path / "s" / "annotation").mkdir()
    with pytest.raises(PublicFormatError, match=r"s/image: directory not found"):
        read(tmp_path)


def test_empty_split_is_an_error_naming_it(tmp_path):
    (tmp_path / "s" / "image").mkdir(parents=True)
    (tmp_path / "s" / "annotation").mkdir()
    with pytest.raises(PublicFormatError, match=r"/s: empty split"):
        read(tmp_path)


def _renumber(root: pathlib.Path, old: int, new: int) -> None:
    (root / "s" / "image" / f"image_{old}.png").rename(root / "s" / "image" / f"image_{new}.png")
    (root / "s" / "annotation" / f"COS{old}.xml").rename(root / "s" / "annotation" / f"COS{new}.xml")


def test_missing_first_frame_of_a_trajectory_plus_extra_frame_is_a_gap(root):
    # Frames 1..12 hold 3 trajectories of 4; frame 5 (first of trajectory 1) missing, an extra 13 at the end:
    # still 12 frames, consecutive inside every group of 4 — read today as shifted trajectories.
    _renumber(root, 5, 13)
    with pytest.raises(PublicFormatError, match=r"trajectory 1 starts at frame 6, expected 5.*frame 5 missing") as e:
        read(root)
    assert "image_6.png" in str(e.value)


def test_missing_first_frame_of_the_split_with_known_start(root):
    _renumber(root, 1, 13)
    assert read(root)["frame_numbers"][0, 0] == 2  # any start is accepted by default...
    with pytest.raises(PublicFormatError, match=r"starts at frame 2, expected 1"):
        read(root, first_number=1)  # ...and named as a gap when the start is known


def test_tfds_public_build_refuses_frame_numbers_beyond_int32(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from seqcsist_jax.data.simulate import split_seed

    manual = tmp_path / "manual"
    for folder, n in (("train", 1), ("val", 1), ("test", 1)):
        write_public_split(manual, folder, simulate_seqcsist(n, split_seed(3, folder)),
                           start_index=2**32 if folder == "val" else 0, progress=False)
    builder = tfds.builder("seqcsist/public", data_dir=os.fspath(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"val/image/image_\d+\.png: frame number \d+ does not fit the int32"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)))


def test_a_frame_number_beyond_int32_is_named_not_a_traceback(root):
    """A number too large for int64 (it was an OverflowError traceback) or for the int32 features."""
    for number in (10**20, 2**31):
        _renumber(root, 12, number)
        with pytest.raises(PublicFormatError, match=rf"image_{number}\.png: frame number {number} does not fit the "
                                                    r"int32 frame numbers of the dataset \(at most 2147483647\)"):
            read(root)
        _renumber(root, number, 12)
    _renumber(root, 12, 2**31 - 1)  # the largest that fits: read (as a gap in the last trajectory)
    with pytest.raises(PublicFormatError, match="not consecutive"):
        read(root)


@pytest.mark.parametrize("kind", ["device", "folder"])
def test_an_image_that_is_not_a_regular_file_is_named(root, kind):
    victim = root / "s" / "image" / "image_3.png"
    victim.unlink()
    os.symlink("/dev/zero", victim) if kind == "device" else victim.mkdir()
    with pytest.raises(PublicFormatError, match="not a regular file") as info:
        read(root)
    assert str(info.value).startswith(f"{victim}: ")  # it was "annotation without image (expected <victim>)"


def test_public_format_module_still_round_trips(root, pristine):
    back = read(root)
    np.testing.assert_array_equal(back["frame_numbers"].ravel(), np.arange(1, 13))
    assert public_format.split_files(root, "s")[0][0] == 1


# ------------------------------------------------------------------------------------- imported checkpoints


@pytest.mark.parametrize("content,message", [(b"", "is empty"), (b"PK\x03\x04 not really a zip", "not a readable")])
def test_garbage_or_empty_npz_checkpoint_names_the_file(tmp_path, content, message):
    from seqcsist_jax.interop import load_public_checkpoint

    path = tmp_path / "weights.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_public_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nan_weights_in_an_imported_checkpoint_are_an_error(tmp_path):
    from seqcsist_jax.interop import load_public_checkpoint, save_npz, state_dict_shapes

    state = {k: np.zeros(shape, np.float32) for k, shape in state_dict_shapes().items()}
    victim = sorted(state)[3]
    state[victim] = state[victim].copy()
    state[victim].flat[0] = np.nan
    path = tmp_path / "weights.npz"
    save_npz(path, state)
    with pytest.raises(ValueError, match=r"non-finite .*weights") as info:
        load_public_checkpoint(path)
    assert str(path) in str(info.value) and victim in str(info.value)
    state[victim].flat[0] = 0.0
    save_npz(path, state)
    assert load_public_checkpoint(path)  # the same file without the NaN loads


# ------------------------------------------------------------------------------------ multi-device batches

_LAST_BATCH = """
import numpy as np, jax
from seqcsist_jax import sharding
from seqcsist_jax.data.pipeline import TrajectoryLoader, make_source
from seqcsist_jax.data.simulate import simulate_seqcsist
assert jax.device_count() == 2
loader = TrajectoryLoader(make_source(simulate_seqcsist(3, 1, frames_per_trajectory=2)), batch_size=2,
                          shuffle=False, seed=0, num_epochs=1, drop_remainder=False)
mesh = sharding.data_mesh()
batches = list(loader)
assert [len(b["frames"]) for b in batches] == [2, 1]
sharding.shard_batch(batches[0], mesh, keys=("frames",))
try:
    sharding.shard_batch(batches[1], mesh, keys=("frames",))
except ValueError as e:
    print("ERROR:", e)
"""


def test_final_batch_not_divisible_by_devices_is_a_clear_error():
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2"),
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _LAST_BATCH], cwd=pathlib.Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("ERROR:")]
    assert line and "1 examples cannot be split evenly over 2 devices" in line[0] and "'frames'" in line[0]
