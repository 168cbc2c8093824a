"""write_atomically: the old file or the new one, never half of one, and no leftovers."""

from __future__ import annotations

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
