"""TCP ports of a server: free ones to start on, busy ones to refuse, listening ones to wait for."""

from __future__ import annotations

import socket
from collections.abc import Iterable


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nobody listens on now (bound and released at once), for servers started by tests and tools."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def busy_ports(address: str, ports: Iterable[int]) -> list[int]:
    """The ports something already listens on at ``address`` (Triton would fail to bind them, or, with
    gRPC's SO_REUSEPORT, share them with another server)."""
    busy = []
    for port in ports:
        with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
            try:
                sock.bind((address, port))
            except OSError:
                busy.append(port)
    return busy


def listening(host: str, ports: Iterable[int]) -> bool:
    """Whether every one of ``ports`` at ``host`` accepts a connection now."""
    for port in ports:
        with socket.socket(_family(host)) as sock:
            if sock.connect_ex((host, port)) != 0:
                return False
    return True


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
