"""`tempflow export RUN [--checkpoint N] --out DIR`: any checkpoint as a shareable LoRA folder."""

from __future__ import annotations


def add_parser(sub) -> None:
    from tempflow.cli import args as A

    p = sub.add_parser("export", help="export a run's checkpoint as a LoRA folder with a model card",
                       description="Write the EMA weights of a run's checkpoint (the newest valid "
                       "one, or --checkpoint N) into a new folder: a diffusers-format LoRA "
                       "(pipe.load_lora_weights(DIR), tempflow sample --lora DIR) with a README.md "
                       "model card in the Hugging Face hub's format, or with --merge the full "
                       "weights of the shapes model (tempflow sample --model DIR).")
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by `tempflow train`")
    p.add_argument("--checkpoint", type=A.int_in(0), default=None, metavar="N",
                   help="the checkpoint after N iterations (default: the newest valid one)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder to write into")
    p.add_argument("--merge", action="store_true",
                   help="merge the LoRA into the base weights (shapes model) instead of a LoRA folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from tempflow.cli.args import writable_folder
    from tempflow.training.export import check_export_folder, export_run

    out = writable_folder(args.out, "--out")
    check_export_folder(out)
    path = export_run(args.run_dir, out, args.checkpoint, args.merge)
    print(f"wrote {path} ({', '.join(sorted(p.name for p in path.iterdir()))})")
    return 0
