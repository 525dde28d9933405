"""`tempflow pretrain`: train the shapes model by flow matching on rendered scenes."""

from __future__ import annotations


def add_parser(sub) -> None:
    from tempflow.pretrain.shapes import PretrainConfig
    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="pretrain the shapes demo model",
                       description="Flow-matching pretraining of the built-in shapes model on "
                       "freshly rendered scenes of the training prompts. Resumable.")
    p.add_argument("--out", default=d.out, help=f"output checkpoint folder (default {d.out})")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--sigma-sampling", choices=("uniform", "logit_normal"), default=d.sigma_sampling)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--layers", type=int, default=None, help="transformer layers (architecture)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tempflow.cli.main import set_threads
    from tempflow.pretrain.shapes import PretrainConfig, pretrain

    set_threads()
    model = None
    if args.layers is not None:
        from tempflow.models.shapes_model import ShapesModelConfig
        from tempflow.shapes import vocabulary
        model = ShapesModelConfig(vocab=vocabulary(), num_layers=args.layers)
    cfg = PretrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, save_every=args.save_every,
                         sigma_sampling=args.sigma_sampling, model=model)
    out = pretrain(cfg, resume=args.resume)
    print(f"wrote {out}")
    return 0
