"""The learned comparison methods: output shapes, a few training steps reduce the loss, public parameter counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax.model_stats import count_params
from seqcsist_jax.testing import smoke
from seqcsist_jax.testing.smoke import smoke_batch
from seqcsist_jax import methods
from seqcsist_jax.baselines import common, published, tdan

LEARNED = ["lista", "istanet", "istanet_plus", "fistanet", "istanet_pp", "srcnn", "edsr", "espcn", "tdan"]

# Parameter counts of the public PyTorch models (GrokCV/SeqCSIST), derived from their layer definitions and
# confirmed by building them with torch in a scratch directory (conv k×k C→O with bias = k²·C·O + O):
PUBLIC_PARAMS = {
    # 16 layers × (Bs 1089·121 + Ws 1089² + soft_thr 1089)
    "lista": 16 * (1089 * 121 + 1089**2 + 1089),  # 21,100,464 (paper: 21.1 M)
    # 8 stages × (λ, θ + conv1_forward 9·32 + conv2_forward 9·32² + conv1_backward 9·32² + conv2_backward 9·32)
    "istanet": 8 * (2 + 2 * 9 * 32 + 2 * 9 * 32 * 32),  # 152,080 (paper: 0.17 M, = 9 stages)
    # 9 stages × (λ, θ + conv_D 9·32 + 4 convs 9·32² + conv_G 9·32)
    "istanet_plus": 9 * (2 + 2 * 9 * 32 + 4 * 9 * 32 * 32),  # 336,978 (paper: 0.38 M)
    # one shared block: conv_D (9·32+32) + 8 convs 32→32 (4 unused) + conv_G (9·32+1); 6 step scalars
    "fistanet": 6 + (9 * 32 + 32) + 8 * (9 * 32 * 32 + 32) + (9 * 32 + 1),  # 74,599 (paper: 74.6 K)
    # 20 × (head 2→32, 2 res blocks = 4 convs 32→32, tail 32→1) + condition MLP 1→32→32→40
    "istanet_pp": 20 * ((9 * 2 * 32 + 32) + 4 * (9 * 32 * 32 + 32) + (9 * 32 + 1))
    + (32 + 32) + (32 * 32 + 32) + (32 * 40 + 40),  # 760,220 (paper: 0.76 M)
    # 9×9 1→32, 5×5 32→16, 5×5 16→1
    "srcnn": (81 * 32 + 32) + (25 * 32 * 16 + 16) + (25 * 16 + 1),  # 15,841 (paper: 15.8 K)
    # conv_first, 16 res blocks (2 convs), conv_after_body, upsample 32→288, conv_last
    "edsr": (9 * 32 + 32) + 16 * 2 * (9 * 32 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 288 + 288)
    + (9 * 32 + 1),  # 389,025 (paper: 0.39 M)
    # 5×5 1→64, 3×3 64→32, 3×3 32→9
    "espcn": (25 * 64 + 64) + (9 * 64 * 32 + 32) + (9 * 32 * 9 + 9),  # 22,729 (paper: –)
    # feat ConvModule 1→32 + 5 res blocks; aggregate conv 64→32 + 2 DCN packs; align_1, align_2; to_rgb;
    # reconstruct ConvModule 5→32 + 10 res blocks + PixelShufflePack 32→288 + conv 32→1 (no bias).
    # DCN pack (8 groups) = weight 9·32² + conv_offset (9·32·144 + 144).
    "tdan": (9 * 32 + 32) + 5 * 2 * (9 * 32 * 32 + 32)
    + (9 * 64 * 32 + 32) + 4 * (9 * 32 * 32 + 9 * 32 * 144 + 144) + (9 * 32 + 1)
    + (9 * 5 * 32 + 32) + 10 * 2 * (9 * 32 * 32 + 32) + (9 * 32 * 288 + 288) + 9 * 32,  # 584,833 (paper: 0.59 M)
}


@pytest.fixture(scope="module")
def smoke_data():
    """One small simulated split (``:smoke`` dataset settings: T = 8 frames), labels, Φ and Q."""
    return smoke_batch("srcnn:smoke", 2)


def _key() -> jax.Array:
    # The "rbg" generator compiles ~5× faster than threefry on CPU; initial values do not matter here.
    return jax.random.key(0, impl="rbg")


_count = count_params


@pytest.mark.parametrize("name", LEARNED)
def test_public_parameter_count(name):
    config = configs.get_config(name)
    method = methods.build_method(config.model, config.loss)
    frames = jax.ShapeDtypeStruct((1, 20, 11, 11), jnp.float32)
    phi = jax.ShapeDtypeStruct((121, 1089), jnp.float32)
    q = jax.ShapeDtypeStruct((1089, 121), jnp.float32)
    shapes = jax.eval_shape(method.model.init, jax.random.PRNGKey(0), frames, phi, q)
    assert _count(shapes["params"]) == PUBLIC_PARAMS[name]


@pytest.mark.parametrize("name", LEARNED)
def test_smoke_shapes_and_training_reduces_loss(name, smoke_data):
    batch, phi, q = smoke_data
    config = configs.get_config(f"{name}:smoke")
    assert config.model.trainable
    method = methods.build_method(config.model, config.loss)
    state, losses, metrics = smoke.train_steps(method, batch, phi, q, config.optimizer, rng=_key())

    b, t = batch["frames"].shape[:2]
    out = jax.eval_shape(lambda p: method.model.apply({"params": p}, batch["frames"], phi, q), state.params)
    assert out["output"].shape == (b, len(method.frame_index(t)), 33, 33)
    assert out["output"].dtype == jnp.float32

    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    # the named terms sum to the total (weighted terms are the ``loss_*`` entries)
    weighted = sum(float(v) for k, v in metrics.items() if k.startswith("loss_"))
    assert weighted == pytest.approx(float(metrics["loss"]), rel=1e-5)


def test_pixel_shuffle_matches_torch_layout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5, 2 * 9)).astype(np.float32)  # NHWC, C = 2 output channels × 3²
    out = np.asarray(common.pixel_shuffle(jnp.asarray(x), 3))
    assert out.shape == (2, 12, 15, 2)
    # PyTorch: out[n, c, h·r + i, w·r + j] = in[n, c·r² + i·r + j, h, w]
    expected = np.empty_like(out)
    for c in range(2):
        for i in range(3):
            for j in range(3):
                expected[:, i::3, j::3, c] = x[..., c * 9 + i * 3 + j]
    np.testing.assert_array_equal(out, expected)


def test_tdan_reference_frame_option(smoke_data):
    batch, phi, q = smoke_data
    frames = batch["frames"]
    t = frames.shape[1]
    models = {
        ref: tdan.TDAN(channels=4, num_blocks_before_align=0, num_blocks_after_align=0, deform_groups=2, reference=ref)
        for ref in tdan.REFERENCES
    }
    params = jax.jit(models["centre"].init)(_key(), frames, phi, q)  # the reference does not change the params
    outs = {ref: jax.jit(model.apply)(params, frames, phi, q) for ref, model in models.items()}
    centres = np.asarray(outs["centre"]["frame_index"])
    np.testing.assert_array_equal(centres, np.arange(2, t - 2))
    assert outs["centre"]["output"].shape == (2, t - 4, 33, 33)
    np.testing.assert_array_equal(outs["centre"]["window"][:, :, 2], frames[:, centres])
    middle = np.broadcast_to(frames[:, t // 2][:, None], (2, len(centres), 11, 11))
    np.testing.assert_array_equal(outs["sequence_middle"]["window"][:, :, 2], middle)
    # the aligned neighbours do not depend on the reference channel
    np.testing.assert_allclose(outs["centre"]["window"][:, :, :2], outs["sequence_middle"]["window"][:, :, :2])
    with pytest.raises(ValueError, match="reference"):
        tdan.TDAN(reference="middle").init(_key(), frames, phi, q)


def test_scored_loss_ignores_edge_frames():
    """Methods whose public loss uses frames [2:T-2] are blind to errors on the edge frames."""
    labels = jnp.zeros((1, 8, 33, 33))
    out = jnp.zeros((1, 8, 33, 33)).at[:, [0, 1, 6, 7]].set(5.0)
    for name in ("edsr", "espcn", "istanet_pp"):
        config = configs.get_config(f"{name}:smoke")
        loss, _ = methods.build_method(config.model, config.loss).loss_fn({"output": out}, labels)
        assert float(loss) == 0.0
    config = configs.get_config("srcnn:smoke")  # SRCNN's public loss covers all frames
    loss, _ = methods.build_method(config.model, config.loss).loss_fn({"output": out}, labels)
    assert float(loss) == pytest.approx(25.0 * 4 / 8)


def test_bad_inputs_raise():
    model = methods.build_method(configs.get_config("espcn:smoke").model, configs.get_config("espcn:smoke").loss).model
    phi = np.zeros((121, 1089), np.float32)
    with pytest.raises(ValueError, match="frames must be"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((20, 11, 11)), phi, None)
    with pytest.raises(ValueError, match="do not match phi"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 10, 10)), phi, None)


def test_every_config_is_registered_and_published_rows_complete():
    assert set(LEARNED + ["ista", "fista"]) <= set(methods.available_methods())
    for name in LEARNED + ["ista"]:
        assert published.published(name) is not None
    for name, row in published.PUBLISHED.items():
        mean = np.mean([row.AP05, row.AP10, row.AP15, row.AP20, row.AP25])
        if name in published.INCONSISTENT_ROWS:  # the paper's own rows whose mean differs (kept as printed)
            assert abs(row.mAP - mean) > 0.1
        else:  # catches transcription errors: CSO-mAP is the mean of the five APs, to the paper's rounding
            assert row.mAP == pytest.approx(mean, abs=0.035), name
    assert published.published("fista") is None


def test_published_result_fields_are_the_table_columns_in_order():
    """PublishedResult's positional order is the paper table's (label, the METRIC_KEYS, FPS, params): rows are
    written positionally, and readers take the metrics by name."""
    from seqcsist_jax import protocol

    assert published.PublishedResult._fields == ("label", *published.METRIC_KEYS, "fps", "params")
    assert published.METRIC_KEYS == protocol.METRIC_KEYS
    row = published.published("derefnet")
    assert isinstance(row, published.PublishedResult)
    got = (row.label, row.mAP, row.AP05, row.AP25, row.fps, row.params)
    assert got == ("DeRefNet", 51.55, 1.00, 97.10, 367, "0.89 M")
    assert published.published("ista").params is None  # no parameter count for the classical method
