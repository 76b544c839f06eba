"""The ``lsgq`` command line: ``recipes``, ``demo``, ``eval``, ``compare``, ``export-onnx``."""
from __future__ import annotations

import argparse
import sys
import warnings


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import RECIPES

    w = max(len(n) for n in RECIPES)
    for name, r in sorted(RECIPES.items()):
        print(f"{name:<{w}}  {r.summary}  [{r.paper}]")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .vsr.demo import run_demo

    run_demo(args.out, frames=args.frames, quick=args.quick)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .vsr.evaluate import run_eval_cli

    return run_eval_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsgq", description="Quantize one-step diffusion VSR transformers.",
                                epilog="--verbose (anywhere on the line) or LSGQ_VERBOSE=1: also show third-party "
                                       "warnings and logs (quiet by default).")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recipes", help="list the quantization recipes")
    r.set_defaults(fn=_cmd_recipes)
    d = sub.add_parser("demo", help="quantize the shipped model, evaluate, write a report folder")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--frames", type=int, default=8)
    d.add_argument("--quick", action="store_true", help="fewer clips and training steps")
    d.set_defaults(fn=_cmd_demo)
    e = sub.add_parser("eval", help="evaluate recipes on a folder of clips (taken as ground truth)")
    from .vsr.evaluate import add_eval_arguments

    add_eval_arguments(e)
    e.set_defaults(fn=_cmd_eval)
    c = sub.add_parser("compare", help="several recipes x bit-widths in one table (Markdown, JSON, PNG)")
    add_eval_arguments(c, compare=True)
    c.set_defaults(fn=_cmd_eval)
    __import__("lsgq_compiler.quantize", fromlist=["x"]).add_quantize_parser(sub)  # lsgq quantize (#18)
    try:
        from .backends.onnx import add_export_onnx_parser
    except ImportError:
        pass
    else:
        add_export_onnx_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .quiet import quiet

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv  # before any heavy import: lsgq --verbose shows third-party output
    if verbose:
        argv.remove("--verbose")
    quiet(verbose)  # also LSGQ_VERBOSE=1
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"lsgq {args.cmd}: interrupted; what finished was written (compare: --resume continues)",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:  # every project error is one of these
        print(f"lsgq {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
