"""`tempflow serve-reward`: serve a registered reward over HTTP (docs/rewards.md)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("serve-reward", help="serve a reward over HTTP for `reward: remote`",
                       description="Serve any registered reward (or module.path:factory) over HTTP: "
                       "POST /score with base64 PNG images and prompts, get one float (or null) per "
                       "image; GET /health. Training points reward.kwargs.url at it.")
    p.add_argument("--reward", required=True, help="reward name (e.g. shapes, pickscore) or module.path:factory")
    p.add_argument("--port", type=int, required=True, help="TCP port (0: any free port, printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the reward's factory, value read as YAML (repeatable)")
    p.add_argument("--max-mb", type=float, default=512, help="largest request body in MB (default 512)")
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


def run(args) -> int:
    from tempflow.errors import UserError
    from tempflow.rewards import build_reward
    from tempflow.rewards.server import make_server

    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    reward = build_reward(args.reward, **parse_kwargs(args.overrides))
    try:
        server = make_server(reward, args.reward, args.host, args.port, args.max_mb)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}): pick a free --port") from None
    host, port = server.server_address[:2]
    print(f"serving reward {args.reward!r} on http://{host}:{port} (POST /score, GET /health); "
          f"Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
