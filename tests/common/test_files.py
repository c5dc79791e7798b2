"""common/files.py: the tolerant JSON read other processes' files go through."""

from common.files import read_json


def test_read_json_is_empty_while_a_file_is_missing_half_written_or_not_an_object(tmp_path):
    path = tmp_path / "state.json"
    assert read_json(path) == {}  # not written yet
    path.write_text('{"attempt": 2, "sta')  # a writer caught mid-way
    assert read_json(path) == {}
    path.write_text("[1, 2]")
    assert read_json(path) == {}
    path.write_text('{"attempt": 2, "start": "fresh"}')
    assert read_json(path) == {"attempt": 2, "start": "fresh"}
