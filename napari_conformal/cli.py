"""The ``napari-conformal`` command: calibrate, evaluate, report and cache features headless; open the demo.

Every user error (bad store, bad indices, a calibration set too small for α, an unreadable
``CALIB.json``, an output path that cannot be written) ends with one line
``napari-conformal: error: …`` on stderr and exit status 2; nothing is written and the inputs are
never modified. Arguments, the output path and the calibration size are checked before any
per-image work. Outputs are written to a temporary sibling file and renamed into place, so an
interrupted run never leaves a half-written file.

The method options (``--k``, ``--rw-beta``, ``--tau``, …) are generated from the methods' options
specs (:class:`~napari_conformal.core.methods.base.Option`), so a method's new option is a new
flag; ``-o NAME=VALUE`` reaches any option too.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from napari_conformal.cli_import import _positive_int
from napari_conformal.errors import ConformalError

__all__ = ["build_parser", "main"]

PROG = "napari-conformal"
T = TypeVar("T")


class UsageError(ConformalError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def _add_option_flag(parser: argparse.ArgumentParser, help_text: str, metavar: str = "NAME=VALUE") -> None:
    """The repeatable ``-o NAME=VALUE`` flag (collected into ``args.option``)."""
    parser.add_argument(
        "--option", "-o", action="append", type=_key_value, default=[], metavar=metavar, help=help_text
    )


def _method_options() -> dict[str, tuple[Any, list[str]]]:
    """Every option of every method: ``name → (the Option, [methods that have it])``."""
    from napari_conformal.core.methods.base import available_methods, method_class

    out: dict[str, tuple[Any, list[str]]] = {}
    for name in available_methods():
        for opt in method_class(name).options:
            if opt.name in out:
                out[opt.name][1].append(name)
            else:
                out[opt.name] = (opt, [name])
    return out


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per method option (values parsed by the chosen method's spec after argparse)."""
    group = parser.add_argument_group("method options (each applies to the methods named in its help)")
    for name, (opt, methods) in _method_options().items():
        extra = f" [{', '.join(methods)}; default {opt.default!r}]"
        metavar = "{" + ",".join(opt.choices) + "}" if opt.kind == "choice" else opt.kind.upper()
        group.add_argument(opt.cli_flag, dest=f"opt__{name}", default=None, metavar=metavar, help=opt.help + extra)


def _given_options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The method options the command line gave, checked against the method's spec."""
    from napari_conformal.core.methods.base import method_class

    cls = method_class(method)
    own = {o.name for o in cls.options}
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("opt__") and value is not None:
            name = key[len("opt__") :]
            if name not in own:
                flag = _method_options()[name][0].cli_flag
                raise UsageError(f"{flag} does not apply to method {method!r} (its options: {', '.join(own) or 'none'})")
            out[name] = value
    for name, value in args.option:
        if name not in own:
            raise UsageError(f"-o {name}: method {method!r} has no option {name!r} (its options: {', '.join(own) or 'none'})")
        out[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-conformal`` command."""
    from napari_conformal import __version__
    from napari_conformal.core.methods.base import available_methods

    methods = available_methods()
    parser = _Parser(
        prog=PROG,
        description="Conformal prediction sets for image segmentation (CONSIGN, RW-CP and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cal = sub.add_parser("calibrate", help="calibrate a method on a dataset store and write CALIB.json")
    cal.add_argument("store", help="path of the dataset store (a zarr group; see docs/store.md)")
    cal.add_argument("--method", required=True, choices=methods)
    cal.add_argument("--alpha", required=True, type=_probability, help="risk level α in (0, 1)")
    cal.add_argument("--nu", type=_probability, help="label-wise accuracy ν (consign and pixel-wise methods)")
    split = cal.add_mutually_exclusive_group(required=True)
    split.add_argument("--cal", help="calibration image indices, e.g. '0-79,90'")
    split.add_argument("--cal-fraction", type=_probability, help="random fraction of images for calibration")
    cal.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    _add_method_flags(cal)
    _add_option_flag(cal, "any method option (repeatable), e.g. -o lambda_max=2")
    cal.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default auto)")
    cal.add_argument("--scheduler", help="run per-image work on dask.distributed: 'local' or an address")
    _add_per_class_flags(cal)
    cal.add_argument("--out", required=True, help="output CALIB.json")
    cal.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    ev = sub.add_parser("evaluate", help="evaluate a calibration on test images and write METRICS.json")
    ev.add_argument("store", help="path of the dataset store")
    ev.add_argument("--calibration", required=True, help="CALIB.json (or a --per-class file) written by 'calibrate'")
    ev.add_argument("--test", help="test image indices (default: every image not used for calibration)")
    ev.add_argument(
        "--n-samples",
        type=int,
        nargs="+",
        default=[10, 50, 100, 500, 1000],
        help="numbers of sampled set members for chao1/sec/correlation (sampling methods)",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed for sampling set members")
    ev.add_argument("--device", default=None, help="override the calibration's device")
    ev.add_argument(
        "--other-data", action="store_true", help="evaluate on a store other than the calibration's (every image is a test image)"
    )
    ev.add_argument("--scheduler", help="run per-image work on dask.distributed: 'local' or an address")
    ev.add_argument("--out", required=True, help="output METRICS.json")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    feat = sub.add_parser(
        "features",
        help="compute rwcp image features once and cache them in the store (calibrate/evaluate reuse them)",
        description=(
            "Compute the rwcp features of every image and store them as the store's 'features' array. "
            "calibrate and evaluate with rwcp read them instead of recomputing when their extractor "
            "settings (--features, --grid-stride, --model-dir) are the same; otherwise they compute "
            "features as usual."
        ),
    )
    feat.add_argument("store", help="path of the dataset store (written in place)")
    feat.add_argument("--features", required=True, help="feature extractor (efficientnet-lite0, multiscale, dinov2, …)")
    _add_option_flag(feat, "extractor setting (repeatable), as given to calibrate, e.g. -o grid_stride=2")
    feat.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default auto)")
    feat.add_argument("--overwrite", action="store_true", help="replace features the store already holds")
    feat.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    make = sub.add_parser("make-demo", help="build (or reuse) a demo dataset store from the packaged real data")
    make.add_argument(
        "name",
        choices=("hippocampus-3d", "hippocampus-2d", "hippocampus-2d-fewshot", "brain-mri", "nuclei"),
        help="which demo dataset",
    )
    make.add_argument("--out", help="store path (default: the user cache folder)")
    make.add_argument("--n-images", type=int, help="only this many calibration + test images (quick look)")
    make.add_argument("--overwrite", action="store_true", help="rebuild even when a matching store exists")
    make.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] for the demo model")
    make.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    demo = sub.add_parser("demo", help="open napari on a demo store with every dock and a calibration to browse")
    demo.add_argument("--screenshot", help="wait for the calibration, save a PNG of the window and exit")
    demo.add_argument(
        "--dataset",
        default="hippocampus-2d",
        help="demo store: hippocampus-2d (default), hippocampus-2d-fewshot (a weak model: sets must stretch), "
        "hippocampus-3d (first build ~2 min), brain-mri, nuclei",
    )
    demo.add_argument("--method", default="consign", choices=methods, help="method calibrated at start (default consign)")
    demo.add_argument("--no-calibrate", action="store_true", help="open the store without calibrating")
    _add_report_parser(sub)
    from napari_conformal.cli_import import add_parsers

    add_parsers(sub)  # import nnunet / import arrays / sample
    return parser


# -- helpers -----------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary sibling and a rename."""
    from napari_conformal.io.atomic import atomic_file
    from napari_conformal.io.provenance import to_jsonable

    text = json.dumps(to_jsonable(payload, where="output"), indent=2, allow_nan=False)
    with atomic_file(path) as fh:
        fh.write((text + "\n").encode())


def check_output_file(path: str, *inputs: str) -> Path:
    """Check, before any work, that ``path`` may receive an output file.

    Refuses a directory, a device or any other non-regular file, a symbolic link (give the real
    path: links are refused, not followed, so an output never lands somewhere unexpected), one of
    the command's inputs, and a folder that does not exist or cannot be written.
    """
    target = Path(path)
    if target.is_symlink():
        raise UsageError(f"--out {path} is a symbolic link; give the real path (links are not followed)")
    if target.exists():
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"--out {path} is a directory; give a file name")
        if not stat.S_ISREG(mode):
            raise UsageError(f"--out {path} is not a regular file (a device, pipe or socket); give a file name")
    resolved = target.resolve()
    for given in inputs:
        if given and Path(given).resolve() == resolved:
            raise UsageError(f"--out {path} is one of the inputs; write the output elsewhere")
    folder = resolved.parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: the folder {folder} is not writable")
    return target


def _open_store(path: str) -> Any:
    from napari_conformal.io.store import open_store

    if not Path(path).exists():
        raise UsageError(f"store not found: {path}")
    return open_store(path, mode="r")


def _run(gen: Generator[Any, None, T], label: str, quiet: bool) -> T:
    """Drive a progress generator with a terminal progress bar per stage.

    The generator is closed on the way out whatever happens, so that its cleanup (an atomic write's
    temporary folder, say) runs at once: a Ctrl-C that lands while the bar is drawn, outside the
    generator, would otherwise leave it suspended until the interpreter exits, and then possibly never.
    """
    from napari_conformal._terminal import progress_bar

    bar = progress_bar(label, quiet)
    try:
        while True:
            step = next(gen)
            bar(step[0], step[1], getattr(step, "stage", None))
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


# -- subcommands -------------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from napari_conformal.api import iter_calibrate
    from napari_conformal.io.indices import parse_indices, random_split

    check_output_file(args.out, args.store)
    options = _given_options(args, args.method)
    _check_per_class_flags(args, options)
    store = _open_store(args.store)
    if args.cal is not None:
        cal, seed = parse_indices(args.cal, store.n_images), None
    else:
        (cal, _), seed = random_split(store.n_images, args.cal_fraction, args.seed), args.seed
    if args.per_class:
        return _calibrate_per_class(args, store, cal, seed, options)
    calibration = _run(
        iter_calibrate(
            store,
            args.method,
            alpha=args.alpha,
            nu=args.nu,
            cal_indices=cal,
            device=args.device,
            scheduler=args.scheduler,
            split_seed=seed,
            **options,
        ),
        "calibrating",
        args.quiet,
    )
    calibration.save(args.out)
    if not args.quiet:
        print(
            f"{args.method}: lambda_hat = {calibration.lambda_hat:.6g} from n = {calibration.n} images; "
            f"{calibration.guarantee()} Wrote {args.out}",
            file=sys.stderr,
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_conformal.api import iter_evaluate
    from napari_conformal.core.calibration import Calibration
    from napari_conformal.io.indices import parse_indices

    check_output_file(args.out, args.store, args.calibration)
    calibration = _load_calibration(args.calibration)
    store = _open_store(args.store)
    test = None if args.test is None else parse_indices(args.test, store.n_images)
    if not isinstance(calibration, Calibration):
        return _evaluate_per_class(args, store, calibration, test)
    report = _run(
        iter_evaluate(
            store,
            calibration,
            test_indices=test,
            n_samples=args.n_samples,
            seed=args.seed,
            device=args.device,
            check_identity=not args.other_data,
            scheduler=args.scheduler,
        ),
        "evaluating",
        args.quiet,
    )
    report["calibration"] = str(Path(args.calibration).resolve())
    write_json_atomic(args.out, report)
    if not args.quiet:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in report["mean"].items() if isinstance(v, float))
        print(f"{calibration.method} on {report['n_test']} test images: {shown}; wrote {args.out}", file=sys.stderr)
    return 0


# -- per-structure calibration (the work is in napari_conformal.api) ---------------------------------


def _add_per_class_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("per-structure calibration (docs/algorithms.md#per-structure-guarantees)")
    group.add_argument(
        "--per-class",
        action="store_true",
        help="one lambda_hat per structure, each from the calibration images that contain it (a per-class file)",
    )
    group.add_argument("--classes", help="the structures, e.g. '1,2' (default: every foreground label)")
    group.add_argument(
        "--rare",
        choices=("refuse", "full"),
        help="a structure in fewer than ceil(1/alpha) - 1 calibration images: refuse (default) or full set",
    )


def _check_per_class_flags(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """Refuse per-class flags without ``--per-class``, and a structure option with it, before any work."""
    from napari_conformal.core.methods.base import method_class

    if not args.per_class:
        given = [flag for flag, value in (("--classes", args.classes), ("--rare", args.rare)) if value is not None]
        if given:
            raise UsageError(f"{given[0]} needs --per-class")
        return
    option = method_class(args.method).structure_option
    if option is None:
        raise UsageError(f"--per-class: method {args.method!r} has no structure option")
    if option in options:
        flag = "--" + option.replace("_", "-")
        raise UsageError(f"--per-class sets {flag} to each structure itself; leave {flag} out")
    if args.classes is not None:
        items = [t.strip() for t in args.classes.split(",")]
        if not all(t.isdigit() for t in items):
            raise UsageError(f"--classes expects labels such as '1,2', got {args.classes!r}")
        args.classes = [int(t) for t in items]


def _calibrate_per_class(
    args: argparse.Namespace, store: Any, cal: list[int], seed: int | None, options: dict[str, Any]
) -> int:
    from napari_conformal.api import iter_calibrate_per_class

    result = _run(
        iter_calibrate_per_class(
            store,
            args.method,
            alpha=args.alpha,
            nu=args.nu,
            classes=args.classes,
            rare=args.rare or "refuse",
            cal_indices=cal,
            device=args.device,
            scheduler=args.scheduler,
            split_seed=seed,
            **options,
        ),
        "calibrating per structure",
        args.quiet,
    )
    result.save(args.out)
    if not args.quiet:
        lines = "".join(f"\n  {line}" for line in result.summary())
        print(f"{args.method}, one lambda_hat per structure at alpha = {result.alpha:g}:{lines}", file=sys.stderr)
        print(f"Wrote {args.out}", file=sys.stderr)
    return 0


def _load_calibration(path: str) -> Any:
    from napari_conformal.core.per_class import load_calibration_file

    return load_calibration_file(path)


def _evaluate_per_class(args: argparse.Namespace, store: Any, calibrations: Any, test: list[int] | None) -> int:
    from napari_conformal.api import iter_evaluate_per_class

    report = _run(
        iter_evaluate_per_class(
            store,
            calibrations,
            test_indices=test,
            n_samples=args.n_samples,
            seed=args.seed,
            device=args.device,
            check_identity=not args.other_data,
            scheduler=args.scheduler,
        ),
        "evaluating per structure",
        args.quiet,
    )
    report["calibration"] = str(Path(args.calibration).resolve())
    write_json_atomic(args.out, report)
    if not args.quiet:
        for c, part in report["per_class"].items():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in part["mean"].items() if isinstance(v, float))
            print(f"  structure {c}: {part['n_test']} test images: {shown or 'none'}", file=sys.stderr)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from napari_conformal.api import iter_cache_features
    from napari_conformal.io.store import open_store

    path = Path(args.store)
    if not path.exists():
        raise UsageError(f"store not found: {path}")
    if not os.access(path, os.W_OK):
        raise UsageError(f"store {path} is not writable; 'features' writes the features array into it")
    store = open_store(path, mode="r+")
    if store.has_features and not args.overwrite:
        raise UsageError(f"store {path} already has features; pass --overwrite to replace them")
    from napari_conformal.core.methods.base import available_methods, method_class

    options: dict[str, Any] = {**dict(args.option), "features": args.features}
    method = next(name for name in available_methods() if method_class(name).uses_features)
    info = _run(
        iter_cache_features(store, method, overwrite=args.overwrite, device=args.device, **options),
        "computing features",
        args.quiet,
    )
    if not args.quiet:
        grid = "x".join(str(g) for g in info["grid_shape"])
        print(
            f"{info['extractor']['name']}: {info['n_channels']} channels on a {grid} grid for "
            f"{store.n_images} images; wrote {path / 'features'}",
            file=sys.stderr,
        )
    return 0


def cmd_make_demo(args: argparse.Namespace) -> int:
    from napari_conformal._terminal import progress_bar
    from napari_conformal.demo_data import build_demo_store

    if args.n_images is not None and args.n_images < 2:
        raise UsageError("--n-images must be at least 2 (one calibration and one test image)")
    try:
        path = build_demo_store(
            args.name,
            args.out,
            progress=progress_bar(f"building {args.name}", args.quiet),
            overwrite=args.overwrite,
            n_images=args.n_images,
            device=args.device,
        )
    except FileExistsError as exc:
        raise UsageError(f"{exc}; pass --overwrite to replace it") from None
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_conformal.demo import run_demo

    return run_demo(
        screenshot=args.screenshot, dataset=args.dataset, method=args.method, calibrate=not args.no_calibrate
    )


# -- report subcommand (the work is in napari_conformal.report) --------------------------------------


def _comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """argparse type for a comma list such as ``0.2,0.1,0.05``."""

    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",")]
        if not items or any(not t for t in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [kind(t) for t in items]

    return parse


def _add_report_parser(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="repeated random calibration/test splits for several methods: an HTML page with figures",
    )
    rep.add_argument("store", help="path of the dataset store (with labels)")
    rep.add_argument("--methods", required=True, type=_comma_list(str), help="e.g. 'crc,consema,rwcp'")
    rep.add_argument("--alpha", required=True, type=_comma_list(_probability), help="e.g. '0.2,0.1,0.05'")
    rep.add_argument("--nu", type=_probability, help="label-wise accuracy ν (consign and pixel-wise methods)")
    rep.add_argument("--k", type=_positive_int, help="principal components K (consign)")
    rep.add_argument("--splits", type=_positive_int, default=5, help="random splits (default 5)")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--cal-fraction", type=_probability, help="fraction of images that calibrate (default 0.5)")
    size.add_argument("--n-cal", type=_positive_int, help="number of images that calibrate")
    rep.add_argument("--seed", type=int, default=0, help="seed of the splits and of sampled members (default 0)")
    rep.add_argument(
        "--n-samples",
        type=_comma_list(_positive_int),
        default=[10, 50, 100, 500, 1000],
        help="sampled members N for chao1/sec/correlation (default 10,50,100,500,1000)",
    )
    rep.add_argument(
        "--diversity-alpha",
        type=_comma_list(_probability),
        help="the α at which members are sampled (default: the α closest to 0.1)",
    )
    rep.add_argument("--features", help="rwcp feature extractor (efficientnet-lite0, multiscale, dinov2, …)")
    _add_option_flag(
        rep,
        "a method option (repeatable), e.g. -o rwcp.grid_stride=2 or -o fg_class=2 (every method)",
        metavar="[METHOD.]NAME=VALUE",
    )
    rep.add_argument("--false-alarm", type=_probability, default=0.01, help="per-split band false alarm")
    rep.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default auto)")
    rep.add_argument("--scheduler", help="run per-image work on dask.distributed: 'local' or an address")
    rep.add_argument("--out", required=True, help="output directory (index.html, results.json, PNGs)")
    rep.add_argument("--overwrite", action="store_true", help="replace an earlier report at --out")
    rep.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def cmd_report(args: argparse.Namespace) -> int:
    from napari_conformal._terminal import progress_bar
    from napari_conformal.report import build_report, check_report_target, method_params, write_report

    check_report_target(args.out, args.overwrite)  # fail before any work
    options = list(args.option)
    if args.features is not None:
        options.append(("features", args.features))
    if args.device and args.device != "auto":
        options.append(("device", args.device))
    params = method_params(args.methods, options)
    store = _open_store(args.store)
    results = build_report(
        store,
        args.methods,
        args.alpha,
        nu=args.nu,
        k=args.k,
        splits=args.splits,
        cal_fraction=args.cal_fraction,
        n_cal=args.n_cal,
        seed=args.seed,
        n_samples=args.n_samples,
        diversity_alphas=args.diversity_alpha,
        params=params,
        false_alarm=args.false_alarm,
        scheduler=args.scheduler,
        progress=progress_bar("report", args.quiet),
    )
    out = write_report(results, args.out, overwrite=args.overwrite)
    if results["failures"]:  # a result, not an error: the page lists them
        print(
            f"{PROG}: warning: lambda_hat reached lambda_max in {len(results['failures'])} of "
            f"{len(results['runs'])} runs (method, alpha, split); they are listed in the report",
            file=sys.stderr,
        )
    if not args.quiet:
        print(f"wrote {out / 'index.html'} and {out / 'results.json'}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-conformal`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors (already printed)
        return int(stop.code or 0)
    handlers = {
        "calibrate": cmd_calibrate,
        "evaluate": cmd_evaluate,
        "features": cmd_features,
        "report": cmd_report,
        "make-demo": cmd_make_demo,
        "demo": cmd_demo,
    }
    from napari_conformal.cli_import import handlers as import_handlers

    handlers.update(import_handlers())
    try:
        return handlers[args.command](args)
    except ConformalError as exc:
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command could not read or write (permissions, disk full)
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"{PROG}: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
