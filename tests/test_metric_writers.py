"""The TensorBoard event file of :class:`MetricWriter`: readable by an independent parser, and a write that fails
(a file-size limit standing in for a full disk) is one error naming the file, with nothing printed at exit."""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import pytest

from seqcsist_jax.metric_writers import MetricWriter, read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): a loop reference, not the writer's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:  # TFRecord framing: rotate right by 15 and add a constant
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: pathlib.Path) -> list[bytes]:
    """The payloads of a TFRecord file (uint64 length, masked CRC of it, payload, masked CRC of the payload)."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == _masked(_crc32c(header))
        payload = data[at + 12:at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == _masked(_crc32c(payload))
        out.append(payload)
        at += 16 + length
    return out


def test_event_file_holds_every_scalar_in_tensorboards_format(tmp_path):
    from tensorboardX.proto import event_pb2

    writer = MetricWriter(tmp_path)
    writer.write(1, {"loss": 2.5, "lr": 1e-3})
    writer.write(2, {"mAP": 0.25}, split="validation")
    writer.close()
    writer.close()  # a second close is harmless
    (events_file,) = (tmp_path / "tensorboard").iterdir()
    assert events_file.name.startswith("events.out.tfevents.")
    events = [event_pb2.Event.FromString(r) for r in _records(events_file)]
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(1, "train/loss", 2.5), (1, "train/lr", pytest.approx(1e-3, rel=1e-7)),
                       (2, "validation/mAP", 0.25)]  # float32 values: 2.5 and 0.25 exactly
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_failed_event_file_write_is_one_error_naming_the_file_and_nothing_at_exit(tmp_path):
    # In a subprocess: the file-size limit (RLIMIT_FSIZE; writes past it fail with EFBIG) is per process, and
    # what matters is also what the interpreter prints when it exits after the failure.
    script = textwrap.dedent("""
        import resource, sys
        from seqcsist_jax.metric_writers import MetricWriter, MetricsWriteError

        writer = MetricWriter(sys.argv[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        # ~1.3 KB of events and ~0.7 KB of JSON per write: the event file reaches the limit first
        scalars = {f"a_long_scalar_name_{i:02d}": float(i) for i in range(20)}
        try:
            for step in range(100):
                writer.write(step, scalars)
        except MetricsWriteError as e:
            print(e)
        writer.close()
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    (events_file,) = (tmp_path / "tensorboard").iterdir()
    assert proc.stdout.splitlines() == [
        f"cannot write {events_file} (File too large); training stopped, checkpoints are intact: raise the "
        "file-size limit (ulimit -f) and rerun to resume"]
    assert proc.stderr == ""  # no "Exception ignored …" or thread traceback when the process exits
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert 1 <= len(steps) < 100 and steps == list(range(len(steps)))


def test_missing_history_is_named_only_when_records_before_the_resume_step_are_gone(tmp_path):
    writer = MetricWriter(tmp_path, tensorboard=False)
    assert writer.missing_history(0, 10) is None  # a new run
    assert writer.missing_history(5, 10) is None  # resumed before its first log step: nothing was lost
    note = writer.missing_history(20, 10)  # no metrics.jsonl at all
    assert note == (f"{tmp_path / 'metrics.jsonl'} holds no record of steps 1–20 (deleted or emptied?): the run "
                    "resumes from its checkpoint at step 20, but its loss curve and reports start there")
    writer.write(30, {"loss": 1.0})  # only a record after the resume step (forget_after removes those)
    assert writer.missing_history(20, 10) is not None
    writer.write(10, {"loss": 2.0})
    assert writer.missing_history(20, 10) is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert writer.missing_history(20, 10) is not None
