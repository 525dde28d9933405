"""`tempflow eval`: GenEval-style table of a shapes model on a prompt list."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="GenEval-style evaluation on the shapes world",
                       description="Deterministic ODE sampling on the held-out (or train) prompt "
                       "list, scored by the shapes verifier: pass rate per category and overall.")
    p.add_argument("--model", default=None, help="'shapes' (default: the shipped base) or a checkpoint folder")
    p.add_argument("--lora", metavar="DIR", default=None, help="load a LoRA written by `tempflow train`")
    p.add_argument("--split", default="heldout", help="prompt list: heldout (default) or train")
    p.add_argument("--num", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for eval.json and grids per category")
    p.set_defaults(run=run)


def run(args) -> int:
    import time

    from tempflow.cli.main import set_threads
    from tempflow.errors import UserError
    from tempflow.evaluation import evaluate_shapes
    from tempflow.models import SAMPLING_DEFAULTS, load_model, model_family
    from tempflow.shapes import load_prompts
    from tempflow.utils.images import save_grid

    if model_family(args.model) != "shapes":
        raise UserError("eval scores shapes-world prompts; give a shapes model (--model shapes or a checkpoint folder)")
    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    set_threads()
    d = SAMPLING_DEFAULTS["shapes"]
    steps = args.steps or d["steps"]
    shift = args.shift if args.shift is not None else d["shift"]
    cfg = args.cfg if args.cfg is not None else d["guidance_scale"]
    prompts = load_prompts(args.split)
    t0 = time.time()
    model = load_model(args.model)
    if args.lora:
        model.load_lora(args.lora)
    res = evaluate_shapes(model, prompts, args.num, steps, shift, cfg, args.seed)
    print(res.format_table())
    print(f"({len(res.prompts)} images, {steps} steps, shift {shift}, cfg {cfg}, seed {args.seed}, "
          f"{time.time() - t0:.1f}s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps({
            "model": args.model or "shapes", "lora": args.lora, "split": args.split, "images_per_prompt": args.num,
            "steps": steps, "shift": shift, "guidance_scale": cfg, "seed": args.seed,
            "table": res.table(),
            "images": [{"prompt": p, "category": c, "passed": bool(ok), "score": round(float(s), 4)}
                       for p, c, ok, s in zip(res.prompts, res.categories, res.passed, res.score)],
        }, indent=1) + "\n")
        for cat in sorted(set(res.categories)):
            idx = [i for i, c in enumerate(res.categories) if c == cat]
            save_grid(res.images[idx], out / f"{cat}.png", nrow=args.num,
                      prompts=[res.prompts[i] for i in idx])
        print(f"wrote {out}/eval.json and one grid per category")
    return 0
