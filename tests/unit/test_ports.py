"""Free ports for rendezvous, outside the kernel's ephemeral range."""

import socket

import pytest

from pipeline.ports import LOW_PORT, _ephemeral_low, free_port


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    ports = {free_port() for _ in range(20)}
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("", port))  # raises if it was not free
    if _ephemeral_low() > LOW_PORT + 100:
        assert all(LOW_PORT <= port < _ephemeral_low() for port in ports)
    assert len(ports) > 1  # drawn at random, not the same port every time


def test_free_port_skips_a_port_in_use(monkeypatch):
    if _ephemeral_low() <= LOW_PORT + 100:
        pytest.skip("no room below the ephemeral port range on this machine")
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken_port = taken.getsockname()[1]
        # the first candidate drawn is the taken port: free_port must move on to the next
        monkeypatch.setattr(
            "pipeline.ports.random.SystemRandom.sample",
            lambda self, population, k: [taken_port, LOW_PORT + 7],
        )
        assert free_port() == LOW_PORT + 7
