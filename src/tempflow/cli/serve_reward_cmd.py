"""`tempflow serve-reward`: serve a registered reward over HTTP (docs/rewards.md)."""

from __future__ import annotations

import argparse
import os

TOKEN_ENV = "TEMPFLOW_REWARD_TOKEN"
# the defaults of tempflow.rewards.server.Limits, spelled out so that parsing imports no torch
DEFAULTS = {"max_pixels": 2 ** 21, "max_images": 64, "max_mb": 256.0, "max_concurrent": 2,
            "read_timeout": 30.0}
READY_PROMPT = "a red circle"


def add_parser(sub) -> None:
    d = argparse.Namespace(**DEFAULTS)
    p = sub.add_parser("serve-reward", help="serve a reward over HTTP for `reward: remote`",
                       description="Serve any registered reward (or module.path:factory) over HTTP: "
                       "POST /score with base64 PNG images and prompts, get one float (or null) per "
                       "image; GET /health. Training points reward.kwargs.url at it.")
    p.add_argument("--reward", required=True, help="reward name (e.g. shapes, pickscore) or module.path:factory")
    p.add_argument("--port", type=int, required=True, help="TCP port (0: any free port, printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                   "only; any other address needs a token)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the reward's factory, value read as YAML (repeatable)")
    p.add_argument("--token-file", metavar="FILE", help=f"require 'Authorization: Bearer <token>' on "
                   f"/score, the token read from FILE (default: ${TOKEN_ENV} when set)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest image, width x height (default {d.max_pixels})")
    p.add_argument("--max-images", type=int, default=d.max_images,
                   help=f"most images per request (default {d.max_images})")
    p.add_argument("--max-mb", type=float, default=d.max_mb,
                   help=f"largest request body in MB (default {d.max_mb:g})")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent,
                   help=f"requests read, decoded or scored at once; more get 503 (default {d.max_concurrent})")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help=f"seconds a client has to send one request (default {d.read_timeout:g})")
    p.add_argument("--ready-prompt", default=READY_PROMPT,
                   help=f"prompt of the test batch scored before /health answers ok (default {READY_PROMPT!r})")
    p.add_argument("--ready-metadata", metavar="JSON", help="metadata object of the test batch, for "
                   "rewards that need it (default: none)")
    p.set_defaults(run=run)


def parse_kwargs(items: list[str]) -> dict:
    """['dense=false', 'model=openai/clip'] -> {'dense': False, 'model': 'openai/clip'}."""
    from tempflow.config.loading import parse_override

    out = {}
    for item in items:
        parts, value = parse_override(item)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (127.x, ::1)."""
    import ipaddress
    import socket

    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def read_token(path: str | None) -> str | None:
    """The token from ``path`` (stripped), else from $TEMPFLOW_REWARD_TOKEN, else None."""
    from tempflow.errors import UserError

    if path is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --token-file {path} ({getattr(e, 'strerror', None) or e})") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--token-file {path} must hold one token (no spaces), e.g. from "
                        f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


def run(args) -> int:
    import json
    import threading

    from tempflow.errors import UserError
    from tempflow.rewards import build_reward
    from tempflow.rewards.server import Limits, make_server

    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    limits = Limits(max_pixels=args.max_pixels, max_images=args.max_images, max_mb=args.max_mb,
                    max_concurrent=args.max_concurrent, read_timeout=args.read_timeout)
    limits.check()
    token = read_token(args.token_file)
    if token is None and not is_loopback(args.host):
        raise UserError(f"--host {args.host} is reachable from other machines: give a shared token "
                        f"with --token-file FILE (or ${TOKEN_ENV}), or bind 127.0.0.1")
    metadata = None
    if args.ready_metadata is not None:
        try:
            metadata = json.loads(args.ready_metadata)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise UserError(f"--ready-metadata must be a JSON object, e.g. '{{\"tag\": \"counting\"}}' "
                            f"(got {args.ready_metadata!r})")
    reward = build_reward(args.reward, **parse_kwargs(args.overrides))
    try:
        server = make_server(reward, args.reward, args.host, args.port, limits, token,
                             args.ready_prompt, metadata)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}): pick a free --port") from None
    host, port = server.server_address[:2]
    print(f"serving reward {args.reward!r} on http://{host}:{port} (POST /score, GET /health"
          f"{', token required' if token else ''}); Ctrl-C stops", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        if server.wait_ready() != "ok":
            raise UserError(f"{server.error}; fix the reward, or give a prompt (--ready-prompt) and "
                            f"metadata (--ready-metadata) it accepts")
        print(f"reward {args.reward!r} ready: it scored its test batch", flush=True)
        while thread.is_alive():
            thread.join(1.0)
    finally:
        server.shutdown()
        server.server_close()
    return 0
