"""The recordings kept in tests/fixtures/ are the team's shared ones, where those are at hand."""

import pytest

from tests.contract import FIXTURES, SHARED_FIXTURES


@pytest.mark.skipif(not SHARED_FIXTURES.is_dir(), reason="no shared fixtures beside the project")
def test_the_kept_recordings_are_the_shared_ones() -> None:
    """New or changed shared recordings must be copied in (and the contract tests extended)."""
    shared = {path.name: path.read_bytes() for path in SHARED_FIXTURES.iterdir()}
    kept = {path.name: path.read_bytes() for path in FIXTURES.iterdir()}
    assert sorted(kept) == sorted(shared)
    assert [name for name in sorted(shared) if kept[name] != shared[name]] == []
