import os
import stat
from pathlib import Path

import pytest

from rfnet_tf.staging import (
    DestinationError,
    check_destination,
    staged_directory,
    writable_ancestor,
    write_atomically,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so that 'ordinary' cannot be a constant."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_a_finished_block_replaces_the_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_directory(target) as staging:
        assert staging.parent == tmp_path and not any(staging.iterdir())
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failing_block_leaves_the_directory_and_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_creates_missing_parents_and_removes_them_again_on_failure(tmp_path):
    target = tmp_path / "a" / "b"
    with staged_directory(target) as staging:
        (staging / "x").write_text("x")
    assert (target / "x").read_text() == "x"
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(tmp_path / "c" / "d" / "e"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_an_os_error_while_writing_names_the_destination(tmp_path):
    with pytest.raises(DestinationError, match=r"out: writing failed: .*No space left"):
        with staged_directory(tmp_path / "out"):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_the_directory_and_the_files_get_ordinary_permissions(tmp_path, umask_027):
    with staged_directory(tmp_path / "out") as staging:
        write_atomically(staging / "sub" / "a.bin", b"data")
    assert mode(tmp_path / "out") == 0o750
    assert mode(tmp_path / "out" / "sub" / "a.bin") == 0o640
    assert (tmp_path / "out" / "sub" / "a.bin").read_bytes() == b"data"
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["a.bin"]


def test_a_parent_that_is_a_file_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match=r"file/sub/out: .*/file is a file, not a folder"):
        check_destination(tmp_path / "file" / "sub" / "out")
    with pytest.raises(DestinationError, match="exists and is not a directory"):
        check_destination(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's /sys")
def test_a_place_that_refuses_writes_is_refused_even_to_root():
    """os.access says /sys is writable to root; making a folder there fails."""
    with pytest.raises(DestinationError, match=r"/sys/rfnet_results: cannot write in /sys"):
        check_destination("/sys/rfnet_results")
    with pytest.raises(DestinationError, match="cannot write in /sys"):
        writable_ancestor("/sys/runs/coarse")


def test_the_current_directory_and_its_ancestors_are_refused(tmp_path, monkeypatch):
    inside = tmp_path / "results" / "images"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    for destination in (".", "..", str(tmp_path / "results")):
        with pytest.raises(DestinationError, match="holds the current directory"):
            check_destination(destination)
    assert check_destination("sub") == inside / "sub"
    monkeypatch.chdir(tmp_path)
    with staged_directory("results") as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["new"]
