"""Free TCP ports for the rendezvous of torch.distributed (torch-free: the launcher uses it)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOW_PORT = 20000  # where submitit's own MASTER_PORT range starts; well above system services


def free_port() -> int:
    """A TCP port that nothing uses right now, below the kernel's range of ephemeral ports where
    there is room: the kernel may hand a port from that range to any outgoing connection between
    this check and the moment the caller binds it. Drawn from the system's entropy, not the
    seeded `random` module, so that two trainings started at once do not draw the same ports."""
    ephemeral_low = _ephemeral_low()
    if ephemeral_low > LOW_PORT + 100:
        for port in random.SystemRandom().sample(range(LOW_PORT, ephemeral_low), 50):
            with socket.socket() as sock:
                try:
                    sock.bind(("", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:  # no room below the range, or all 50 taken: the kernel picks
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux
        return 0
