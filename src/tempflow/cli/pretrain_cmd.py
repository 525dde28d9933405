"""`tempflow pretrain`: train the shapes model by flow matching on rendered scenes."""

from __future__ import annotations


def add_parser(sub) -> None:
    from tempflow.cli import args as A
    from tempflow.pretrain.config import PretrainConfig
    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="pretrain the shapes demo model",
                       description="Flow-matching pretraining of the built-in shapes model on "
                       "freshly rendered scenes of the training prompts. Resumable.")
    p.add_argument("--out", default=d.out, help=f"output checkpoint folder (default {d.out})")
    p.add_argument("--steps", type=A.positive, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=A.int_in(1, 4096), default=d.batch_size,
                   help=f"rendered scenes per step (default {d.batch_size})")
    p.add_argument("--lr", type=A.number(0, strict=True, hi=1.0), default=d.lr,
                   help=f"AdamW learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=A.seed, default=d.seed, help=f"seed of weights, scenes and noise (default {d.seed})")
    p.add_argument("--save-every", type=A.positive, default=d.save_every,
                   help=f"write the model and a resumable state every this many steps (default {d.save_every})")
    p.add_argument("--sigma-sampling", choices=("uniform", "logit_normal"), default=d.sigma_sampling,
                   help=f"how training noise levels are drawn (default {d.sigma_sampling})")
    p.add_argument("--sigma-mean", type=A.number(-10.0, hi=10.0), default=d.sigma_mean,
                   help=f"logit_normal: mean of the normal before the sigmoid (default {d.sigma_mean:g})")
    p.add_argument("--sigma-std", type=A.number(0, strict=True, hi=10.0), default=d.sigma_std,
                   help=f"logit_normal: its standard deviation (default {d.sigma_std:g})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--layers", type=A.int_in(1, 64), default=None,
                   help="transformer layers (architecture; default the shipped model's)")
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
                         sigma_sampling=args.sigma_sampling, sigma_mean=args.sigma_mean,
                         sigma_std=args.sigma_std, model=model)
    out = pretrain(cfg, resume=args.resume)
    print(f"wrote {out}")
    return 0
