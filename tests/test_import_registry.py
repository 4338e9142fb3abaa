"""The importer registry: every registered format detects, lists and imports its sample into a valid log."""

import h5py
import pytest

from seqsense.cli import main
from seqsense.errors import SeqsenseError
from seqsense.importers import IMPORTERS, ImportOptions, detect_format, get_importer, import_sources, list_sources
from seqsense.importers.samples import sample_source
from seqsense.log import open_log
from seqsense.log.validate import validate


@pytest.mark.parametrize("name", sorted(IMPORTERS))
def test_every_importer_detects_lists_and_writes_a_valid_log(name, tmp_path, capsys):
    src, settings = sample_source(name, tmp_path / "src")
    assert detect_format(src) == name
    imp = get_importer(name)
    assert imp.summary and imp.family
    (listing,) = list_sources([src], settings=settings)
    assert listing["format"] == name and listing["items"]
    for row in listing["items"]:
        assert set(row) >= {"topic", "msgtype", "count", "rate_hz", "supported"}
    out = import_sources([src], tmp_path / "log.h5", options=ImportOptions(progress=False), notify=lambda _: None,
                         settings=settings)
    assert [str(p) for p in validate(out) if p.severity == "error"] == []
    assert main(["inspect", "--validate", str(out)]) == 0
    log = open_log(out)
    assert log.episode_names and all(log.episode(e).stream_names for e in log.episode_names)
    assert log.provenance["importer"] == f"seqsense.importers.{imp.family}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.h5", "src"]  # no scratch or partial files


def test_unknown_format_lists_the_valid_ones(tmp_path, capsys):
    blob = tmp_path / "data.xyz"
    blob.write_bytes(b"\x00\x01binary")
    with pytest.raises(SeqsenseError, match="ulog .*euroc|euroc .*ulog"):
        detect_format(blob)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert main(["import", str(empty), "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "folder" in err and all(n in err for n in IMPORTERS) and "--format" in err
    assert main(["import", str(blob), "--format", "nope", "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and ", ".join(sorted(IMPORTERS)) in err
    assert not (tmp_path / "o.h5").exists()


def test_format_flag_skips_detection(tmp_path):
    src = tmp_path / "samples.log"  # a table under a name no detector reads as one by suffix
    src.write_text("t_ms\tv\n0\t1\n10\t2\n20\t3\n")
    out = import_sources([src], tmp_path / "l.h5", options=ImportOptions(progress=False), format="csv")
    assert open_log(out).episode("ep_000").stream("samples").fields == ["v"]


def test_mixed_families_are_refused(tmp_path):
    table = tmp_path / "a.csv"
    table.write_text("t_s,x\n0,1\n")
    ulog, _ = sample_source("ulog", tmp_path)
    with pytest.raises(SeqsenseError, match="mix formats.*a.csv: csv.*flight.ulg: ulog"):
        import_sources([table, ulog], tmp_path / "x.h5", options=ImportOptions(progress=False))


def test_sample_sources_are_what_they_claim(tmp_path):
    ulog, _ = sample_source("ulog", tmp_path / "u")
    assert ulog.read_bytes()[:7] == b"ULog\x01\x12\x35"
    h5, _ = sample_source("hdf5", tmp_path / "h")
    with h5py.File(h5) as f:
        assert f.attrs["sampling_rate"] == 100.0
