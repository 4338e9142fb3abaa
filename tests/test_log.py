"""The log format: round trips, lazy reads, atomic writes, and every validation problem via the CLI."""

import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from seqsense.cli import main
from seqsense.errors import LogFormatError, SeqsenseError
from seqsense.log import LogWriter, open_log, seconds_to_ns
from seqsense.log.validate import validate


def write_good(path, episodes=2):
    """A small valid log: 20 Hz camera, 200 Hz imu, label stream."""
    with LogWriter(path, provenance={"scenario": "unit"}) as w:
        for e in range(episodes):
            ep = w.episode(f"ep_{e:03d}", provenance={"k": e})
            cam = ep.stream("camera", "image", (8, 8, 3), rate_hz=20, units="", source="test", compression="lzf")
            for i in range(20):
                cam.append(i * 50_000_000, np.full((8, 8, 3), i + e, np.uint8))
            t = seconds_to_ns(np.arange(200) / 200)
            ep.write_stream("imu", "vector", t, np.ones((200, 6)) * e, fields=list("abcdef"), units="m/s2", rate_hz=200)
            ep.write_stream("truth/cls", "label", t[::10], np.arange(20) % 3, rate_hz=20)
    return path


def test_round_trip_and_lazy_access(tmp_path):
    path = write_good(tmp_path / "a.h5")
    log = open_log(path)
    assert log.episode_names == ["ep_000", "ep_001"]
    assert log.provenance == {"scenario": "unit"}
    ep = log.episode("ep_001")
    assert ep.provenance == {"k": 1}
    assert ep.stream_names == ["camera", "imu", "truth/cls"]
    cam = ep.stream("camera")
    assert (cam.kind, cam.sample_shape, cam.rate_hz, len(cam)) == ("image", (8, 8, 3), 20.0, 20)
    assert cam.read(3, 5)[:, 0, 0, 0].tolist() == [4, 5]
    assert cam.index_at(149_999_999) == 2 and cam.index_at(-1) == -1
    t, x = cam.read_time(100_000_000, 200_000_000)
    assert t.tolist() == [100_000_000, 150_000_000] and x.shape == (2, 8, 8, 3)
    imu = ep.stream("imu")
    assert imu.fields == list("abcdef") and imu.units == "m/s2" and imu.dtype == np.float32
    assert validate(path) == []


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(LogFormatError, match="does not exist"):
        open_log(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(LogFormatError, match="junk.h5"):
        open_log(tmp_path / "junk.h5")
    log = open_log(write_good(tmp_path / "a.h5"))
    with pytest.raises(LogFormatError, match="no stream 'nope'.*camera"):
        log.episode("ep_000").stream("nope")


def test_directory_is_named_as_a_directory(tmp_path, capsys):
    folder = tmp_path / "run3"
    folder.mkdir()
    write_good(folder / "a.h5")
    with pytest.raises(LogFormatError, match=r"'.*run3' is a directory, not a seqsense log file \(pass the .h5 file inside it: a.h5\)"):
        open_log(folder)
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is a directory, not a seqsense log file" in err and "Unable to" not in err  # no HDF5 internals
    assert main(["train", "--model", "framewise", "--data", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "run3' is a directory, not a seqsense log file" in err and "Unable to" not in err


def test_writer_rejects_bad_samples(tmp_path):
    with pytest.raises(SeqsenseError, match="shape"):
        with LogWriter(tmp_path / "b.h5") as w:
            w.episode("ep").stream("imu", "vector", (3,)).append(0, np.zeros(4))
    assert not (tmp_path / "b.h5").exists()
    assert list(tmp_path.iterdir()) == []  # temporary file removed too
    with pytest.raises(SeqsenseError, match="valid kinds"):
        with LogWriter(tmp_path / "c.h5") as w:
            w.episode("ep").stream("x", "pointcloud", (3,))


def test_exception_keeps_previous_file(tmp_path):
    path = write_good(tmp_path / "a.h5")
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with LogWriter(path) as w:
            w.episode("ep").write_stream("imu", "vector", np.arange(3), np.zeros((3, 2)))
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before


def test_sigkill_mid_write_leaves_no_file_and_keeps_previous(tmp_path):
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from seqsense.log import LogWriter
        w = LogWriter(sys.argv[1])
        s = w.episode("ep_000").stream("camera", "image", (64, 64, 3))
        i = 0
        while True:
            s.append(i, np.zeros((64, 64, 3), np.uint8)); i += 1
            if i == 2000: print("writing", flush=True)
        """
    )
    for existing in (False, True):
        dest = tmp_path / f"killed_{existing}.h5"
        if existing:
            write_good(dest)
        before = dest.read_bytes() if existing else None
        proc = subprocess.Popen([sys.executable, "-c", script, str(dest)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if existing:
            assert dest.read_bytes() == before
            assert validate(dest) == []
        else:
            assert not dest.exists()


def _corrupt(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


CASES = {
    "backwards": (lambda f: f["episodes/ep_000/imu/t"].__setitem__(50, 0), "timestamps go backwards", "ep_000", "imu", 50),
    "nan": (lambda f: f["episodes/ep_001/imu/data"].__setitem__(7, np.nan), "NaN or Inf", "ep_001", "imu", 7),
    "inf": (lambda f: f["episodes/ep_001/imu/data"].__setitem__(9, np.inf), "NaN or Inf", "ep_001", "imu", 9),
    "shape_mismatch": (lambda f: f["episodes/ep_000/camera/t"].resize((19,)), "shape mismatch", "ep_000", "camera", None),
    "dtype": (
        lambda f: (f["episodes/ep_000/imu"].__delitem__("data"), f["episodes/ep_000/imu"].create_dataset("data", data=np.zeros((200, 6), np.int16))),
        "stores float32, found dtype int16",
        "ep_000",
        "imu",
        None,
    ),
    "empty": (
        lambda f: (f["episodes/ep_000/truth/cls/t"].resize((0,)), f["episodes/ep_000/truth/cls/data"].resize((0,))),
        "empty stream",
        "ep_000",
        "truth/cls",
        None,
    ),
    "version": (lambda f: f.attrs.__setitem__("format_version", "2.0"), "unknown format version '2.0'", None, None, None),
    "missing_attr": (lambda f: f["episodes/ep_001/camera"].attrs.__delitem__("units"), "missing attribute 'units'", "ep_001", "camera", None),
    "missing_fields": (lambda f: f["episodes/ep_000/imu"].attrs.__delitem__("fields"), "missing attribute 'fields'", "ep_000", "imu", None),
    "t_dtype": (
        lambda f: (f["episodes/ep_000/imu"].__delitem__("t"), f["episodes/ep_000/imu"].create_dataset("t", data=np.arange(200.0))),
        "1-D int64",
        "ep_000",
        "imu",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_reports_each_problem(tmp_path, capsys, case):
    fn, text, episode, stream, index = CASES[case]
    path = write_good(tmp_path / f"{case}.h5")
    _corrupt(path, fn)
    problems = [p for p in validate(path) if p.severity == "error"]
    assert any(text in p.message for p in problems), problems
    hit = next(p for p in problems if text in p.message)
    assert (hit.episode, hit.stream, hit.index) == (episode, stream, index)
    assert main(["inspect", "--validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert text in err and f"{case}.h5" in err
    if episode:
        assert f"episode '{episode}'" in err and f"stream '{stream}'" in err


def test_validate_reports_every_problem_at_once(tmp_path):
    path = write_good(tmp_path / "many.h5")
    for case in ("backwards", "nan", "missing_attr"):
        _corrupt(path, CASES[case][0])
    messages = " | ".join(p.message for p in validate(path))
    assert "backwards" in messages and "NaN" in messages and "units" in messages


def test_gaps_are_warnings_and_allow_nan_streams_pass(tmp_path):
    path = tmp_path / "gap.h5"
    with LogWriter(path) as w:
        ep = w.episode("ep_000")
        t = seconds_to_ns(np.r_[np.arange(10) / 100, 5.0])
        ep.write_stream("imu", "vector", t, np.zeros((11, 2)), rate_hz=100)
        ep.write_stream("truth/q", "vector", t, np.full((11, 4), np.nan), rate_hz=100, allow_nan=True)
    problems = validate(path)
    assert [(p.stream, p.severity) for p in problems] == [("imu", "warning"), ("truth/q", "warning")]
    assert all("gap" in p.message and p.index == 10 for p in problems)
    assert main(["inspect", "--validate", str(path)]) == 0


def test_inspect_summary_and_json(tmp_path, capsys):
    import json

    path = write_good(tmp_path / "a.h5")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "imu" in out and "m/s2" in out and "200" in out
    assert main(["inspect", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    imu = next(s for s in data[0]["summary"]["episodes"][0]["streams"] if s["stream"] == "imu")
    assert imu["samples"] == 200 and abs(imu["median_rate_hz"] - 200) < 1e-6 and imu["shape"] == [6]


def test_cli_bad_input_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "junk.h5"
    bad.write_bytes(b"xx")
    r = subprocess.run([sys.executable, "-m", "seqsense", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "junk.h5" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "seqsense", "--debug", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = subprocess.run([sys.executable, "-m", "seqsense", "inspect"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
