"""End-to-end tests of the training loop, checkpoints, resumption, data parallelism and evaluation outputs."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import train as train_lib
from seqcsist_jax.checkpointing import RunCheckpoints, abstract_like
from tests.xla_env import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(**overrides):
    config = configs.get_config("derefnet:smoke")
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return config


def latest_params(workdir):
    config = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    ckpt = RunCheckpoints(workdir)
    trainer = train_lib.Trainer(configs.get_config("derefnet:smoke").__class__(config), workdir)
    state, _, _, step = ckpt.restore("latest", abstract_like(trainer.initial_state()))
    return jax.device_get(state.params), step


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    result = train_lib.train_and_evaluate(smoke_config(), workdir)
    return workdir, result


def test_smoke_run_writes_everything(smoke_run):
    workdir, result = smoke_run
    assert result["step"] == 6
    assert 0.0 <= result["test"]["mAP"] <= 1.0
    assert (workdir / "config.json").exists()
    assert (workdir / "qinit.npz").exists()
    assert sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit())[-1] == "6"
    assert any(p.name.isdigit() for p in (workdir / "checkpoints" / "best").iterdir())
    out = workdir / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    json.loads((workdir / "result.json").read_text(), parse_constant=pytest.fail)
    for key in ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25", "fps", "params", "pr_curves"):
        assert key in metrics
    header = (out / "detections.csv").read_text().splitlines()[0]
    assert header == "trajectory,frame,x,y,brightness,score"
    for fig in ("pr_curves.png", "samples.png", "loss_curves.png"):
        assert (out / fig).stat().st_size > 1000
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "validation" and "mAP" in r for r in records)
    assert any(list((workdir / "tensorboard").iterdir()))


def test_training_reduces_loss(smoke_run):
    """The loss on a fixed batch is lower with the trained params than with the initial ones."""
    workdir, _ = smoke_run
    config = smoke_config()
    trainer = train_lib.Trainer(config, workdir)
    init = trainer.initial_state()
    state, _, _, _ = trainer.checkpoints.restore("latest", abstract_like(init))
    batch = trainer.shard(next(iter(trainer.loader)))

    def loss(params):
        out = trainer.method.model.apply({"params": params}, batch["frames"], trainer.phi.astype(np.float32),
                                         trainer.q.astype(np.float32))
        return float(trainer.method.loss_fn(out, batch["labels"])[0])

    assert loss(state.params) < loss(init.params)


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(smoke_run, tmp_path):
    workdir, _ = smoke_run
    reference, step = latest_params(workdir)
    assert step == 6

    class Interrupt(Exception):
        pass

    def interrupt_at_5(step, _):
        if step == 5:  # after the step-3 checkpoint, before the next one
            raise Interrupt

    run = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(Interrupt):
        train_lib.train_and_evaluate(smoke_config(), run, hooks=[interrupt_at_5])
    first_call = time.monotonic() - start
    ckpt = RunCheckpoints(run)
    assert ckpt.latest.latest_step() == 3
    at_3 = ckpt.restore_meta("latest")[0]["train_seconds"]
    ckpt.close()
    assert 0 < at_3 <= first_call  # the checkpoint's training time was spent inside the first call
    start = time.monotonic()
    result = train_lib.train_and_evaluate(smoke_config(), run)
    second_call = time.monotonic() - start
    resumed, step = latest_params(run)
    assert step == 6
    # Bitwise on CPU: same data order (loader state restored), same deterministic XLA computation.
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, reference)
    # The run's training time adds the resumed call's to the checkpoint's (the work after step 3 that the
    # interruption lost is not counted: it was redone)
    assert result["resumed_train_seconds"] == at_3
    assert at_3 < result["train_seconds"] <= at_3 + second_call
    # The steps redone after the step-3 checkpoint are logged once: the same records as the uninterrupted run.
    from seqcsist_jax.metric_writers import _parse

    logged = lambda w: [(r["step"], r["split"]) for r in _parse(w / "metrics.jsonl")[0]]  # noqa: E731
    assert logged(run) == logged(workdir) and any(s > 3 for s, _ in logged(run))
    ckpt = RunCheckpoints(run)
    at_6 = ckpt.restore_meta("latest")[0]["train_seconds"]
    ckpt.close()
    assert at_3 < at_6 <= result["train_seconds"]
    from experiments.benchmarks import paper_run_report  # the report reads the same record

    assert paper_run_report.checkpoint_train_seconds(run) == at_6
    # global_batch_size -1 (from the devices) is resolved from what the checkpoint recorded: 1 per CPU device
    assert paper_run_report.summarize_run(run)["global_batch"] == jax.device_count()
    again = train_lib.train_and_evaluate(smoke_config(), run)  # finished: re-scored, nothing trained
    assert again["train_seconds"] == again["resumed_train_seconds"] == at_6


def test_the_loop_waits_for_each_call_before_queueing_the_one_after_next(tmp_path, monkeypatch):
    """Asynchronous dispatch would let the loop queue every step up to the next log step, and a stop signal
    then waits for all of them; the loop waits for call k before it queues call k + 2 (one call in flight while
    the next is queued), so a stop lands within one call of the signal."""
    events, alive = [], []  # alive: the metrics stay referenced, so no two share an id()
    original_run, original_wait = train_lib.Trainer.run_steps, jax.block_until_ready

    def run_steps(self, state, step, iterator):
        state, chunk = original_run(self, state, step, iterator)
        alive.append(chunk[-1])
        events.append(("run", step + 1, id(chunk[-1])))
        return state, chunk

    def wait(x):
        events.append(("wait", None, id(x)))
        return original_wait(x)

    monkeypatch.setattr(train_lib.Trainer, "run_steps", run_steps)
    monkeypatch.setattr(jax, "block_until_ready", wait)
    config = smoke_config(log_every_steps=100, num_train_steps=6)
    train_lib.train_and_evaluate(config, tmp_path)
    runs = [e for e in events if e[0] == "run"]
    assert [e[1] for e in runs] == list(range(1, 7))
    for k in range(2, len(runs)):  # before call k + 1 is queued, call k - 1 has been waited for
        before = events[: events.index(runs[k])]
        assert ("wait", None, runs[k - 2][2]) in before, (k, events)


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    original = train_lib.Trainer.shard
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        batch = dict(batch)
        if calls["n"] == 5:  # the 5th step sees a NaN frame
            batch["frames"] = np.full_like(np.asarray(batch["frames"]), np.nan)
        return original(self, batch)

    monkeypatch.setattr(train_lib.Trainer, "shard", poisoned)
    with pytest.raises(train_lib.NonFiniteLossError, match=r"step 5 .*step 3"):
        train_lib.train_and_evaluate(smoke_config(), tmp_path)
    ckpt = RunCheckpoints(tmp_path)
    assert ckpt.latest.latest_step() == 3


def test_optimizer_is_pytorch_adam_with_l2():
    """One step equals Adam on (grad + wd·param), PyTorch's ``weight_decay`` (hand-written reference).

    A large decay makes L2-in-the-gradient distinguishable from decoupled (AdamW) decay and from none.
    """
    config = configs.get_config("derefnet").optimizer
    config.weight_decay, config.learning_rate = 0.5, 0.1
    opt = train_lib.create_optimizer(config)
    p = {"w": jnp.array([1.0, -2.0, 3.0])}
    g = {"w": jnp.array([0.5, 0.1, -0.3])}
    updates, _ = opt.update(g, opt.init(p), p)
    grad = np.array([0.5, 0.1, -0.3]) + 0.5 * np.array([1.0, -2.0, 3.0])
    m_hat, v_hat = grad, grad**2  # first step: bias-corrected moments equal g and g²
    expected = -0.1 * m_hat / (np.sqrt(v_hat) + config.eps)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_warmup_ramps_linearly_then_follows_the_schedule(schedule):
    """``warmup_steps`` against the closed form: lr·s/w during the ramp; afterwards the constant rate, or the
    cosine ``lr·(1 + cos(π·(s - w)/(n - w)))/2`` over the remaining steps."""
    config = configs.get_config("derefnet").optimizer
    config.learning_rate, config.schedule, config.warmup_steps = 3e-3, schedule, 10
    n = 50
    lr = train_lib.learning_rate_schedule(config, n)
    for s in (0, 1, 5, 10, 20, 37, 49):
        if s <= 10:
            want = 3e-3 * s / 10
        elif schedule == "constant":
            want = 3e-3
        else:
            want = 3e-3 * 0.5 * (1 + np.cos(np.pi * (s - 10) / (n - 10)))
        # optax evaluates in float32; near the end 1 + cos cancels, so an absolute lr·1e-6 (≈ 8 float32 ulps of lr).
        np.testing.assert_allclose(float(lr(s)), want, rtol=1e-6, atol=3e-3 * 1e-6)
    config.warmup_steps = 0
    assert train_lib.learning_rate_schedule(configs.get_config("derefnet").optimizer) == 1e-4
    config.schedule, config.warmup_steps = "cosine", n
    with pytest.raises(ValueError, match="warmup_steps"):
        train_lib.learning_rate_schedule(config, n)


def test_paper_config_matches_spec():
    c = configs.get_config("derefnet")
    assert c.dataset.name == "seqcsist/default"
    assert c.optimizer.learning_rate == 1e-4 and c.optimizer.weight_decay == 1e-5
    assert c.per_device_batch_size == 1 and c.num_epochs == 100 and c.eval_every_epochs == 10
    assert c.shuffle is False and c.model.num_stages == 9 and c.loss.preset == "code"


def test_unknown_config_lists_available():
    with pytest.raises(ValueError, match="derefnet"):
        configs.get_config("no_such_model")


def _run(args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_cli_errors_are_clear(tmp_path):
    bad_name = _run(["-m", "experiments.train", "--config=nope", f"--workdir={tmp_path}"])
    assert bad_name.returncode != 0
    assert "unknown config 'nope'" in bad_name.stderr and "derefnet" in bad_name.stderr
    bad_override = _run(["-m", "experiments.train", "--config=derefnet:smoke", "--config.no_such_field=1",
                         f"--workdir={tmp_path}"])
    assert bad_override.returncode != 0
    assert "no_such_field" in bad_override.stderr


@pytest.mark.slow
def test_invalid_optimizer_value_is_one_line_and_leaves_no_saved_config(tmp_path):
    """A warmup as long as the run is refused in one line before config.json is written, so the corrected
    command then runs in the same workdir (smoke: 6 steps)."""
    bad = _run(["-m", "experiments.train", "--config=derefnet:smoke", "--config.optimizer.warmup_steps=6",
                f"--workdir={tmp_path}"])
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "optimizer.warmup_steps (6) must be below the number of training steps (6)" in bad.stderr
    assert not (tmp_path / "config.json").exists()
    good = _run(["-m", "experiments.train", "--config=derefnet:smoke", "--config.optimizer.warmup_steps=2",
                 f"--workdir={tmp_path}"])
    assert good.returncode == 0, good.stderr[-2000:]


_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import sys, json, numpy as np, jax, jax.numpy as jnp
    from experiments import configs
    from seqcsist_jax import train as train_lib

    def norm(x):
        return float(np.sqrt(np.sum(np.square(np.asarray(x, np.float64)))))

    config = configs.get_config("derefnet:smoke")
    config.num_devices, config.per_device_batch_size, config.dataset.num_train = 4, 1, 8
    trainer = train_lib.Trainer(config, sys.argv[1])
    model, loss_fn = trainer.method.model, trainer.method.loss_fn
    phi, q = jnp.asarray(trainer.phi, jnp.float32), jnp.asarray(trainer.q, jnp.float32)
    loss = lambda p, b: loss_fn(model.apply({"params": p}, b["frames"], phi, q), b["labels"])[0]
    sharded = jax.jit(jax.value_and_grad(loss), in_shardings=(trainer.replicated, trainer.data_sharding),
                      out_shardings=trainer.replicated)
    single = jax.jit(jax.value_and_grad(loss), device=jax.devices()[0])
    leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]

    def reference(p, host):
        # What DDP computes: each device's trajectory on its own (batch 1), gradients averaged.
        parts = [single(p, {k: v[i:i + 1] for k, v in host.items()}) for i in range(len(host["frames"]))]
        return (float(np.mean([float(l) for l, _ in parts])),
                [sum(x) / len(parts) for x in zip(*[leaves(g) for _, g in parts])])

    def descend(p, grads):
        # Globally normalised gradient descent: no per-coordinate normalisation (Adam's) to amplify rounding.
        scale = 1e-3 / (np.sqrt(sum(np.sum(np.square(g)) for g in grads)) + 1e-12)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(p),
                                            [np.asarray(x, np.float32) - np.float32(scale) * g.astype(np.float32)
                                             for x, g in zip(leaves(p), grads)])

    params = trainer.initial_state().params
    it = iter(trainer.loader)
    batches = [{k: np.asarray(v) for k, v in next(it).items() if k in ("frames", "labels")} for _ in range(3)]
    corrupt = {k: np.concatenate([v[:-1], v[:1]]) for k, v in batches[0].items()}  # last device's shard lost

    ref_loss, ref_grads = reference(params, batches[0])
    floor = 1e-3 * max(norm(g) for g in ref_grads)  # leaves whose exact gradient is 0 (first stage's step size)
    out = {"devices": jax.device_count()}
    for tag, first in (("sharded", batches[0]), ("corrupt", corrupt)):
        l, g = sharded(params, trainer.shard(first))
        out[tag] = {"loss_rel": abs(float(l) - ref_loss) / abs(ref_loss),
                    "grad_rel": max(norm(a - b) / max(norm(a), floor) for a, b in zip(ref_grads, leaves(g)))}
    p_ref = p_dp = params
    for batch in batches:
        p_ref = descend(p_ref, reference(p_ref, batch)[1])
        p_dp = descend(p_dp, leaves(sharded(p_dp, trainer.shard(batch))[1]))
    update = [a - b for a, b in zip(leaves(p_ref), leaves(params))]
    u_floor = 1e-3 * max(norm(u) for u in update)
    out["sharded"]["sgd_rel"] = max(norm(a - b) / max(norm(u), u_floor)
                                    for a, b, u in zip(leaves(p_ref), leaves(p_dp), update))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
    """Data parallelism preserves the computation: a global batch of 4 trajectories sharded over 4 devices
    gives the loss and gradients of the 4 trajectories computed one by one on one device and averaged (what
    DDP computes), and 3 plain descent steps end at the same params.

    Each device runs exactly the single-trajectory computation, so only the float32 mean over 4 devices is
    rounded differently: a few ulps relative to each leaf's gradient norm (1e-5 leaves a wide margin; leaves
    whose exact gradient is 0 are measured against 1e-3 of the largest leaf). The reference is batch 1 per call
    on purpose: one call on a batch of 4 differs by up to 0.3 % here, because XLA's batch-4 kernels round
    differently and DeRefNet's gradient is only piecewise smooth (ReLU, |·|, floor-based deformable sampling).
    A real sharding bug — one device's trajectory lost — is checked to break the same comparison.
    """
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"), JAX_PLATFORMS="cpu")
    proc = _run(["-c", _PARALLEL_SCRIPT, str(tmp_path)], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    ok, bad = result["sharded"], result["corrupt"]
    assert ok["loss_rel"] < 1e-5 and ok["grad_rel"] < 1e-5 and ok["sgd_rel"] < 1e-4, result
    assert bad["loss_rel"] > 1e-3 and bad["grad_rel"] > 1e-2, result  # the same checks catch a lost shard


_MULTIPROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, json, numpy as np, jax
    port, pid, nproc, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if nproc > 1:
        jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)
    from experiments import configs
    from seqcsist_jax import train as train_lib
    config = configs.get_config("derefnet:smoke")
    config.per_device_batch_size = 1
    trainer = train_lib.Trainer(config, workdir)
    state = trainer.initial_state()
    it = iter(trainer.loader)
    for _ in range(2):
        state, _ = trainer.train_step(state, trainer.shard(next(it)))
    leaves = [np.asarray(l).ravel() for l in jax.tree_util.tree_leaves(jax.device_get(state.params))]
    np.save(f"{workdir}/params_{pid}.npy", np.concatenate(leaves))
    print(json.dumps({"pid": pid, "processes": jax.process_count()}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    """Two processes with jax.distributed on localhost (CPU collectives) train like one 2-device process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", _MULTIPROCESS_SCRIPT, str(port), str(i), "2", str(tmp_path / "mp")],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]  # outputs are small, so pipes cannot fill and block
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    multi = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert all(m["processes"] == 2 for m in multi)
    multi = [np.load(tmp_path / "mp" / f"params_{i}.npy") for i in range(2)]
    single_env = dict(env, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"))
    single = _run(["-c", _MULTIPROCESS_SCRIPT, "0", "0", "1", str(tmp_path / "sp")], env=single_env)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = np.load(tmp_path / "sp" / "params_0.npy")
    for m in multi:
        np.testing.assert_allclose(m, reference, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ evaluation


@pytest.mark.slow
def test_evaluate_decode_choices_change_the_numbers(smoke_run):
    """``--decode`` reaches the evaluation: continuous decoding of the frames beats the barely trained grid maps."""
    from experiments.evaluate import evaluate_workdir

    workdir, result = smoke_run
    grid = evaluate_workdir(workdir, checkpoint="best", split="test", decode="grid")
    assert grid["mAP"] == pytest.approx(result["test"]["mAP"])  # same checkpoint, same protocol
    assert grid["protocol_note"] == ""  # SeqCSIST data scored at threshold 70, margin 2
    traj = evaluate_workdir(workdir, checkpoint="best", split="test", decode="trajectory")
    assert traj["decode"] == "trajectory" and grid["decode"] == "grid"
    assert traj["mAP"] > grid["mAP"] + 0.3
    assert (workdir / "eval" / "test-trajectory" / "metrics.json").exists()
    assert (workdir / "eval" / "test-trajectory" / "detections.csv").exists()
    # continuous decoders calibrate the imaging model once per workdir; noise-free SPEC data gives the SPEC model
    saved = json.loads((workdir / "imaging.json").read_text())
    dataset = json.loads((workdir / "config.json").read_text())["dataset"]
    assert saved.pop("calibrated_on") == {"dataset": dataset["name"], "split": dataset["train_split"]}
    assert saved == traj["imaging"] and abs(saved["sigma"] - 0.5) < 0.01 and abs(saved["gain"] - 1) < 0.01


@pytest.mark.slow
def test_evaluate_recalibrates_for_other_data(smoke_run, tmp_path):
    """The workdir's imaging.json is tied to the data it was calibrated on: evaluating with a config that reads
    other data (here another split as the calibration split; ``--config.dataset.name=...`` alike) calibrates
    again with a warning instead of reusing it, and writes next to the run's own result."""
    import shutil

    from experiments.evaluate import evaluate_workdir
    from seqcsist_jax.workdir import load_run_config

    workdir = tmp_path / "run"
    shutil.copytree(smoke_run[0], workdir)
    evaluate_workdir(workdir, checkpoint="best", split="test", decode="refine")
    own = json.loads((workdir / "imaging.json").read_text())["calibrated_on"]
    config = load_run_config(workdir)
    config.dataset.train_split = "validation"
    with pytest.warns(RuntimeWarning, match=f"calibrated on dataset={own['dataset']}, split=train, not on "
                                            f"dataset={own['dataset']}, split=validation"):
        other = evaluate_workdir(workdir, checkpoint="best", split="test", decode="refine", config=config)
    assert json.loads((workdir / "imaging.json").read_text())["calibrated_on"]["split"] == "validation"
    assert pathlib.Path(other["out_dir"]).name.startswith("test-refine-dataset.train_split=")


def test_evaluate_geometry_prior_reaches_the_decoder(smoke_run, monkeypatch):
    """``geometry_prior=True`` (``--geometry_prior``) adds the star geometry for a dataset of our generator: the
    trajectory decoder runs the star fit (off without it, see above) and finds the targets."""
    from experiments.evaluate import evaluate_workdir
    from seqcsist_jax.decode import trajectory

    calls = []
    real = trajectory.fit_star
    monkeypatch.setattr(trajectory, "fit_star", lambda *a, **k: calls.append(1) or real(*a, **k))
    workdir, _ = smoke_run
    star = evaluate_workdir(workdir, checkpoint="best", split="test", decode="trajectory", geometry_prior=True)
    assert calls and star["decode"] == "trajectory"
    assert star["mAP"] > 0.9 and star["count_accuracy"] == 1.0


def test_evaluate_imported_checkpoint_and_public_export(smoke_run, tmp_path):
    """A public-layout state dict (.npz) of the trained params scores exactly like the run's own checkpoint, and
    ``export_public`` writes one parseable public-layout annotation per scored frame."""
    from experiments.evaluate import evaluate_workdir
    from seqcsist_jax.data.public_format import parse_annotation
    from seqcsist_jax.interop import params_to_state_dict, save_npz

    workdir, _ = smoke_run
    params, _ = latest_params(workdir)
    path = tmp_path / "public_weights.npz"
    save_npz(path, params_to_state_dict(params))
    own = evaluate_workdir(workdir, checkpoint="latest", split="test")
    imported = evaluate_workdir(tmp_path / "imported", split="test", torch_checkpoint=str(path),
                                config=smoke_config(), export_public=True)
    assert imported["mAP"] == pytest.approx(own["mAP"], abs=1e-9)
    assert imported["num_detections"] == own["num_detections"]
    files = sorted((tmp_path / "imported" / "eval" / "test" / "public" / "annotation").glob("COS*.xml"))
    config = smoke_config()
    t = config.dataset.simulate.frames_per_trajectory
    assert len(files) == config.dataset.num_test * (t - 4)
    assert all(parse_annotation(f).shape[-1] == 3 for f in files)


def test_evaluation_line_says_when_the_model_outputs_nothing():
    config = configs.get_config("derefnet_quick")
    nothing = {"mAP": 0.0, "num_detections": 0.0, "num_gt": 3440.0}
    note = train_lib._no_detection_note(nothing, config)
    assert "no map cell reached the threshold 70" in note and "--config.seed" in note
    assert train_lib._no_detection_note({"mAP": 0.1, "num_detections": 12.0, "num_gt": 3440.0}, config) == ""
    assert train_lib._no_detection_note({"mAP": 0.0, "num_detections": 0.0, "num_gt": 0.0}, config) == ""
    # one run's evaluations: the short-run hint once, then the collapse hint once, then reminders
    said: set[str] = set()
    lines = [train_lib._no_detection_note(nothing, config, said, step=step) for step in (3, 6, 350, 700)]
    assert "after 3 training steps" in lines[0] and "--config.seed" not in lines[0]
    assert lines[1] == lines[3] == " — still no detection (see the first such line)"
    assert lines[2] == train_lib._no_detection_note(nothing, config, step=350) == note


def test_without_a_bar_progress_lines_come_at_most_once_a_minute(monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(train_lib.time, "monotonic", lambda: clock[0])
    lines = train_lib._ProgressLines(num_steps=1000)
    lines.maybe_say(10, {"loss": 0.5, "steps_per_second": 2.0})  # 0 s after the start: quiet
    clock[0] += 61.0
    lines.maybe_say(130, {"loss": 0.25, "steps_per_second": 2.0})
    clock[0] += 30.0
    lines.maybe_say(190, {"loss": 0.2, "steps_per_second": 2.0})  # 30 s after the last line: quiet
    clock[0] += 31.0
    lines.maybe_say(998, {"loss": 0.125, "steps_per_second": 1.0})
    clock[0] += 61.0
    lines.maybe_say(1000, {"loss": 0.1, "steps_per_second": 1.0})  # the last step: the done line says it
    assert capsys.readouterr().out.splitlines() == [
        "step 130 of 1000 (13%): loss 0.25, 2.00 steps/s, about 7 minutes left",
        "step 998 of 1000 (100%): loss 0.125, 1.00 steps/s, about 2 s left",
    ]


def test_a_negative_step_count_is_refused_in_one_line_before_the_workdir_exists(tmp_path):
    bad = _run(["-m", "experiments.train", "--config=derefnet:smoke", f"--workdir={tmp_path / 'w'}",
                "--config.num_train_steps=-5"])
    epochs = configs.get_config("derefnet:smoke").num_epochs
    assert bad.returncode == 2 and [line for line in bad.stderr.splitlines() if line.strip()] == [
        "error: config.num_train_steps must be a positive number of steps, or -1 to train config.num_epochs "
        f"epochs ({epochs!r}); got -5"]
    assert not (tmp_path / "w").exists()
    config = configs.get_config("derefnet:smoke")
    train_lib.check_schedule(config)
    config.num_train_steps = 0  # not "train the config's epochs": that may be 100 epochs
    with pytest.raises(train_lib.ScheduleConfigError, match="got 0$"):
        train_lib.check_schedule(config)
    config.num_train_steps = -1
    train_lib.check_schedule(config)  # the configs' "train num_epochs epochs"
    config.num_epochs = 0.0
    with pytest.raises(train_lib.ScheduleConfigError, match="num_epochs=0.0"):
        train_lib.check_schedule(config)
