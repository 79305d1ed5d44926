import pytest

from shared.launch import check_joined


def test_check_joined_refuses_unjoined_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_joined(2)
    with pytest.raises(RuntimeError, match="2 processes were launched but accelerate joined 1"):
        check_joined(1)
    monkeypatch.delenv("WORLD_SIZE")
    check_joined(1)  # run directly, no launcher
