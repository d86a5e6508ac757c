"""The ``drl`` command line. It only parses arguments and calls library functions.

Heavy modules (torch, timm, sklearn) are imported inside each command so that ``drl --help`` is
instant and a typo in one command's dependencies cannot break the others.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drlcore.errors import DrlError

__all__ = ["main", "build_parser"]


def _add_backbone_options(p: argparse.ArgumentParser, default: str | None = "effnet-lite0") -> None:
    p.add_argument("--backbone", default=default,
                   help="feature extractor: effnet-lite0 (default, works offline), dino-vitb16 "
                        "(the paper's), dino-vits16. `drl backbones` lists them.")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="backbone weights file (.safetensors/.pth), e.g. DINO weights on an "
                        "offline machine")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache folder for features, models, morphology and maps (default: "
                        "$DRL_CACHE_DIR, else your user cache folder)")


def _add_cluster_options(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--cluster", choices=["local"], default=None,
                       help=f"compute the backbone features on a Dask cluster started for this "
                            f"command on this machine (one worker per core, or per GPU); {what}. "
                            f"Same features and cache as without it. Needs the extra: "
                            f"pip install -e \".[dask]\"")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="like --cluster, on a running Dask cluster (e.g. dask-jobqueue on "
                            "SLURM): its scheduler address, tcp://HOST:PORT. Workers need drlcore "
                            "installed and the images and --out on a shared file system")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--cluster local: number of worker processes (default: one per core)")


def _add_force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds other files and is not a drl run "
                        "folder (they may be overwritten)")


def _add_ingest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preprocess", choices=["auto", "pad", "canvas", "stretch"], default=None,
                   help="how images become the backbone's square input: 'pad' each to a square "
                        "(absolute size lost), 'canvas' (all on one canvas sized from the 95th "
                        "percentile of crop sizes, so size stays visible; larger crops shrink), "
                        "'stretch' (aspect lost), 'auto' (default: canvas when crop sizes vary "
                        "widely, p90/p10 of the longest side >= 2, else pad)")
    p.add_argument("--no-pad", action="store_true",
                   help="same as --preprocess stretch (kept for old scripts)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="arithmetic of the backbone forward pass (features are stored float32 "
                        "either way): 'bf16' autocast, 'fp32', or 'auto' (default: bf16 where "
                        "the backbone passed the downstream agreement check and this machine "
                        "runs bf16 natively, else fp32; the choice and why go in the manifest)")
    p.add_argument("--engine", choices=["auto", "torch", "onnx", "openvino"], default="auto",
                   help="what runs the forward pass: 'torch', 'onnx' (ONNX Runtime, fp32), "
                        "'openvino' (fp32 or bf16), or 'auto' (default: on a CPU OpenVINO, then "
                        "ONNX Runtime, then torch, the first whose exported graph matches torch "
                        "fp32 on a probe batch; torch on a GPU). Recorded in the manifest and "
                        "the feature-cache key")
    p.add_argument("--channels", default=None, metavar="SPEC",
                   help="display colours of fluorescence channels (2-8 channel TIFFs or "
                        "per-channel files), which make the composite the network sees: "
                        "'DNA=blue,actin=green,...' by name, '0=blue,1=green' by index, or "
                        "'blue,green,...' in order; 'off' leaves a channel out of the composite "
                        "(default: green/magenta for 2, else blue, green, magenta, grey, cyan...). "
                        "Bare names name the channels in order: 'BrightField,DAPI,actin'; a DNA "
                        "stain (DAPI, Hoechst, DRAQ5, DNA, PI, nuclear...) is recognised by its "
                        "name and gives the nucleus and DNA-content measurements")
    p.add_argument("--channel-pattern", default=None, metavar="REGEX",
                   help="rule grouping one-file-per-channel images: a regex on the file stem with "
                        "named groups 'object' and 'channel' (default "
                        "'^(?P<object>.+)_(?P<channel>[^_]+)$'); 'none' keeps every file separate")


def _add_mask_channel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mask-channel", default=None, metavar="NAME|INDEX",
                   help="multi-channel images: the channel the object mask is cut from, by name "
                        "or 0-based index (default: the bright-field channel where one is named "
                        "so, else the non-DNA channel that best separates an object); the nucleus "
                        "comes from the DNA channel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drl",
        description="Disentangled representations of microscopy images: see which axes a "
                    "network learned (scale, colour, texture...) in your own images.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="one-shot pipeline: features -> transfer -> encode -> analyze")
    p.add_argument("data", help="image folder (one subfolder per class, flat, or with a CSV) or .zip")
    p.add_argument("--out", required=True, help="run folder to write (resumes if it exists)")
    p.add_argument("--source-model", default=None, metavar="MODEL_DIR",
                   help="source model to transfer from: a model folder, or 'dsprites' / 'cells' "
                        "for a shipped one (default: 'cells' where shipped for the backbone, else 'dsprites'; chosen by benchmarks/axis_quality.py)")
    p.add_argument("--known-classes", nargs="*", default=None, metavar="CLASS",
                   help="classes treated as known for open-set anomaly scores (default: all)")
    _add_transfer_options(p)
    _add_backbone_options(p)
    _add_ingest_options(p)
    _add_mask_channel_option(p)
    _add_force_option(p)
    _add_cluster_options(p, "transfer, encoding and analysis (small models) run here")

    p = sub.add_parser("features", help="embed a folder of images with a pretrained backbone")
    p.add_argument("data", help="image folder or .zip")
    p.add_argument("--out", required=True, help="output folder")
    _add_backbone_options(p)
    _add_ingest_options(p)
    _add_force_option(p)
    _add_cluster_options(p, "images are read, decoded and embedded on the workers")

    p = sub.add_parser("train-source",
                       help="train the disentangling VAE on a rendered source (weakly supervised)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--source", choices=["dsprites", "cells"], default=None,
                   help="rendered source: Texture-dSprites (default) or synthetic cells")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--k", default=None, help="factors changed per pair: an integer, or 'rand'")
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--method", choices=["ada-gvae", "beta-vae"], default=None)
    p.add_argument("--compare-baseline", action="store_true",
                   help="also train a beta-VAE on the same features and budget; record both")
    _add_backbone_options(p)

    p = sub.add_parser("transfer", help="fine-tune a source model on a dataset (unsupervised beta-VAE)")
    p.add_argument("model_dir")
    p.add_argument("data", help="image folder/.zip, or a folder written by `drl features`")
    p.add_argument("--out", required=True, help="model folder to write")
    _add_transfer_options(p)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    _add_backbone_options(p, default=None)
    _add_ingest_options(p)

    p = sub.add_parser("encode", help="encode a dataset with a model: objects.parquet")
    p.add_argument("model_dir")
    p.add_argument("data", help="image folder/.zip, or a folder written by `drl features`")
    p.add_argument("--out", required=True, help="run folder to write")
    _add_force_option(p)
    _add_backbone_options(p, default=None)
    _add_ingest_options(p)
    _add_cluster_options(p, "for image input; the encoding itself (a small MLP) runs here")

    p = sub.add_parser("analyze", help="morphology, correlations, classification, anomalies, maps")
    p.add_argument("run_dir")
    p.add_argument("--known-classes", nargs="*", default=None, metavar="CLASS")
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP map (PCA only)")
    p.add_argument("--cache-dir", default=None, metavar="DIR")
    _add_mask_channel_option(p)

    p = sub.add_parser("explore", help="open the explorer app (default: the built-in demo)")
    p.add_argument("runs", nargs="*", help="run folders to open")
    p.add_argument("--runs-dir", default=None,
                   help="where runs added from the app are kept (default: your user data folder)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1: this computer only). Any other "
                        "address, e.g. 0.0.0.0, exposes the app and then requires a token")
    p.add_argument("--token", default=None,
                   help="the token browsers must show (default with --host: a new random one)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token even on an exposed address (anyone who can reach it "
                        "can use it)")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a folder whose subfolders 'Add data' may read on the server (repeatable; "
                        "default: none, so only uploads)")
    p.add_argument("--max-upload-mb", type=int, default=4096, metavar="MB",
                   help="largest zip a browser may upload (default 4096)")
    p.add_argument("--min-free-mb", type=int, default=1024, metavar="MB",
                   help="free space the runs folder must have before a new run starts (default 1024)")

    p = sub.add_parser("demo", help="build (or find) the built-in Texture-dSprites demo run")
    p.add_argument("--runs-dir", default=None)

    p = sub.add_parser("export", help="a run as AnnData (.h5ad, for scanpy), CSV or Parquet")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="file to write; its extension picks the format unless --format is given")
    p.add_argument("--format", choices=("h5ad", "csv", "parquet"), default=None)
    p.add_argument("--with-features", action="store_true",
                   help="h5ad: also store the raw backbone features (obsm['X_backbone'])")

    p = sub.add_parser("check", help="verify every file of a run against its manifest "
                                     "(missing, damaged, foreign); exit 1 when any is missing "
                                     "or damaged")
    p.add_argument("run_dir")
    p.add_argument("--quick", action="store_true",
                   help="sizes only, no checksums (a stat per file instead of reading them)")

    p = sub.add_parser("figures", help="the slide set of a run as stamped PNG/SVG files")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--size", default="13.33x7.5", metavar="WxH",
                   help="figure size in inches (default 13.33x7.5: a 16:9 slide)")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.add_argument("--format", nargs="+", choices=("png", "svg"), default=["png", "svg"])
    p.add_argument("--label", default=None, metavar="CLASS",
                   help="axis montages of this class only")
    p.add_argument("--rows", type=int, default=3, help="montage rows per axis (default 3)")
    p.add_argument("--steps", type=int, default=9, help="montage steps per axis (default 9)")

    sub.add_parser("backbones", help="list the available backbones")
    return parser


def _reporter():
    from drlcore.progress import TqdmReporter

    return TqdmReporter()


def _feature_config(args, **overrides):
    from drlcore.runs.options import FEATURE_OPTIONS, feature_config

    options = {name: getattr(args, name, None) for name in FEATURE_OPTIONS}
    options["no_pad"] = bool(options["no_pad"])
    return feature_config(**{**options, **overrides})


def _cluster_config(args):
    from drlcore.runs.options import cluster_config

    return cluster_config(getattr(args, "cluster", None), getattr(args, "scheduler", None),
                          getattr(args, "workers", None))


def _prepare_out(args, data: str | None) -> Path:
    from drlcore.runs.options import prepare_run_folder

    return prepare_run_folder(args.out, data, force=getattr(args, "force", False),
                              cache_dir=args.cache_dir)


def _features_for(args, data: str, out_dir: Path, model_backbone: str | None = None,
                  cluster=None) -> Path:
    """Accept either an image source or a folder `drl features` already wrote."""
    from drlcore.data import rundir

    data_path = Path(data)
    if (data_path / rundir.FEATURES).is_file() and (data_path / rundir.MANIFEST).is_file():
        return data_path
    from drlcore.embedding.features import extract_features

    config = _feature_config(args, **({"backbone": model_backbone}
                                      if args.backbone is None and model_backbone else {}))
    extract_features(data, out_dir, config, reporter=_reporter(), cluster=cluster)
    return out_dir


def _cmd_features(args) -> None:
    from drlcore.data import rundir
    from drlcore.embedding.features import extract_features

    cluster = _cluster_config(args)
    out = _prepare_out(args, args.data)
    result = extract_features(args.data, out, _feature_config(args), reporter=_reporter(),
                              cluster=cluster)
    m = result.manifest
    engine = (m.get("engine") or {}).get("used", "torch")
    print(f"backbone: {m['backbone']} (weights {m['weights_hash'][:12]}, {m['dtype']}, "
          f"engine {engine})")
    print(f"{m['counts']['accepted']} images -> {out / rundir.FEATURES} "
          f"{tuple(result.features.shape)}; {m['counts']['skipped']} skipped "
          f"(see {out / rundir.SKIPPED})")


def _cmd_train_source(args) -> None:
    from drlcore.disentangle.source import SourceTrainConfig, train_source_cli

    overrides = {k: v for k, v in dict(seed=args.seed, steps=args.steps, beta=args.beta,
                                       latent_dim=args.latent_dim, method=args.method,
                                       source=args.source).items()
                 if v is not None}
    if args.k is not None:
        overrides["k"] = None if args.k == "rand" else int(args.k)
    config = SourceTrainConfig(**overrides)
    train_source_cli(Path(args.out), backbone_name=args.backbone, weights=args.weights,
                     config=config, cache_dir=args.cache_dir,
                     compare_baseline=args.compare_baseline, reporter=_reporter())


def _add_transfer_options(p) -> None:
    p.add_argument("--epochs", type=int, default=None,
                   help="most transfer epochs (default 200; early stopping on the validation "
                        "loss decides, see metrics.json)")
    p.add_argument("--latent-dim", type=int, default=None,
                   help="latent axes after transfer (drl run default: the anchored axes plus a "
                        "number of free axes chosen from the data, at most 32; drl transfer "
                        "default: the source model's, 10); another size than the source's gives "
                        "the model a new head and no source names")
    p.add_argument("--anchor", default=None, metavar="FEATURES",
                   help="tie morphology features to the first axes, e.g. area,eccentricity,hue "
                        "(weak supervision; r is reported on held-out images). drl run default: "
                        "'auto', one axis per measured family the raw features can read (size, "
                        "shape, intensity per channel, colour...); 'none' turns anchoring off")


def _cmd_transfer(args) -> None:
    from drlcore.disentangle.artifacts import read_model_config
    from drlcore.analysis.analyze import measure_anchor_values
    from drlcore.disentangle.transfer import TransferConfig, anchor_names, transfer

    model_cfg = read_model_config(args.model_dir)
    out = Path(args.out)
    features_dir = _features_for(args, args.data, out / "features",
                                 model_backbone=model_cfg["backbone"]["name"])
    anchors = (anchor_names(args.anchor)
               if args.anchor and args.anchor.strip().lower() not in ("none", "auto") else ())
    overrides = {k: v for k, v in dict(epochs=args.epochs, lr=args.lr, beta=args.beta,
                                       seed=args.seed, latent_dim=args.latent_dim).items()
                 if v is not None}
    config = TransferConfig(**overrides, anchors=anchors)
    values = (measure_anchor_values(features_dir, anchors, args.cache_dir,
                                    _reporter()) if anchors else None)
    transfer(args.model_dir, features_dir, out, config, reporter=_reporter(),
             anchor_values=values)
    print(f"transferred model -> {out}")


def _cmd_encode(args) -> None:
    from drlcore.disentangle.artifacts import read_model_config
    from drlcore.disentangle.encode import encode_run

    cluster = _cluster_config(args)
    model_cfg = read_model_config(args.model_dir)
    out = _prepare_out(args, args.data)
    features_dir = _features_for(args, args.data, out,
                                 model_backbone=model_cfg["backbone"]["name"], cluster=cluster)
    path = encode_run(args.model_dir, features_dir, out, reporter=_reporter())
    print(f"encoded -> {path}")


def _cmd_analyze(args) -> None:
    from drlcore.analysis.analyze import AnalyzeConfig, analyze_run

    config = AnalyzeConfig(known_classes=tuple(args.known_classes) if args.known_classes else None,
                           umap=not args.no_umap, cache_dir=args.cache_dir,
                           mask_channel=args.mask_channel)
    summary = analyze_run(Path(args.run_dir), config, reporter=_reporter())
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    for line in summary.get("headline", []):
        print(line)
    for note in summary.get("notes", []):
        print(f"note: {note}")


def _cmd_run(args) -> None:
    from drlcore.runs.options import pipeline_config
    from drlcore.runs.pipeline import run_pipeline

    cluster = _cluster_config(args)
    config = pipeline_config(_feature_config(args), source_model=args.source_model,
                             known_classes=args.known_classes, epochs=args.epochs,
                             latent_dim=args.latent_dim, anchor=args.anchor,
                             mask_channel=args.mask_channel)
    out = run_pipeline(args.data, _prepare_out(args, args.data), config, reporter=_reporter(),
                       cluster=cluster)
    from drlcore.data import rundir

    _print_summary(rundir.read_analysis(out).get("summary", {}))
    print(f"run written to {out}  (open it with: drl explore {out})")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _explore_plan(args) -> tuple[list[str], str, dict]:
    """The Streamlit command line, the URL to print and the environment for ``drl explore``."""
    import os
    import secrets

    app = Path(__file__).resolve().parents[1] / "explorer" / "app.py"
    if not app.is_file():
        raise DrlError(f"the explorer app was not found at {app}")
    if args.token is not None and args.no_token:
        raise DrlError("--token and --no-token contradict each other; give one")
    if args.token is not None and not args.token.strip():
        raise DrlError("--token must not be empty (use --no-token to serve without one)")
    for name in ("max_upload_mb", "min_free_mb"):
        if getattr(args, name) < (1 if name == "max_upload_mb" else 0):
            raise DrlError(f"--{name.replace('_', '-')} must be a positive number of MB")
    roots = []
    for root in args.data_root:
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise DrlError(f"--data-root {root}: no such folder")
        roots.append(str(path))
    token = args.token
    if token is None and not args.no_token and not _is_loopback(args.host):
        token = secrets.token_urlsafe(24)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host,
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           # Streamlit's first-run email prompt would block the command on a fresh desktop.
           "--server.showEmailPrompt", "false",
           "--server.maxUploadSize", str(args.max_upload_mb),
           # Users run the app, they do not edit it: watching its sources walks every imported
           # module (torch's thousands) after each script run and polls files, about as much
           # server CPU as the pages themselves (py-spy, one session).
           "--server.fileWatcherType", "none", "--server.runOnSave", "false",
           # A full gc.collect(2) after every script run walks torch's and pandas' whole heap:
           # 18% of the server's CPU under 20 sessions (py-spy). Python's own collector runs anyway.
           "--runner.postScriptGC", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--", "--min-free-mb", str(args.min_free_mb), "--max-upload-mb", str(args.max_upload_mb)]
    for root in roots:
        cmd += ["--data-root", root]
    if args.runs_dir:
        cmd += ["--runs-dir", args.runs_dir]
    for run in args.runs:
        cmd += ["--run", str(Path(run).resolve())]
    env = dict(os.environ)
    env.pop("DRL_EXPLORE_TOKEN", None)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    url = f"http://{shown_host}:{args.port}/"
    if token:
        # In the environment, not on the command line, where any account could read it with ps.
        env["DRL_EXPLORE_TOKEN"] = token
        url += f"?token={token}"
    return cmd, url, env


def _cmd_explore(args) -> None:
    import os

    cmd, url, env = _explore_plan(args)
    if not _is_loopback(args.host):
        note = ("anyone who can reach it can use it" if args.no_token
                else "share the address with its token only with people who may use it")
        print(f"listening on {args.host}: {note}")
    print(f"explorer: {url}  (Ctrl+C to stop)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become Streamlit (no parent left to forward signals): SIGTERM or Ctrl+C stops the server itself.
    os.execve(sys.executable, cmd, env)


def _cmd_demo(args) -> None:
    from drlcore.runs.demo import build_demo
    from drlcore.data.rundir import default_runs_dir

    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    path = build_demo(runs_dir, reporter=_reporter())
    print(f"demo run: {path}")


def _cmd_export(args) -> None:
    from drlcore.runs.export import export_run

    out = export_run(args.run_dir, args.out, args.format, with_features=args.with_features)
    print(f"exported {args.run_dir} -> {out}")


def _cmd_check(args) -> int:
    from drlcore.data import rundir

    run = Path(args.run_dir)
    if not run.is_dir() or not (run / rundir.MANIFEST).is_file():
        raise DrlError(f"{run} is not a run folder (it has no {rundir.MANIFEST})")
    report = rundir.check_run(run, full=not args.quick)
    for line in report.problems():
        print(line)
    for name in report.foreign:
        print(f"{run / name} is foreign (no stage recorded it; left alone)")
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_figures(args) -> None:
    from drlcore.runs.slides import SlideConfig, write_slide_set

    try:
        width, height = (float(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise DrlError(f"--size must look like 13.33x7.5 (inches), not {args.size!r}") from None
    config = SlideConfig(width_in=width, height_in=height, dpi=args.dpi,
                         formats=tuple(args.format), label=args.label, n_rows=args.rows,
                         n_steps=args.steps)
    written = write_slide_set(args.run_dir, args.out, config)
    print(f"{len(written)} files ({width:g} x {height:g} in, {args.dpi} dpi) -> {args.out}")


def _cmd_backbones(args) -> None:
    from drlcore.embedding.backbones import BACKBONES, DEFAULT_BACKBONE

    for name, spec in BACKBONES.items():
        mark = " (default)" if name == DEFAULT_BACKBONE else ""
        print(f"{name:14s} {spec.feature_dim:5d}-d  {spec.description}{mark}")


COMMANDS = {
    "run": _cmd_run, "features": _cmd_features, "train-source": _cmd_train_source,
    "transfer": _cmd_transfer, "encode": _cmd_encode, "analyze": _cmd_analyze,
    "explore": _cmd_explore, "demo": _cmd_demo, "backbones": _cmd_backbones,
    "export": _cmd_export, "figures": _cmd_figures, "check": _cmd_check,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from drlcore import __version__

        print(f"drl {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = COMMANDS[args.command](args)  # None, or an exit code (drl check)
    except DrlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # Disk full, permission denied, a path that is a file: the system's words, one line.
        what = err.strerror or str(err) or type(err).__name__
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {what}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: what was finished is kept; run the same command again to resume.",
              file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
