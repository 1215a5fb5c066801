"""Atomic result files (moejax/files.py)."""

import os
import stat
import threading
from unittest import mock

import pytest

from moejax import files


def test_write_replaces_whole_files_with_normal_permissions(tmp_path):
    path = tmp_path / "a.json"
    files.write_atomic(path, "first")
    files.write_atomic(str(path), b"second \xff")
    assert path.read_bytes() == b"second \xff"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text("old\n")
    with mock.patch.object(os, "replace", side_effect=KeyboardInterrupt), \
            pytest.raises(KeyboardInterrupt):
        files.write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["points.jsonl"]
    with pytest.raises(FileNotFoundError):
        files.write_atomic(tmp_path / "missing_dir" / "x", "data")


def test_locked_excludes_a_second_writer(tmp_path):
    path = str(tmp_path / "table.json")
    events = []
    inside = threading.Event()

    def second():
        inside.wait()
        with files.locked(path):
            events.append("second")

    thread = threading.Thread(target=second)
    with files.locked(path):
        thread.start()
        inside.set()
        thread.join(timeout=0.5)  # must still be waiting for the lock
        events.append("first done")
    thread.join(timeout=10)
    assert events == ["first done", "second"]


def test_write_figure_writes_a_png_or_nothing(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    path = tmp_path / "curve.png"
    files.write_figure(path, figure, dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    before = path.read_bytes()
    # a figure that fails to render (here: an unknown savefig argument) leaves the old PNG and no
    # temporary file behind
    with pytest.raises(TypeError):
        files.write_figure(path, figure, not_an_argument=1)
    plt.close(figure)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["curve.png"]


def test_directory_problem_names_a_file_in_the_way_and_creates_nothing(tmp_path):
    assert files.directory_problem(tmp_path) is None
    assert files.directory_problem(tmp_path / "new" / "deeper") is None
    blocker = tmp_path / "config.json"
    blocker.write_text("{}")
    assert files.directory_problem(blocker) == f"{blocker} is a file, not a directory"
    assert files.directory_problem(blocker / "points") == f"{blocker} is a file, not a directory"
    assert sorted(os.listdir(tmp_path)) == ["config.json"]



def test_made_directories_are_taken_back_innermost_first_and_only_when_empty(tmp_path):
    created = files.make_directories(tmp_path / "a" / "b" / "c")
    assert created == [str(tmp_path / "a"), str(tmp_path / "a" / "b"),
                       str(tmp_path / "a" / "b" / "c")]
    assert files.make_directories(tmp_path / "a" / "b") == []  # all there already
    (tmp_path / "a" / "kept.txt").write_text("another writer's file")
    files.remove_empty(created)
    assert sorted(os.listdir(tmp_path / "a")) == ["kept.txt"]  # c and b gone, a kept
