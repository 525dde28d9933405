"""`tempflow verify`: score shapes-world images or grids against their prompts."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="check shapes-world images against prompts",
                       description="Run the shapes verifier on images or on grids written by "
                       "`tempflow sample` (their .json sidecar gives the layout and prompts). "
                       "Prints pass/fail (GenEval-style) and the dense score per image.")
    p.add_argument("images", nargs="+", help="PNG images or grids")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="prompt for every image (overrides the sidecar)")
    g.add_argument("--prompts", metavar="FILE", help="one prompt per image, in order")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from tempflow.errors import UserError
    from tempflow.shapes import parse, verify_batch
    from tempflow.utils.images import load_images
    from tempflow.utils.prompts import read_prompt_file

    images, prompts = [], []
    for path in args.images:
        imgs, side = load_images(path)
        images.append(imgs)
        if args.prompt is not None:
            prompts += [args.prompt] * len(imgs)
        elif side is not None and args.prompts is None:
            prompts += side
        elif args.prompts is None:
            raise UserError(f"{path}: no prompt known for this image (pass --prompt or --prompts)")
        names = [path] if len(imgs) == 1 else [f"{path}[{i}]" for i in range(len(imgs))]
        images[-1] = (names, imgs)
    names = [n for ns, _ in images for n in ns]
    batch = torch.cat([b for _, b in images])
    if args.prompts is not None:
        prompts = read_prompt_file(args.prompts)
        if len(prompts) != len(batch):
            raise UserError(f"{args.prompts} has {len(prompts)} prompts for {len(batch)} images "
                            f"(give one prompt per image)")
    for p in set(prompts):
        parse(p)  # unknown words: a clear error before scoring
    passed, score = verify_batch(batch, prompts)
    for name, prompt, ok, s in zip(names, prompts, passed.tolist(), score.tolist()):
        if args.json:
            print(json.dumps({"image": name, "prompt": prompt, "passed": ok, "score": round(s, 4)}))
        else:
            print(f"{'PASS' if ok else 'FAIL'}  score {s:.3f}  {name}  {prompt!r}")
    n = len(batch)
    summary = f"{int(passed.sum())}/{n} passed ({passed.float().mean():.1%}), mean score {score.mean():.3f}"
    print(json.dumps({"summary": summary}) if args.json else summary)
    return 0
