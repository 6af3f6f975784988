"""The ``jaxprune`` command line (``jaxprune demo ...`` or ``python -m jaxprune demo ...``).

Only the standard library is imported at module level: the demo's optional
dependencies (the ``examples`` extra) are checked when the demo runs, with a
message that says how to install them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Sequence

#: The demo's optional dependencies: (import name, distribution name).
EXAMPLES_EXTRA = (
    ("flax.nnx", "flax"),
    ("matplotlib", "matplotlib"),
    ("sklearn", "scikit-learn"),
    ("tqdm", "tqdm"),
)

DEMO_DESCRIPTION = """\
Train a small Flax CNN (3x3 conv, BatchNorm, max-pool, 3x3 conv, 2 dense) on
scikit-learn's bundled 8x8 digits twice, with the same seed, batches and
steps: a dense baseline (plain optax Adam) and a pruned run with
optax.chain(adam, jaxprune.magnitude_pruning(hparams)), which prunes every
kernel (not the biases or BatchNorm) along TF's gradual cubic schedule.

Schedule defaults, for N = --steps: a dense warm-up of 0.1*N steps
(begin_pruning_step = sparsity_function_begin_step = 0.1*N), the cubic ramp
to --target-sparsity ending at sparsity_function_end_step = 2/3*N, then
fine-tuning at the target (masks keep updating, end_pruning_step=-1);
pruning_frequency=10 (fewer for short runs, so that the ramp has >= 5 mask
updates); initial_sparsity=0, exponent 3, name=demo. The first conv layer
(144 weights) is pruned to half the target: weight_sparsity_map=[conv1/:S/2].
--hparams is applied last and overrides any of these and the other flags.

Training: Adam (warm-up, cosine decay from 3e-3), batch 128, random +-1 pixel
shifts; the same initial weights, batches and shifts in both runs.

Prints a per-layer table and dense vs pruned test accuracy, and writes
summary.json, sparsity.png, training.png and layers.png to --out.
"""

WANDA_DESCRIPTION = """\
Train a small byte-level transformer language model (flax nnx) on Python's own
standard-library sources (shipped with every CPython: nothing is downloaded;
the last 10 % of every file is held out), or load it from --out, then prune
every linear layer of its blocks once, with no weight update (the embeddings
and the LM head stay dense, as in the Wanda paper): magnitude (layer scope and
output scope) and Wanda (|w| * input norm from jaxprune.activation_norms over a
few calibration batches of the training split; output scope, and layer scope
as an ablation), at 50 % unstructured and 2:4. Also prunes one block at a time.

Prints the held-out perplexity table and writes wanda.json, wanda.png and the
trained model (lm_checkpoint.npz, reused by later runs with the same settings)
to --out.
"""


class MissingExtrasError(RuntimeError):
    """The ``examples`` extra (flax, matplotlib, scikit-learn, tqdm) is not installed."""


def check_extras() -> None:
    """Checks that the demo's optional dependencies import.

    Raises:
      MissingExtrasError: naming the missing packages and how to install them
        (``pip install <them>``, or ``pip install -e ".[examples]"`` in a checkout).
    """
    missing = []
    for module, dist in EXAMPLES_EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise MissingExtrasError(
            f"the jaxprune demo needs the optional 'examples' dependencies; missing: "
            f"{', '.join(missing)}. Install them with:\n    pip install {' '.join(missing)}\n"
            f'or, in a jaxprune checkout:\n    pip install -e ".[examples]"'
        )


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (e.g. 0.9), got {text!r}")
    return value


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be at least 3, got {value}")
    return value


def _block(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(-1|\d+)\s*[xX]\s*(-1|\d+)\s*", text)
    if not m or 0 in (int(m.group(1)), int(m.group(2))):
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH with each >= 1 or -1 (whole dimension), e.g. 4x4 or 1x1; "
            f"got {text!r}"
        )
    return int(m.group(1)), int(m.group(2))


def version_string() -> str:
    """What ``jaxprune --version`` prints: jaxprune's version and those it runs with.

    Returns:
      E.g. ``"jaxprune 0.1.0 (jax 0.10.2, jaxlib 0.10.2, optax 0.2.8, Python 3.11.7)"``.
    """
    from jaxprune import __version__

    deps = []
    for dist in ("jax", "jaxlib", "optax"):
        try:
            deps.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            deps.append(f"{dist} not installed")
    return f"jaxprune {__version__} ({', '.join(deps)}, Python {platform.python_version()})"


def _check_out(out: str) -> str | None:
    """Creates the output directory; returns why it cannot be used, or None."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out: {out!r} exists and is not a directory"
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        return f"--out: cannot create directory {out!r}: {e.strerror or e}"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out: directory {out!r} is not writable"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxprune`` command.

    Returns:
      An ``argparse.ArgumentParser`` with the ``demo`` and ``demo-wanda`` subcommands.
    """
    parser = argparse.ArgumentParser(
        prog="jaxprune",
        description="jaxprune: gradual magnitude pruning for JAX, Flax and optax.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_string(),
        help="print the versions of jaxprune, jax, jaxlib, optax and Python, and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train a small CNN on the digits dataset, dense and pruned, and compare",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--target-sparsity",
        type=_sparsity,
        default=0.9,
        metavar="S",
        help="final sparsity of the kernels (conv1: half of it), in [0, 1) (default: %(default)s)",
    )
    demo.add_argument(
        "--steps",
        type=_steps,
        default=None,
        metavar="N",
        help="training steps of each run, batch 128 (default: 1500; 600 with --compare)",
    )
    demo.add_argument(
        "--block",
        type=_block,
        default=(1, 1),
        metavar="HxW",
        help="pruning block shape (block_height x block_width) for the 2-D kernels, e.g. 4x4; "
        "-1 = the whole dimension (default: 1x1, elementwise)",
    )
    demo.add_argument(
        "--method",
        choices=("exact", "histogram"),
        default="exact",
        help="threshold method: exact k-th largest (TF r1.15) or histogram (TF r1.11) "
        "(default: %(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument(
        "--out",
        default="demo_out",
        metavar="DIR",
        help="output directory for summary.json and the plots, created if missing "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--hparams",
        default="",
        metavar="STR",
        help='TF HParams string applied last, e.g. "pruning_frequency=20,'
        'weight_sparsity_map=[conv1:0.5]"',
    )
    demo.add_argument(
        "--compare",
        action="store_true",
        help="compare the pruning methods instead (dense, TF layer, global, ERK, 2:4, channel; "
        "same data, seed and schedule): a table, compare.json and compare.png",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    demo.set_defaults(subparser=demo)
    wanda = sub.add_parser(
        "demo-wanda",
        help="prune a small language model one-shot: magnitude vs Wanda (calibration data)",
        description=WANDA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wanda.add_argument(
        "--steps",
        type=_steps,
        default=400,
        metavar="N",
        help="training steps (default: %(default)s)",
    )
    wanda.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    wanda.add_argument(
        "--calibration-batches",
        type=_steps,
        default=8,
        metavar="N",
        help="calibration batches of 16 windows from the training split (default: %(default)s)",
    )
    wanda.add_argument(
        "--out",
        default="demo_wanda_out",
        metavar="DIR",
        help="output directory for wanda.json, wanda.png and the trained model "
        "(default: %(default)s)",
    )
    wanda.add_argument(
        "--retrain", action="store_true", help="train even if --out holds a matching model"
    )
    wanda.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    wanda.add_argument("--no-plots", action="store_true", help="do not write wanda.png")
    wanda.set_defaults(subparser=wanda)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``jaxprune`` command.

    Args:
      argv: the arguments after the program name; None means ``sys.argv[1:]``.

    Returns:
      The exit status: 0 on success, 1 if the optional dependencies are
      missing.

    Raises:
      SystemExit: with status 2 and a usage message, for invalid flags or
        hyperparameters or an ``--out`` that cannot be a writable directory
        (argparse's convention); with status 0 after ``--help`` or
        ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        check_extras()
    except MissingExtrasError as e:
        print(f"jaxprune: error: {e}", file=sys.stderr)
        return 1
    if args.command == "demo-wanda":
        from jaxprune.demos import wanda_demo

        wanda_demo.run_wanda_demo(
            wanda_demo.WandaDemoConfig(
                steps=args.steps,
                seed=args.seed,
                calibration_batches=args.calibration_batches,
                out=args.out,
                retrain=args.retrain,
                progress=not args.no_progress,
                plots=not args.no_plots,
            )
        )
        return 0
    from jaxprune.demos import demo

    config = demo.DemoConfig(
        target_sparsity=args.target_sparsity,
        steps=args.steps if args.steps is not None else (600 if args.compare else 1500),
        block=args.block,
        method=args.method,
        seed=args.seed,
        out=args.out,
        hparams=args.hparams,
        progress=not args.no_progress,
        plots=not args.no_plots,
    )
    try:
        demo.build_hparams(config)
    except ValueError as e:
        args.subparser.error(f"invalid pruning hyperparameters: {e}")
    problem = _check_out(args.out)
    if problem:
        args.subparser.error(problem)
    if args.compare:
        from jaxprune.demos import compare

        compare.compare_methods(config)
    else:
        demo.run_demo(config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
