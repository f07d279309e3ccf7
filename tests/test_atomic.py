"""Files and folders written whole or not at all (checkpoints, reports, converted demos rely on it)."""
import pytest

from par_agent.atomic import atomic_file, atomic_folder, replace_text


def test_atomic_file_replaces_only_when_the_writing_ends_without_error(tmp_path):
    path = tmp_path / "report.json"
    replace_text(path, "old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]  # the partial file is gone
    replace_text(path, "new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_atomic_folder_replaces_the_old_folder_and_clears_a_partial_one(tmp_path):
    folder = tmp_path / "final"
    (tmp_path / "final.tmp").mkdir()
    (tmp_path / "final.tmp" / "stale.bin").write_text("left by an interrupted run")
    with atomic_folder(folder) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]  # the first write, whole
    with atomic_folder(folder) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"] and not (tmp_path / "final.tmp").exists()
