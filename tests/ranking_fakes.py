"""Fake ranking runs for the ranking tests: metrics.jsonl and eval.json files."""

import json


def write_metrics(path, secs, nfe=100, evals=()):
    """metrics.jsonl: one training record per entry of ``secs``, eval records (iteration, score)."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [{"iteration": i, "reward/mean": 0.5, "time/iteration": s, "count/nfe": nfe} for i, s in enumerate(secs)]
    lines += [{"iteration": i, "eval/pass_rate": sc / 2, "eval/score": sc} for i, sc in evals]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


PROMPTS = [("colors", "a red circle"), ("colors", "a blue square"), ("counting", "two circles")]


def fake_eval(values, n=2):
    """eval.json with ``n`` images per prompt of PROMPTS; values: one (passed, score) per image,
    or a single pair for every image."""
    if isinstance(values, tuple):
        values = [values] * (len(PROMPTS) * n)
    rows = [{"prompt": p, "category": c, "passed": v[0], "score": v[1]}
            for (c, p), v in zip([cp for cp in PROMPTS for _ in range(n)], values)]
    cats = {}
    for r in rows:
        if r["passed"] is not None:
            cats.setdefault(r["category"], []).append(r)
    summary = {f"eval/{m}": sum(sum(float(r[k]) for r in rs) / len(rs) for rs in cats.values()) / len(cats)
               for m, k in (("pass_rate", "passed"), ("score", "score"))}
    return {"images_per_prompt": n, "steps": 10, "summary": summary, "images": rows}
