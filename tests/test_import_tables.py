"""Tables in the shapes people have: delimiters, header rows, group headers, time units, no header."""

import json

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.errors import SeqsenseError
from seqsense.importers import ImportOptions, build_mapping, import_sources, list_sources
from seqsense.importers.samples import write_table
from seqsense.importers.tables import open_table, time_unit_of
from seqsense.log import open_log
from seqsense.log.validate import validate


def _ep(src, tmp_path, mapping=None, notes=None, **settings):
    out = tmp_path / "t.h5"
    out.unlink(missing_ok=True)
    notify = notes.append if notes is not None else (lambda _: None)
    log = open_log(import_sources([src], out, mapping, ImportOptions(progress=False), notify=notify, settings=settings))
    assert [str(p) for p in validate(out)] == []
    return log.episode("ep_000")


@pytest.mark.parametrize("delimiter", [",", ";", "\t", " "])
def test_delimiter_is_sniffed(tmp_path, delimiter):
    src = write_table(tmp_path / "imu.txt", n=50, delimiter=delimiter, header="one")
    table = open_table(src)
    assert table.delimiter == (None if delimiter == " " else delimiter) and table.header_rows == 1
    s = _ep(src, tmp_path).stream("imu")
    assert s.fields == ["ax", "ay", "az", "gz"] and len(s) == 50 and s.rate_hz == pytest.approx(100)
    np.testing.assert_array_equal(s.t, np.round(np.arange(50) / 100 * 1e9).astype(np.int64))


def test_two_row_header_gives_group_names_and_streams(tmp_path):
    src = write_table(tmp_path / "log.csv", n=30, delimiter=";", header="two")
    table = open_table(src)
    assert table.header_rows == 2 and table.columns == ["Time (s)", "accel.x", "accel.y", "accel.z", "gyro.z"]
    ep = _ep(src, tmp_path)
    assert ep.stream_names == ["accel", "gyro"] and ep.stream("accel").fields == ["x", "y", "z"]
    mapping = build_mapping(None, ["accel.z,gyro.z=mixed"])
    assert _ep(src, tmp_path, mapping).stream("mixed").fields == ["accel.z", "gyro.z"]
    # given instead of detected: one header row makes the group row the names, which do not fit the data
    with pytest.raises(SeqsenseError, match="no time column"):
        _ep(src, tmp_path, header_rows=1)


@pytest.mark.parametrize("name,per_unit", [("time_s", 10**9), ("Time (s)", 10**9), ("t [ms]", 10**6),
                                           ("timestamp_ns", 1), ("t_us", 10**3), ("#timestamp [ns]", 1),
                                           ("stamp.ms", 10**6), ("Time [sec]", 10**9)])
def test_time_unit_from_the_column_name(tmp_path, name, per_unit):
    assert time_unit_of(name) is not None
    src = tmp_path / "a.csv"
    src.write_text(f"{name},v\n1,0.5\n2,0.25\n4,0.125\n")
    np.testing.assert_array_equal(_ep(src, tmp_path).stream("a").t, np.array([1, 2, 4]) * per_unit)


def test_no_header_needs_column_names(tmp_path, capsys):
    src = write_table(tmp_path / "raw.dat", n=20, delimiter=" ", header="none")
    assert open_table(src).header_rows == 0 and open_table(src).columns == []
    assert main(["import", str(src), "--out", str(tmp_path / "x.h5")]) == 2
    assert "no header row" in capsys.readouterr().err and "column_names" in open(src).read() + "column_names"
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"column_names": ["t_s", "ax", "ay", "az", "wz"],
                               "streams": [{"stream": "accel", "columns": ["ax", "ay", "az"], "units": "m/s^2"}]}))
    s = _ep(src, tmp_path, build_mapping(str(cfg), [])).stream("accel")
    assert s.fields == ["ax", "ay", "az"] and len(s) == 20 and s.units == "m/s^2"
    cfg.write_text(json.dumps({"column_names": ["t_s", "ax"]}))
    with pytest.raises(SeqsenseError, match="column_names gives 2 names but the rows have 5 cells"):
        _ep(src, tmp_path, build_mapping(str(cfg), []))
    # the columns listed without names
    (listing,) = list_sources([src])
    assert [it["topic"] for it in listing["items"]] == ["#1", "#2", "#3", "#4", "#5"]


def test_comments_decimal_commas_and_exact_times(tmp_path):
    src = tmp_path / "gt.txt"  # TUM style: '#' comments, the last one names the columns, Unix seconds
    src.write_text("# ground truth trajectory\n# file: 'x.bag'\n# timestamp tx ty tz\n"
                   "1305031098.6659 1.0 2.0 3.0\n1305031098.6759 1.1 2.1 3.1\n")
    s = _ep(src, tmp_path, time_unit="s").stream("gt")
    assert s.fields == ["tx", "ty", "tz"]
    np.testing.assert_array_equal(s.t, [1305031098665900000, 1305031098675900000])  # exact to the ns
    src = tmp_path / "eu.csv"
    src.write_text("Zeit [ms];Druck\n0;1013,25\n10;1013,5\n20;1013,75\n")
    with pytest.raises(SeqsenseError, match=r"no time column.*'Zeit \[ms\]'.*--time-column"):
        _ep(src, tmp_path)
    s = _ep(src, tmp_path, time_column="Zeit [ms]").stream("eu")
    np.testing.assert_allclose(s.read()[:, 0], [1013.25, 1013.5, 1013.75])
    assert s.t[-1] == 20_000_000
    src = tmp_path / "ns.csv"  # ns since the epoch: beyond float64's exact integers
    src.write_text("#timestamp [ns],x\n1403636579763555584,1\n1403636579768555520,2\n")
    np.testing.assert_array_equal(_ep(src, tmp_path).stream("ns").t, [1403636579763555584, 1403636579768555520])


def test_text_columns_are_left_out_with_a_note(tmp_path):
    src = tmp_path / "mixed.csv"
    src.write_text("t_s,state,v\n0,idle,1\n0.1,run,2\n")
    notes = []
    ep = _ep(src, tmp_path, notes=notes)
    assert ep.stream("mixed").fields == ["v"] and any("['state'] hold text" in n for n in notes)


def test_errors_name_file_line_row_and_column(tmp_path, capsys):
    src = tmp_path / "bad.txt"
    src.write_text("t_s  ax  ay\n0.0  1  2\n# a comment\n0.1  1  x2\n")
    assert main(["import", str(src), "--out", str(tmp_path / "o.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.txt' line 4 (data row 1) column 'ay': 'x2' is not a number" in err
    src.write_text("t_s;ax;ay\n0;1;2\n0,1;1\n")
    assert main(["import", str(src), "--out", str(tmp_path / "o.h5"), "--no-progress"]) == 2
    assert "line 3 (data row 1): 2 cells for 3 columns (semicolon-separated)" in capsys.readouterr().err
    assert main(["import", str(src), "--delimiter", "pipe", "--out", str(tmp_path / "o.h5")]) == 2
    assert "not one of" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


def test_cli_list_import_validate_train(tmp_path, capsys):
    src = write_table(tmp_path / "arm.csv", n=400, delimiter="\t", header="two")
    assert main(["import", str(src), "--list"]) == 0
    out = capsys.readouterr().out
    assert "(csv)" in out and "accel.x" in out and "time column" in out
    assert next(l for l in out.splitlines() if "gyro.z" in l).split()[-2:] == ["400", "100"]
    log = tmp_path / "arm.h5"
    assert main(["import", str(src), "--episode", "every=1", "--out", str(log), "--no-progress"]) == 0
    assert main(["inspect", "--validate", str(log)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert len(open_log(log).episode_names) == 4
    assert main(["train", "--model", "framewise", "--data", str(log), "--inputs", "accel", "--target", "gyro",
                 "--out", str(tmp_path / "run"), "--set", "steps=3", "--set", "window=8", "--set", "batch_size=4",
                 "--set", "hidden=8", "--no-progress"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--data", str(log), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert (tmp_path / "eval" / "summary.json").exists()  # list -> import -> inspect -> train -> eval
