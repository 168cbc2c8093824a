"""write_atomically: the old file or the new one, never half of one, and no leftovers."""

from __future__ import annotations

import os

import pytest

from landscape._io import write_atomically


def test_writes_text_and_bytes_and_creates_the_folder(tmp_path):
    path = tmp_path / "sub" / "a.json"
    assert write_atomically(path, lambda fh: fh.write("{}\n")) == path
    assert path.read_text() == "{}\n"
    write_atomically(path, lambda fh: fh.write(b"\x00\x01"), binary=True)
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failing_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("old\n")

    def half(fh):
        fh.write("new, half written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half, newline="")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


# ------------------------------------------------------------------ check_output


def test_check_output_accepts_new_and_existing_places(tmp_path):
    from landscape._io import check_output

    assert check_output(tmp_path / "a.json", suffixes=(".json",)) == tmp_path / "a.json"
    assert check_output(tmp_path / "new" / "deeper" / "s.h5") == tmp_path / "new/deeper/s.h5"
    assert check_output(tmp_path / "run", folder=True) == tmp_path / "run"
    (tmp_path / "old.JSON").write_text("{}")
    check_output(tmp_path / "old.JSON", suffixes=(".json",))  # case-insensitive suffix
    check_output(tmp_path, folder=True)
    # the probes leave nothing behind and create no folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.JSON"]


@pytest.mark.parametrize(
    "make, kwargs, pattern",
    [
        (lambda t: t / "f" / "x.h5", {}, r"lies below .*f, which is a file"),
        (lambda t: t / "f" / "a" / "b" / "x.h5", {}, r"lies below"),
        (lambda t: t / "f", {"folder": True}, r"exists and is not a folder"),
        (lambda t: t, {}, r"is a folder"),
        (lambda t: t / "x.txt", {"suffixes": (".json", ".csv")}, r"expected a \.json or \.csv"),
        (
            lambda t: t / "x.json",
            {"what": "--save-eigenvectors", "suffixes": (".pt",)},
            r"Invalid --save-eigenvectors",
        ),
    ],
)
def test_check_output_refuses(tmp_path, make, kwargs, pattern):
    from landscape._io import check_output

    (tmp_path / "f").write_text("a file")
    with pytest.raises(ValueError, match=pattern):
        check_output(make(tmp_path), **kwargs)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc and /sys")
@pytest.mark.parametrize("path", ["/proc/x.json", "/proc/a/b/x.json", "/sys/x.json", "/sys/run"])
def test_check_output_tries_the_folder_rather_than_trusting_permissions(path):
    # As root, os.access says yes everywhere; /proc and /sys still refuse new files.
    from landscape._io import check_output

    with pytest.raises(ValueError, match="cannot write there"):
        check_output(path, folder=path.endswith("run"))
