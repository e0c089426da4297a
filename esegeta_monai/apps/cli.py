"""The ``esegeta`` command (also ``python -m esegeta_monai``).

Subcommands:
    explain   explain a bundle's model on images (a cohort: resumable, in parallel, under torchrun),
              write aligned maps (NIfTI, NRRD, PNG), a journal and a manifest
    manifest  regenerate OUT/manifest.json from OUT/journal.jsonl (e.g. after a killed run)
    methods   list the registered methods
    layers    list a bundle network's layers (names for CAMs) with output shapes
    evaluate  score methods on a bundle's images (infidelity, sensitivity, deletion/insertion,
              localisation, cascading randomisation): tables, a ranking and figures; with several
              --bundle, the models compared on the same images (intervals, paired tests, Holm)
    bundle-config  print the path of the shipped override config (explain step for monai.bundle run)
    targets   list the target kinds

Exit codes: 0 all records ok; 1 some record failed or timed out; 2 nothing could run
(bad config, bundle, device or output folder).

Example:
    $ esegeta explain --bundle bundles/vessel_mra_demo
    $ esegeta explain --bundle DIR --image scans/*.nii.gz --methods saliency,integrated_gradients \\
          --target argmax:1 --target otsu:1 --out maps --timeout 600 --workers 2
    $ torchrun --standalone --nproc_per_node 2 -m esegeta_monai explain --bundle DIR --images cohort.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from esegeta_monai.apps.config import OUTPUT_FORMATS, RunConfig, load_run_config
from esegeta_monai.errors import EsegetaError
from esegeta_monai.methods import get_method
from esegeta_monai.methods.spec import parse_methods, unique_specs

__all__ = ["main", "build_parser"]


def _roi(text: str) -> list[int]:
    try:
        roi = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi-size takes integers like 64,64,64, got {text!r}") from None
    if any(v < 1 for v in roi):
        raise argparse.ArgumentTypeError(f"--roi-size {text}: window sizes must be ≥ 1 voxel, e.g. 64,64,64")
    return roi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esegeta", description="Exact attribution maps for MONAI models, aligned with the scan.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    # the same flags after the subcommand (SUPPRESS keeps the main parser's value otherwise)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    explain = sub.add_parser("explain", parents=[common], help="explain a bundle's model on images")
    explain.add_argument("--bundle", help="MONAI bundle folder (configs/, models/model.pt)")
    explain.add_argument("--config", help="run config (YAML or JSON); flags override it")
    explain.add_argument("--bundle-config", action="append", dest="bundle_configs", metavar="FILE",
                         help="override config merged after the bundle's inference config (repeatable; a path or a shipped name, e.g. swin_unetr_compat)")
    explain.add_argument("--image", action="extend", nargs="+", dest="images", metavar="FILE",
                         help="input images (several, globs, repeatable): NIfTI, PNG, MHA/MHD, NRRD, DICOM file or a DICOM "
                              "series folder; KEY=FILE pairs form one case of several files (a repeated key is stacked "
                              "as channels); default: the bundle's sample")
    explain.add_argument("--images", action="append", dest="image_lists", metavar="LIST",
                         help="a list of inputs (repeatable): a MONAI datalist JSON, a CSV with an image column, a text file "
                              "with one path per line, or a folder (every image file in it)")
    explain.add_argument("--datalist-key", help="the datalist section to read (default: testing, test, validation, training)")
    explain.add_argument("--methods", help="comma-separated method names (see `esegeta methods`)")
    explain.add_argument("--target", action="append", dest="targets", metavar="SPEC",
                         help="argmax:C, otsu:C, mask:C:FILE, voxel:C:I,J,K or class:C (repeatable; C may be 1,2)")
    explain.add_argument("--out", help="output folder (default esegeta_out)")
    explain.add_argument("--format", choices=OUTPUT_FORMATS, help="map files: nifti (default, .nii.gz), nrrd, or png (2D maps only)")
    explain.add_argument("--channel-reduce", choices=("sum", "mean", "none"),
                         help="input channels of each map: sum (default), mean, or none (a 4D file); layer maps with reduce=none keep theirs")
    explain.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    explain.add_argument("--amp", action="store_true", default=None, help="mixed precision forwards")
    explain.add_argument("--timeout", type=float, help="seconds per method and image")
    explain.add_argument("--weights", help="weights file (default: BUNDLE/models/model.pt)")
    explain.add_argument("--roi-size", type=_roi, help="override the bundle's window, e.g. 64,64,64")
    explain.add_argument("--overlap", type=float, help="override the bundle's window overlap")
    explain.add_argument("--sw-batch-size", type=int, help="override the bundle's windows per batch")
    explain.add_argument("--local", action="store_true", default=None, help="explain each window against its own output (TorchEsegeta behaviour)")
    explain.add_argument("--nan-policy", choices=("error", "zero"), help="NaN/Inf voxels: refuse (default) or set to 0")
    explain.add_argument("--layer", help="module name of the layer for CAM/layer methods (see `esegeta layers`)")
    explain.add_argument("--no-progress", action="store_true", help="no progress bars")
    explain.add_argument("--workers", type=int, help="worker processes, each loading the bundle once (default 1)")
    explain.add_argument("--devices", help="comma-separated devices, one per worker (cpu, cuda:0,cuda:1, …)")
    explain.add_argument("--force", action="store_true", default=None, help="recompute jobs an earlier run into --out finished")
    explain.add_argument("--allow-empty", action="store_true", default=None,
                         help="an empty target (e.g. no voxel predicted as the class) is recorded but does not make the exit code 1")
    explain.add_argument("--no-figures", dest="figures", action="store_false", default=None,
                         help="write maps only: no prediction, figures, 3D Slicer scenes or HTML report")
    explain.add_argument("--verify", action="store_true", default=None,
                         help="on resume, compare the checksum of every map (default: only of maps whose time stamp changed)")

    manifest = sub.add_parser("manifest", parents=[common], help="regenerate OUT/manifest.json from OUT/journal.jsonl")
    manifest.add_argument("out", help="the output folder of a run")

    report = sub.add_parser("report", parents=[common],
                            help="make the missing figures and 3D Slicer scenes of an output folder and its HTML report")
    report.add_argument("out", help="the output folder of a run (or of several runs: a cohort)")
    report.add_argument("--force", action="store_true", help="redraw every figure and scene")
    report.add_argument("--no-figures", dest="figures", action="store_false",
                        help="only the HTML pages, from the figures that exist")
    report.add_argument("--title", help="the report's title (default: the folder's name)")
    gui = sub.add_parser("gui", parents=[common], help="a local web application: pick a bundle, scans and methods, run, view")
    gui.add_argument("--root", action="append", dest="roots", metavar="DIR",
                     help="a folder whose bundles and scans the GUI may read (repeatable; default: the current "
                          "folder and the shipped demo bundles)")
    gui.add_argument("--out", default="esegeta_gui_out", help="where jobs and uploads are written (default: esegeta_gui_out)")
    gui.add_argument("--host", default="127.0.0.1", help="the interface to listen on (default 127.0.0.1; others print a warning)")
    gui.add_argument("--port", type=int, default=0, help="the port (default 0: a free one)")
    gui.add_argument("--no-browser", dest="browser", action="store_false", help="do not open a browser")
    gui.add_argument("--max-upload-mb", type=float, default=512, help="largest upload accepted (MiB, default 512)")
    gui.add_argument("--max-parallel", type=int, default=1, help="jobs running at once (default 1; the others queue)")
    slicer = sub.add_parser("slicer", parents=[common], help="print the command that opens an image's scene in 3D Slicer")
    slicer.add_argument("out", help="the output folder of a run")
    slicer.add_argument("--image", help="the image folder's name (default: the only one; else all are listed)")
    slicer.add_argument("--slicer", default="Slicer", help="the 3D Slicer executable (default: Slicer)")

    layers = sub.add_parser("layers", parents=[common], help="list a bundle network's layers and their output shapes")
    layers.add_argument("--bundle", required=True, help="MONAI bundle folder")
    layers.add_argument("--weights", help="weights file (default: BUNDLE/models/model.pt)")
    layers.add_argument("--contains", help="only layers whose name or type contains this text")

    evaluate = sub.add_parser("evaluate", parents=[common], help="score methods: infidelity, sensitivity, deletion/insertion, localisation, randomisation")
    evaluate.add_argument("--bundle", required=True, action="append", dest="bundle",
                          help="MONAI bundle folder; repeat it to compare models on the same images (tables with "
                               "confidence intervals, paired Wilcoxon tests with Holm's correction: comparison.md)")
    evaluate.add_argument("--image", action="append", dest="images", metavar="FILE|KEY=FILE",
                          help="input image or glob (repeatable); every KEY=FILE forms one case of several files (a "
                               "repeated key is stacked as channels, in order); default: the bundle's sample")
    evaluate.add_argument("--label", action="append", dest="labels", default=[], metavar="FILE", help="ground-truth label per image (localisation)")
    evaluate.add_argument("--methods", default="saliency,guided_backprop,deconvolution", help="comma-separated methods")
    evaluate.add_argument("--metrics", default="infidelity,sensitivity,deletion,insertion,randomisation", help="comma-separated metrics")
    evaluate.add_argument("--target", help="target spec (default: argmax:1 for segmentation, class:1 for classifiers)")
    evaluate.add_argument("--layer", help="layer for CAM/layer methods")
    evaluate.add_argument("--samples", type=int, help="random draws of every metric that draws (n_samples; defaults per metric: --list-metrics)")
    evaluate.add_argument("--steps", type=int, help="steps of every curve metric (deletion/insertion default 20)")
    evaluate.add_argument("--metric-option", action="append", dest="metric_options", default=[], metavar="METRIC.KEY=VALUE",
                          help="one option of one metric, e.g. infidelity.noise_std=0.2 (repeatable; a YAML value; "
                               "--list-metrics --verbose lists each metric's options)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--target-region", choices=("fixed", "recomputed"), default="fixed",
                          help="randomisation: the target's region from the trained model's prediction, held for every "
                               "randomised model (fixed, default), or each randomised model's own (recomputed)")
    evaluate.add_argument("--roi-size", type=_roi, help="override the bundle's window")
    evaluate.add_argument("--no-figures", action="store_true", help="tables only")
    evaluate.add_argument("--out", default="esegeta_eval", help="output folder (default esegeta_eval)")
    evaluate.add_argument("--list-metrics", action=_ListMetrics,
                          help="print each metric's family, direction (lower/higher is better), cost (forwards per image) "
                               "and reference, then exit (with --verbose first: its options and how it relates to Quantus)")
    evaluate.add_argument("--alpha", type=float, default=0.05, help="several bundles: family-wise error rate after Holm (default 0.05)")
    evaluate.add_argument("--n-boot", type=int, default=10_000, help="several bundles: bootstrap resamples, seeded by --seed (default 10000)")

    shipped = sub.add_parser("bundle-config", parents=[common], help="print the path of a shipped override config (default: explain)")
    shipped.add_argument("name", nargs="?", default="explain", help="explain (default) or swin_unetr_compat")
    shipped.add_argument("--list", action="store_true", help="list the shipped configs")

    methods = sub.add_parser("methods", parents=[common], help="list the registered methods")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("targets", parents=[common], help="list the target kinds")
    return parser


class _ListMetrics(argparse.Action):
    """``esegeta evaluate --list-metrics``: print the metric table and exit (as ``--help``: no bundle needed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from esegeta_monai.apps.evaluate import metric_table

        print(metric_table(verbose=bool(getattr(namespace, "verbose", False))))
        parser.exit(0)


def _config_from_args(args) -> RunConfig:
    config = load_run_config(args.config) if args.config else RunConfig()
    overrides = {
        "bundle": args.bundle, "images": args.images, "targets": args.targets, "out": args.out,
        "device": args.device, "amp": args.amp, "timeout": args.timeout, "weights": args.weights,
        "local": args.local, "nan_policy": args.nan_policy, "format": args.format, "channel_reduce": args.channel_reduce,
        "bundle_configs": args.bundle_configs, "image_lists": args.image_lists, "datalist_key": args.datalist_key,
        "workers": args.workers, "force": args.force, "verify": args.verify, "allow_empty": args.allow_empty,
        "figures": args.figures,
        "devices": [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.methods is not None:
        config.methods = parse_methods(args.methods, "--methods")  # validated below, after --layer
    if args.layer:
        for spec in config.methods:
            if "layer" in get_method(spec.name).params and "layer" not in spec.options:
                spec.options["layer"] = args.layer
    for key, value in (("roi_size", args.roi_size), ("overlap", args.overlap), ("sw_batch_size", args.sw_batch_size)):
        if value is not None:
            config.window[key] = value
    if args.no_progress:
        config.progress = False
    elif config.progress is None:
        config.progress = sys.stderr.isatty()
    config.validate("command line")
    return config


def _explain(args) -> int:
    from esegeta_monai.apps.allocator import tune_allocator
    from esegeta_monai.apps.cohort import run_explanations
    from esegeta_monai.jobs.progress import summary_lines

    tune_allocator()  # reuse freed window buffers instead of page-faulting them back (ESEGETA_MALLOC_TUNING=0: off)

    config = _config_from_args(args)
    try:
        result = run_explanations(config)
    except KeyboardInterrupt:
        out = Path(config.out)
        print(f"esegeta: interrupted. The jobs that finished are recorded in {out / 'journal.jsonl'} (manifest: "
              f"{out / 'manifest.json'}); run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    if result.manifest is None:  # a torchrun rank other than 0: rank 0 reports for all
        return 0 if not result.failures(config.allow_empty) else 1
    counts = result.summary["counts"]
    done = counts["ok"] + counts["skipped"]
    skipped = f" ({counts['skipped']} done by an earlier run, skipped)" if counts["skipped"] else ""
    print(f"{done}/{done + counts['failed'] + counts['timeout'] + counts['empty']} maps in {config.out}{skipped}; "
          f"manifest: {result.manifest}")
    for line in summary_lines(result.summary):
        print(line)
    if counts["empty"]:
        print(f"{counts['empty']} empty target(s): no voxel of the region on the image, so no map (see the manifest)"
              + ("; allowed by --allow-empty" if config.allow_empty else "; --allow-empty accepts them"), file=sys.stderr)
    if counts["failed"] + counts["timeout"]:  # each failure was logged as it happened, with its reason
        print(f"{counts['failed'] + counts['timeout']} failed or timed out: their errors are in the manifest", file=sys.stderr)
    return 0 if not result.failures(config.allow_empty) else 1


def _manifest(args) -> int:
    print(_journal_of(args.out).write_manifest())
    return 0


def _methods(args) -> int:
    from esegeta_monai.methods import method_table

    rows = method_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("name", "family", "library", "dims", "tasks")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns) + "  summary")
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns) + "  " + row["summary"])
    return 0


def _layers(args) -> int:
    import torch

    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.monai.io import load_for_explanation
    from esegeta_monai.core.layers import layer_table

    bundle = load_bundle(args.bundle, weights=args.weights)
    roi = bundle.inferer.get("roi_size")
    if roi is not None and bundle.in_channels:
        example = torch.zeros((1, bundle.in_channels, *roi))
    elif bundle.samples:
        example = load_for_explanation(bundle.samples[0], bundle.preprocessing, bundle.image_key)[bundle.image_key][None].as_tensor()
    else:
        raise EsegetaError(f"bundle {bundle.root}: no window size and no sample input to run the network on; add a sample/ image")
    rows = layer_table(bundle.network, example.to(bundle.device))
    if args.contains:
        rows = [r for r in rows if args.contains in r["name"] or args.contains in r["type"]]
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'name'.ljust(width)}  {'type'.ljust(20)}  output shape for input {tuple(example.shape)}")
    for row in rows:
        print(f"{row['name'].ljust(width)}  {row['type'].ljust(20)}  {row['output_shape']}")
    return 0


def _evaluate(args) -> int:
    from esegeta_monai.apps.allocator import tune_allocator
    from esegeta_monai.monai.bundle import load_bundle
    from esegeta_monai.apps.evaluate import evaluate
    from esegeta_monai.apps.cohort import default_targets
    from esegeta_monai.apps.inputs import ImageInput, expand_patterns, split_pairs

    tune_allocator()
    from esegeta_monai.evaluation import METRICS

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise EsegetaError(f"--metrics {args.metrics!r} names no metric; choose from {', '.join(METRICS)} (--list-metrics)")
    options = _metric_options(args.metric_options, metrics)
    methods = unique_specs(parse_methods(args.methods, "--methods"), "--methods")
    for spec in methods:
        if args.layer and "layer" in get_method(spec.name).params:
            spec.options["layer"] = args.layer
        get_method(spec.name).validate(spec.options)
    bundle = load_bundle(args.bundle[0])
    plain, pairs = split_pairs(args.images or [])
    images = [ImageInput(p) for p in expand_patterns(plain)] + ([ImageInput.case(pairs)] if pairs else [])
    images = images or [ImageInput(str(p)) for p in bundle.samples]
    if not images:
        raise EsegetaError(f"bundle {bundle.root} has no sample input; pass --image FILE (or --image KEY=FILE pairs)")
    window = {"roi_size": args.roi_size} if args.roi_size else {}
    if len(args.bundle) > 1:  # the images of the first bundle's handling, for every bundle
        return _compare(args, [bundle] + [load_bundle(b) for b in args.bundle[1:]], images, methods, metrics, window, options)
    result = evaluate(bundle, images, methods, metrics, args.out,
                      target=args.target or default_targets(bundle)[0], labels=args.labels, window=window,
                      n_samples=args.samples, seed=args.seed, steps=args.steps, figures=not args.no_figures,
                      target_region=args.target_region, options=options)
    for metric, order in result["ranking"].items():
        print(f"{metric:13s} " + "  ".join(f"{r['method']} {r['mean']:.4g}" for r in order))
    print(f"tables in {args.out}/evaluation.csv, evaluation.json, ranking.json")
    return _report_rows(result["rows"], "evaluation.csv")


def _metric_options(given: list[str], metrics: list[str]) -> dict:
    """``--metric-option METRIC.KEY=VALUE`` items as ``{metric: {key: value}}`` (values read as YAML)."""
    import yaml

    options: dict = {}
    for item in given:
        name, _, value = item.partition("=")
        metric, _, key = name.partition(".")
        if not (metric and key and _):
            raise EsegetaError(f"--metric-option {item!r}: write METRIC.KEY=VALUE, e.g. infidelity.noise_std=0.2")
        if metric not in metrics:
            raise EsegetaError(f"--metric-option {item!r}: metric {metric!r} is not in --metrics {','.join(metrics)}")
        options.setdefault(metric, {})[key] = yaml.safe_load(value)
    return options


def _compare(args, bundles, images, methods, metrics, window, options) -> int:
    from esegeta_monai.apps.cohort import default_targets
    from esegeta_monai.apps.compare import compare

    targets = [args.target or default_targets(b)[0] for b in bundles]
    result = compare(bundles, images, methods, metrics, args.out, targets, alpha=args.alpha, n_boot=args.n_boot,
                     figures=not args.no_figures, seed=args.seed, labels=args.labels, window=window,
                     n_samples=args.samples, steps=args.steps, target_region=args.target_region, options=options)
    print("\n".join(result["statement"]))
    print(f"tables in {args.out}/comparison.md, comparison.csv, cells.csv, comparison.json; each model's in {args.out}/<model>/")
    return _report_rows([r for e in result["evaluations"].values() for r in e["rows"]], f"{args.out}/<model>/evaluation.csv")


def _report_rows(rows, where: str) -> int:
    """Exit status of an evaluation: 1 when a row failed; a row whose metric is undefined on its
    image (deletion/insertion with equal clean and filled targets) is said, not a failure."""
    failed = sum(r["status"] not in ("ok", "undefined") for r in rows)
    undefined = sum(r["status"] == "undefined" for r in rows)
    if undefined:
        print(f"{undefined} undefined on their image (the reason is in {where}); left out of the rankings", file=sys.stderr)
    if failed:
        print(f"{failed} failed: their errors are in {where}", file=sys.stderr)
    return 1 if failed else 0


def _bundle_config(args) -> int:
    from esegeta_monai.monai.bundle import shipped_config

    if args.list:
        for path in sorted(shipped_config().parent.iterdir()):
            if path.suffix in (".json", ".yaml"):
                print(path)
        return 0
    print(shipped_config(args.name))
    return 0


def _targets(args) -> int:
    from esegeta_monai.core.targets import TARGET_KINDS

    for description in TARGET_KINDS.values():
        print(description)
    return 0


def _journal_of(out: str):
    from esegeta_monai.jobs.journal import JOURNAL_NAME, folder_journal

    journal = folder_journal(out)
    if not journal.path.is_file():
        raise EsegetaError(f"{Path(out) / JOURNAL_NAME}: no journal here; give the output folder of an `esegeta explain` run")
    return journal


def _report(args) -> int:
    from esegeta_monai.jobs.journal import JOURNAL_NAME, folder_journal
    from esegeta_monai.jobs.progress import summarise, summary_lines
    from esegeta_monai.report.html import write_report
    from esegeta_monai.report.render import render_folder

    evaluation_only = (Path(args.out) / "evaluation.csv").is_file() and not folder_journal(args.out).path.is_file()
    journal = None if evaluation_only else _journal_of(args.out)  # an `esegeta evaluate` folder has tables only
    records = render_folder(args.out, force=args.force) if args.figures and journal is not None else []
    index = write_report(args.out, title=args.title)
    if journal is not None and journal.path.name == JOURNAL_NAME:  # the handler's folder keeps its own manifest name
        journal.write_manifest()
    if records:
        for line in summary_lines(summarise(records))[2:]:
            print(line.strip())
    print(f"report: {index}")
    return 0 if all(r.ok for r in records) else 1


def _slicer(args) -> int:
    from esegeta_monai.report.slicer import slicer_command

    _journal_of(args.out)
    out = Path(args.out)
    scenes = sorted(out.glob("*/scene.mrml"))
    if args.image:
        scene = out / args.image / "scene.mrml"
        if not scene.is_file():
            names = ", ".join(p.parent.name for p in scenes) or "none"
            raise EsegetaError(f"{scene}: no scene for image {args.image!r} (scenes: {names}); "
                               f"`esegeta report {args.out}` makes the missing ones")
        scenes = [scene]
    if not scenes:
        raise EsegetaError(f"{out}: no scene.mrml in any image folder; `esegeta report {args.out}` makes them")
    for scene in scenes:
        if len(scenes) > 1:
            print(f"# {scene.parent.name}")
        print(slicer_command(scene.resolve(), slicer=args.slicer))
    return 0


def _gui(args) -> int:
    from esegeta_monai.apps.gui import serve

    return serve(args.roots, args.out, host=args.host, port=args.port, open_browser=args.browser,
                 max_upload_mb=args.max_upload_mb, max_parallel=args.max_parallel)


def main(argv: list[str] | None = None) -> int:
    from esegeta_monai.jobs.console import configure_console

    args = build_parser().parse_args(argv)
    configure_console(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        return {"explain": _explain, "methods": _methods, "targets": _targets, "layers": _layers, "manifest": _manifest,
                "bundle-config": _bundle_config, "evaluate": _evaluate, "report": _report, "slicer": _slicer, "gui": _gui}[args.command](args)
    except EsegetaError as error:
        print(f"esegeta: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esegeta: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
