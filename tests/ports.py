"""Free TCP ports on 127.0.0.1 for test servers and process-group rendezvous: test files run in
parallel workers (`pytest -n`), so two launches must not meet at accelerate's default 29500."""

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; it is released before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_args() -> list[str]:
    """`accelerate launch` arguments for a single-machine launch on a port of its own."""
    return ["--main_process_port", str(free_port())]
