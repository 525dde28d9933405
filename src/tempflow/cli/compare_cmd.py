"""`tempflow compare BEFORE AFTER`: paired comparison of two evaluations with 95% intervals."""

from __future__ import annotations

import json
from pathlib import Path

PAIRING_KEYS = ("prompts", "images_per_prompt", "steps", "shift", "guidance_scale", "seed")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired comparison of two evaluations (same prompts, same noise)",
                       description="Reads two folders written by `tempflow eval --out` (or their "
                       "eval.json files) that used the same prompts, images per prompt, sampler and "
                       "seed, so each image of AFTER started from the same noise as the one of "
                       "BEFORE, and prints the change of the pass rate and the dense score per "
                       "category and overall (mean over categories) with paired bootstrap 95% "
                       "intervals (prompts resampled within each category).")
    p.add_argument("before", metavar="BEFORE", help="evaluation folder or eval.json (e.g. the base model)")
    p.add_argument("after", metavar="AFTER", help="evaluation folder or eval.json (e.g. the trained model)")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE",
                   help="also write the comparison as JSON")
    p.set_defaults(run=run)


def read_eval(path: str) -> dict:
    """An eval.json (or a folder holding one) as a dict; UserError naming the file otherwise."""
    from tempflow.errors import UserError

    p = Path(path)
    f = p / "eval.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"{path}: no eval.json there; write one with `tempflow eval ... --out DIR`")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        rows = data["images"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "prompt" in r
                                                 and "category" in r for r in rows):
            raise ValueError("images must be a list of rows with prompt and category")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{f}: not an eval.json written by `tempflow eval` ({e}); re-run the "
                        "evaluation with --out") from None
    return data


def check_pairing(a: dict, b: dict, names: tuple[str, str]) -> None:
    """The two evaluations must share prompts, images per prompt, sampler and seed."""
    from tempflow.errors import UserError

    for key in PAIRING_KEYS:
        if key in a and key in b and a[key] != b[key]:
            raise UserError(f"{names[0]} and {names[1]} differ in {key} ({a[key]!r} against "
                            f"{b[key]!r}): evaluate both with the same settings to pair them")


def run(args) -> int:
    from tempflow.paired import compare, format_comparison

    a, b = read_eval(args.before), read_eval(args.after)
    check_pairing(a, b, (args.before, args.after))
    if a.get("table") is None or b.get("table") is None:
        from tempflow.errors import UserError
        raise UserError("both evaluations need verified images (a pass / fail per image) to compare")
    by_metric = {m: compare(a, b, m) for m in ("pass_rate", "score")}
    o = by_metric["pass_rate"]["overall"]
    print(f"GenEval overall: {o.text()}  ({o.n_prompts} prompts, paired)")
    print(format_comparison(by_metric, "before", "after"))
    if args.json_out:
        out = {m: {c: vars(d) for c, d in rows.items()} for m, rows in by_metric.items()}
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    return 0
