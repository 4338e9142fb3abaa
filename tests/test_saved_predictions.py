"""`seqsense eval --save-predictions / --save-mcap`: the saved streams are the scored replays, the log
validates, and the MCAP file reads back with its topics, timestamps, values and decodable frames."""

import base64
import json
import os

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader

from seqsense.cli import main
from seqsense.dataset import WindowDataset, episode_refs
from seqsense.evaluate.mcap_out import write_mcap
from seqsense.evaluate.replay import Replay, replay_episode
from seqsense.evaluate.saved import load_predictions, save_predictions
from seqsense.log import open_log
from seqsense.log.validate import validate
from seqsense.models.checkpoint import load_checkpoint

TRAIN = ["--set", "steps=3", "--set", "batch_size=4", "--set", "window=4", "--set", "hidden=8", "--set", "frame_channels=4", "--set", "val_every=3", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny occluded tracking log and two briefly trained framewise runs: position and the occlusion label."""
    d = tmp_path_factory.mktemp("saved")
    log = d / "track.h5"
    gen = ["generate", "tracking", "--out", str(log), "--episodes", "2", "--seed", "3", "--duration-s", "1.5"]
    assert main([*gen, "--set", "image_size=16", "--set", "occlusion=0.4", "--set", "occlusion_duration_s=0.3"]) == 0
    assert main(["train", "--model", "framewise", "--data", str(log), "--out", str(d / "pos"), *TRAIN]) == 0
    target = ["--target", "truth/occluded", "--set", "num_classes=2"]
    assert main(["train", "--model", "framewise", "--data", str(log), "--out", str(d / "occ"), *target, *TRAIN]) == 0
    return d, log


def read_mcap(path):
    """{topic: [(log_time, decoded JSON)]} and {topic: (schema name, decoded JSON schema)}."""
    messages, schemas = {}, {}
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            messages.setdefault(channel.topic, []).append((message.log_time, json.loads(message.data)))
            schemas[channel.topic] = (schema.name, json.loads(schema.data))
    return messages, schemas


def test_saved_streams_are_the_scored_replays_and_mcap_reads_back(setup, capsys):
    d, log = setup
    h5, mc = d / "pred.h5", d / "pred.mcap"
    args = ["eval", str(d / "pos"), "--data", str(log), "--out", str(d / "ev"), "--wrap", "ema:alpha=0.5", "--no-progress"]
    assert main([*args, "--save-predictions", str(h5), "--save-mcap", str(mc), "--mcap-image-format", "png"]) == 0
    assert f"wrote {h5}" in capsys.readouterr().out
    assert not [p for p in os.listdir(d) if p.endswith(".partial") or p.startswith(".")]
    assert [p for p in validate(h5) if p.severity == "error"] == []
    saved_log, src = open_log(h5), open_log(log)
    assert saved_log.episode_names == src.episode_names
    ep, src_ep = saved_log.episode("ep_000"), src.episode("ep_000")
    assert {"camera", "truth/position", "truth/occluded", "pred/pos/mean", "pred/pos/var", "pred/pos+ema(alpha=0.5)/mean"} <= set(ep.stream_names)
    np.testing.assert_array_equal(ep.stream("camera").read(), src_ep.stream("camera").read())
    mean_st = ep.stream("pred/pos/mean")
    assert mean_st.fields == src_ep.stream("truth/position").fields and mean_st.units == src_ep.stream("truth/position").units

    saved = load_predictions(h5)
    assert set(saved) == {"pos", "pos+ema(alpha=0.5)"} and set(saved["pos"]) == {"ep_000", "ep_001"}
    model = load_checkpoint(d / "pos")
    ds = WindowDataset(episode_refs([log]), model.config.window_spec(window=1))
    for k, name in enumerate(("ep_000", "ep_001")):
        rep, got = replay_episode(model.predictor(), ds, k), saved["pos"][name]
        np.testing.assert_array_equal(got["t_s"], rep.t_s)
        np.testing.assert_array_equal(got["mean"], rep.mean.astype(np.float32))
        np.testing.assert_array_equal(got["var"], rep.var.astype(np.float32))
        np.testing.assert_array_equal(got["valid"], rep.valid)
        np.testing.assert_array_equal(got["truth"][rep.valid], rep.y_true[rep.valid])
        assert got["source_episode"] == name and got["target"] == "truth/position"

    messages, schemas = read_mcap(mc)
    expected = {f"/{e}/{s}" for e in ("ep_000", "ep_001") for s in ("camera", "truth/position", "truth/occluded", "pred/pos/mean", "pred/pos/std")}
    assert expected <= set(messages)
    assert schemas["/ep_000/camera"][0] == "foxglove.CompressedImage"
    assert set(schemas["/ep_000/camera"][1]["properties"]) == {"timestamp", "frame_id", "data", "format"}
    props = schemas["/ep_000/pred/pos/mean"][1]["properties"]
    assert set(props) == {"t_s", "x", "y"} and all(isinstance(p["type"], str) for p in props.values())  # one type each, as Foxglove needs
    truth = src_ep.stream("truth/position")
    msgs = messages["/ep_000/truth/position"]
    assert len(msgs) == len(truth) and [t for t, _ in msgs] == truth.t.tolist()
    assert msgs[5][1]["y"] == float(truth.read(5, 6)[0, 1]) and msgs[5][1]["t_s"] == truth.t[5] / 1e9
    std = messages["/ep_000/pred/pos/std"]
    assert [t for t, _ in std] == saved["pos"]["ep_000"]["t_ns"].tolist()
    np.testing.assert_allclose(std[3][1]["x"], np.sqrt(saved["pos"]["ep_000"]["var"][3, 0]), rtol=1e-6)
    frames = src_ep.stream("camera")
    cams = messages["/ep_000/camera"]
    assert [t for t, _ in cams] == frames.t.tolist()
    stamp, msg = cams[7]
    assert msg["format"] == "png" and msg["timestamp"] == {"sec": stamp // 10**9, "nsec": stamp % 10**9}
    img = cv2.imdecode(np.frombuffer(base64.b64decode(msg["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), frames.read(7, 8)[0])  # PNG is lossless

    jpeg = write_mcap(h5, d / "jpeg.mcap")  # the default: JPEG frames, close to the originals
    _, first = read_mcap(jpeg)[0]["/ep_000/camera"][7]
    img = cv2.imdecode(np.frombuffer(base64.b64decode(first["data"]), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == frames.sample_shape and np.abs(img[..., ::-1].astype(int) - frames.read(7, 8)[0]).mean() < 20


def test_label_target_mcap_only_without_inputs(setup):
    d, log = setup
    mc = d / "occ.mcap"
    args = ["eval", str(d / "occ"), "--data", str(log), "--out", str(d / "ev_occ"), "--episodes", "ep_001", "--no-progress"]
    assert main([*args, "--save-predictions", str(mc), "--no-inputs"]) == 0  # a .mcap suffix: MCAP only
    assert not [p for p in os.listdir(d) if p.startswith(".")]  # the intermediate log is gone
    messages, _ = read_mcap(mc)
    assert "/camera" not in messages and {"/truth/occluded", "/pred/occ/mean", "/pred/occ/probs"} <= set(messages)
    probs = messages["/pred/occ/probs"]
    label = messages["/pred/occ/mean"]
    assert len(probs) == len(label) == len(open_log(log).episode("ep_001").stream("truth/occluded"))
    p = probs[4][1]
    assert set(p) == {"t_s", "p0", "p1"} and abs(p["p0"] + p["p1"] - 1) < 1e-5
    assert label[4][1]["value"] == int(p["p1"] > p["p0"])


def test_label_predictions_round_trip(setup):
    d, log = setup
    h5 = d / "occ.h5"
    args = ["eval", str(d / "occ"), "--data", str(log), "--out", str(d / "ev_occ2"), "--no-progress", "--no-inputs"]
    assert main([*args, "--save-predictions", str(h5)]) == 0
    assert [p for p in validate(h5) if p.severity == "error"] == []
    assert "camera" not in open_log(h5).episode("ep_000").stream_names
    got = load_predictions(h5)["occ"]["ep_000"]
    model = load_checkpoint(d / "occ")
    rep = replay_episode(model.predictor(), WindowDataset(episode_refs([log]), model.config.window_spec(window=1)), 0)
    np.testing.assert_array_equal(got["mean"], rep.mean)
    np.testing.assert_array_equal(got["probs"], rep.probs.astype(np.float32))
    np.testing.assert_array_equal(got["truth"], rep.y_true)
    assert got["var"] is None


def test_bad_save_paths_exit_2_before_evaluating(setup, capsys):
    d, log = setup
    args = ["eval", str(d / "pos"), "--data", str(log), "--out", str(d / "ev_bad"), "--no-progress"]
    assert main([*args, "--save-predictions", str(d / "missing" / "p.h5")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (d / "ev_bad" / "metrics.csv").exists()
    assert main([*args, "--save-predictions", str(d / "a.mcap"), "--save-mcap", str(d / "b.mcap")]) == 2
    assert main([*args, "--save-mcap", str(d / "b.h5")]) == 2
    assert ".mcap" in capsys.readouterr().err


def test_episodes_of_two_logs_with_the_same_names(tiny_log, tmp_path):
    """Sources sharing episode names get distinct saved episodes; every replay keeps its own numbers."""
    other = tmp_path / "copy.h5"
    other.write_bytes(open(tiny_log, "rb").read())
    st = open_log(tiny_log).episode("ep_000").stream("truth/pos")
    t_s, n = st.t / 1e9, len(st)
    rng = np.random.default_rng(0)

    def rep(f):
        return Replay(str(f), "ep_000", t_s, st.read().astype(np.float32), np.ones(n, bool), rng.random((n, 2)), None, None, np.zeros(n))

    reps = [rep(tiny_log), rep(other)]
    out = save_predictions(tmp_path / "p.h5", {"m": reps}, "truth/pos", ["camera"], include_inputs=False)
    assert [p for p in validate(out) if p.severity == "error"] == []
    got = load_predictions(out)["m"]
    assert set(got) == {"tiny_ep_000", "copy_ep_000"}
    for r in reps:
        g = got[f"{os.path.splitext(os.path.basename(r.file))[0]}_ep_000"]
        assert g["source_file"] == r.file
        np.testing.assert_array_equal(g["mean"], r.mean.astype(np.float32))
        np.testing.assert_array_equal(g["truth"], r.y_true)
