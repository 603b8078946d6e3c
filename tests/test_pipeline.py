"""The TF-free input pipeline: batch contents, label grids, shuffling, resuming, per-process sharding."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from seqcsist_jax import imaging
from seqcsist_jax.data.pipeline import ArraySource, TrajectoryLoader, load_split_arrays, make_source, shard_batch
from seqcsist_jax.data.simulate import simulate_seqcsist, split_seed

N = 23  # not a multiple of the batch sizes used below


@pytest.fixture(scope="module")
def arrays():
    return simulate_seqcsist(N, seed=5)


@pytest.fixture(scope="module")
def source(arrays):
    return make_source(arrays)


def _loader(source, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return TrajectoryLoader(source, **kw)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _grid_loop(targets: np.ndarray, c: int = 3, size: int = 11) -> np.ndarray:
    """SPEC §1 label rule, one target at a time (collisions summed)."""
    n = size * c
    grid = np.zeros(targets.shape[:-2] + (n, n))
    for idx in np.ndindex(*targets.shape[:-2]):
        for xc, yc, b in targets[idx]:
            if b == 0:
                continue
            i, j = round(c * float(xc) + (c - 1) // 2), round(c * float(yc) + (c - 1) // 2)
            if 0 <= i < n and 0 <= j < n:
                grid[idx + (i, j)] += b
    return grid


# --------------------------------------------------------------------------------------------- batches


def test_batch_shapes_dtypes_and_contents(arrays, source):
    loader = _loader(source, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == loader.steps_per_epoch == N // 4
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 20, 11, 11) and batch["frames"].dtype == np.float32
    assert batch["labels"].shape == (4, 20, 33, 33) and batch["labels"].dtype == np.float32
    assert batch["targets"].shape == (4, 20, 4, 3) and batch["targets"].dtype == np.float32
    assert batch["num_targets"].shape == (4, 20) and batch["num_targets"].dtype == np.int32
    assert batch["trajectory_id"].shape == (4,)
    ids = batch["trajectory_id"]
    np.testing.assert_array_equal(batch["frames"], arrays["frames"][ids].astype(np.float32))
    np.testing.assert_array_equal(batch["targets"], arrays["targets"][ids])
    np.testing.assert_array_equal(batch["num_targets"], arrays["num_targets"][ids])


@pytest.mark.parametrize("collision", ["sum", "overwrite"])
def test_labels_match_targets_to_grid(source, collision):
    batch = next(iter(_loader(source, batch_size=3, shuffle=False, collision=collision)))
    want = imaging.targets_to_grid(batch["targets"].astype(np.float64), c=3, collision=collision)
    np.testing.assert_allclose(batch["labels"], want, rtol=1e-6)
    if collision == "sum":
        np.testing.assert_allclose(batch["labels"], _grid_loop(batch["targets"]), rtol=1e-6)
        # every target's brightness lands somewhere on the grid
        np.testing.assert_allclose(batch["labels"].sum(axis=(-2, -1)), batch["targets"][..., 2].sum(-1), rtol=1e-5)


def test_label_grid_for_other_subpixel_division(source):
    batch = next(iter(_loader(source, batch_size=2, shuffle=False, c=5)))
    assert batch["labels"].shape == (2, 20, 55, 55)
    np.testing.assert_allclose(batch["labels"], _grid_loop(batch["targets"], c=5), rtol=1e-6)


def test_max_targets_pads_and_refuses_to_drop_targets(source):
    batch = next(iter(_loader(source, batch_size=2, shuffle=False, max_targets=6)))
    assert batch["targets"].shape == (2, 20, 6, 3) and not batch["targets"][:, :, 4:].any()
    with pytest.raises(ValueError, match="max_targets"):
        for _ in _loader(source, batch_size=N, shuffle=False, max_targets=1, num_epochs=1):
            pass


def test_in_memory_source_fills_defaults():
    sim = simulate_seqcsist(3, seed=1)
    src = ArraySource({"frames": sim["frames"], "targets": sim["targets"]})
    np.testing.assert_array_equal(src.arrays["num_targets"], sim["num_targets"])
    np.testing.assert_array_equal(src.arrays["trajectory_id"], np.arange(3))
    with pytest.raises(ValueError, match="frames"):
        make_source({"targets": sim["targets"]})
    with pytest.raises(ValueError, match="targets"):
        make_source({"frames": sim["frames"], "targets": sim["targets"][:2]})


# --------------------------------------------------------------------------------------------- order


def test_fixed_order_without_shuffle(source):
    loader = _loader(source, batch_size=5, shuffle=False, num_epochs=2, drop_remainder=False)
    ids = [b["trajectory_id"] for b in loader]
    assert [len(i) for i in ids] == [5, 5, 5, 5, 3] * 2
    np.testing.assert_array_equal(np.concatenate(ids), np.tile(np.arange(N), 2))


def test_seeded_shuffle_is_deterministic_and_covers_each_epoch(source):
    def order(seed, epochs=3):
        loader = _loader(source, batch_size=4, shuffle=True, seed=seed, num_epochs=epochs, drop_remainder=False)
        return [np.concatenate([b["trajectory_id"] for b in _take(it, loader.steps_per_epoch)])
                for it in [iter(loader)] for _ in range(epochs)]

    a, b, c = order(0), order(0), order(1)
    for epoch in range(3):
        np.testing.assert_array_equal(a[epoch], b[epoch])
        np.testing.assert_array_equal(np.sort(a[epoch]), np.arange(N))  # a permutation: every trajectory once
    assert not np.array_equal(a[0], a[1])  # a new order every epoch
    assert not np.array_equal(a[0], c[0])  # the seed matters
    assert not np.array_equal(a[0], np.arange(N))


def test_num_epochs_stops_and_drop_remainder(source):
    loader = _loader(source, batch_size=4, shuffle=True, num_epochs=2, drop_remainder=True)
    batches = list(loader)
    assert len(batches) == 2 * (N // 4) and all(len(b["trajectory_id"]) == 4 for b in batches)
    assert list(loader) == []  # exhausted: the loader keeps its position
    with pytest.raises(ValueError, match="no batch per epoch"):
        _loader(source, batch_size=N + 1, drop_remainder=True)


# --------------------------------------------------------------------------------------------- resume


def test_resume_from_state_gives_the_uninterrupted_batches(source):
    settings = dict(batch_size=4, shuffle=True, seed=7)
    reference = _take(iter(_loader(source, **settings)), 12)  # crosses two epoch boundaries (5 steps/epoch)

    for cut in (0, 3, 5, 7):
        first = _loader(source, **settings)
        it = iter(first)
        _take(it, cut)
        state = json.loads(json.dumps(first.get_state()))  # saved with a checkpoint
        resumed = _loader(source, **settings)
        resumed.set_state(state)
        for want, got in zip(reference[cut:], _take(iter(resumed), 12 - cut)):
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"cut={cut} {key}")
        assert resumed.get_state() == _after(settings, source, 12)


def _after(settings, source, steps):
    loader = _loader(source, **settings)
    _take(iter(loader), steps)
    return loader.get_state()


def test_state_is_json_and_rejects_another_order(source):
    loader = _loader(source, batch_size=4, shuffle=True, seed=7)
    _take(iter(loader), 6)
    state = loader.get_state()
    assert json.loads(json.dumps(state)) == state
    assert (state["epoch"], state["position"]) == (1, 1)
    for change in (dict(seed=8), dict(shuffle=False), dict(batch_size=2)):
        other = _loader(source, **{**dict(batch_size=4, shuffle=True, seed=7), **change})
        with pytest.raises(ValueError, match=next(iter(change))):
            other.set_state(state)
    with pytest.raises(ValueError, match="lacks"):
        loader.set_state({"seed": 7})


def test_resume_on_a_different_number_of_processes(source):
    single = _loader(source, batch_size=6, shuffle=True, seed=2)
    it = iter(single)
    _take(it, 2)
    state = single.get_state()
    want = next(it)
    parts = []
    for p in range(3):
        loader = _loader(source, batch_size=6, shuffle=True, seed=2, process_index=p, process_count=3)
        loader.set_state(state)
        parts.append(next(iter(loader)))
    for key in want:
        np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]), want[key])


# --------------------------------------------------------------------------------------------- multi-host


@pytest.mark.parametrize("shuffle", [False, True])
def test_per_process_shards_cover_the_split_exactly_once(source, shuffle):
    count = 3
    loaders = [
        _loader(source, batch_size=6, shuffle=shuffle, seed=4, num_epochs=1, drop_remainder=False,
                process_index=p, process_count=count)
        for p in range(count)
    ]
    per_process = [[b["trajectory_id"] for b in loader] for loader in loaders]
    assert len({len(b) for b in per_process}) == 1  # every process runs the same number of steps
    seen = np.concatenate([np.concatenate(b) for b in per_process])
    np.testing.assert_array_equal(np.sort(seen), np.arange(N))  # each trajectory exactly once
    for p, batches in enumerate(per_process):
        assert all(len(b) == 2 for b in batches[:-1])  # batch_size // process_count
    # Per step, the processes' local batches concatenate to the single-process global batch.
    single = [b["trajectory_id"] for b in _loader(source, batch_size=6, shuffle=shuffle, seed=4, num_epochs=1,
                                                  drop_remainder=False)]
    for step, global_ids in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([per_process[p][step] for p in range(count)]), global_ids)


def test_bad_process_settings(source):
    with pytest.raises(ValueError, match="divisible"):
        _loader(source, batch_size=5, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        _loader(source, batch_size=4, process_index=2, process_count=2)


def test_shard_batch_builds_global_arrays(source):
    import jax
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    batch = next(iter(_loader(source, batch_size=2, shuffle=False)))
    sharded = shard_batch(batch, mesh)
    for key, value in batch.items():
        assert sharded[key].shape == value.shape
        np.testing.assert_array_equal(np.asarray(sharded[key]), value)
        assert sharded[key].sharding.spec == jax.sharding.PartitionSpec("data")


# --------------------------------------------------------------------------------------------- TFDS source


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("pipeline_tfds")
    make_source("seqcsist/mini", split="test", data_dir=os.fspath(data_dir), build_if_missing=True)
    return os.fspath(data_dir)


def test_tfds_source_matches_in_memory_source(mini_dir):
    tfds_source = make_source("seqcsist/mini", split="test", data_dir=mini_dir, build_if_missing=False)
    assert len(tfds_source) == 75
    sim = simulate_seqcsist(75, split_seed(0, "test"))
    settings = dict(batch_size=8, shuffle=True, seed=1, num_epochs=1, drop_remainder=False)
    from_tfds = list(_loader(tfds_source, **settings))
    from_memory = list(_loader(make_source(sim), **settings))
    assert len(from_tfds) == len(from_memory) == 10
    for a, b in zip(from_tfds, from_memory):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_load_split_arrays(mini_dir):
    arrays = load_split_arrays("seqcsist/mini", "validation", data_dir=mini_dir, build_if_missing=False)
    sim = simulate_seqcsist(75, split_seed(0, "val"))
    assert arrays["frames"].dtype == np.uint8 and arrays["frames"].shape == (75, 20, 11, 11)
    for key in ("frames", "targets", "num_targets"):
        np.testing.assert_array_equal(arrays[key], sim[key])
    np.testing.assert_array_equal(arrays["trajectory_id"], np.arange(75))
    with pytest.raises(ValueError, match="split"):
        make_source("seqcsist/mini", data_dir=mini_dir)
    # a slice is refused (tfds.data_source reads Parquet-stored splits whole); whole splits joined with '+' are read
    for read in (load_split_arrays, make_source):
        with pytest.raises(ValueError, match=r"^split 'validation\[:7\]': slices are not applied"):
            read("seqcsist/mini", "validation[:7]", data_dir=mini_dir, build_if_missing=False)
    both = make_source("seqcsist/mini", "validation+test", data_dir=mini_dir, build_if_missing=False)
    assert len(both) == 75 + 75
