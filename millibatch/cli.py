"""`millibatch serve` and `millibatch convert`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

#: What to install when the CLI runs from a client-only install (`pip install millibatch`).
SERVER_EXTRA_HINT = "millibatch serve and convert need the server extra: pip install 'millibatch[server]'"


def build_parser() -> argparse.ArgumentParser:
    from millibatch.settings import add_settings_arguments

    parser = argparse.ArgumentParser(prog="millibatch", description="gRPC inference server for transformer encoders")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve models over gRPC",
                                description="Serve models. Every flag is also MILLIBATCH_<NAME> and a config key.")
    serve.add_argument("--config", type=Path, default=None, help="TOML config file (also $MILLIBATCH_CONFIG)")
    add_settings_arguments(serve)

    convert = commands.add_parser("convert", help="turn a Hugging Face checkpoint into a model directory")
    convert.add_argument("source", help="checkpoint folder, or a packaged model name such as all-MiniLM-L6-v2")
    convert.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    convert.add_argument("--task", choices=["embed", "classify", "token-classify", "sparse-embed"], default="embed",
                         help="classify takes single texts or pairs; token-classify exports per-token logits (NER); "
                              "sparse-embed turns a masked-LM checkpoint into SPLADE vocabulary weights")
    convert.add_argument("--name", default="", help="serve the model under this name")
    convert.add_argument("--force", action="store_true", help="replace an existing output directory")
    convert.add_argument("--stsb", type=Path, default=None,
                         help="score embeddings on this STS-B test TSV and record it in the manifest")
    convert.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                         help="int8 on cpu: dynamic quantization; int8 on cuda/tensorrt: calibrated QDQ; "
                              "fp16 keeps LayerNorm/softmax/pooling in fp32")
    convert.add_argument("--engine", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                         help="tensorrt also builds a plan (needs the tensorrt package and a GPU)")
    convert.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device the graph is tuned for")
    convert.add_argument("--no-fuse", dest="fuse", action="store_false",
                         help="skip onnxruntime's attention/LayerNorm/GELU fusion")
    convert.add_argument("--seq-len", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), default=None,
                         help="TensorRT profile token range (one profile per doubling length bucket)")
    convert.add_argument("--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), default=None,
                         help="TensorRT profile batch range")
    convert.add_argument("--instances", type=int, default=1,
                         help="TensorRT: execution contexts to build profiles for (= serve --instances)")
    convert.add_argument("--int8-fp32-nodes", nargs="*", default=None, metavar="NAME",
                         help="node-name substrings kept fp32 in int8 graphs (default: first FFN output MatMul)")
    convert.add_argument("--benchmark", action="store_true",
                         help="time the variant beside the plain fp32 graph and PyTorch (1x16, 1x128, 32x128; "
                              "about half a minute for MiniLM) and record it in the manifest")
    convert.add_argument("--benchmark-threads", type=int, default=0, metavar="N",
                         help="threads per session for --benchmark (default: what one server instance gets)")
    return parser


def run_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from millibatch.settings import load_settings

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        settings = load_settings(overrides, args.config)
    except (ValidationError, FileNotFoundError) as error:
        print(f"millibatch serve: bad settings: {error}", file=sys.stderr)
        return 2
    from millibatch.service.supervisor import run_server, supervise

    if settings.workers > 1:
        from millibatch.service.logs import configure_logging

        configure_logging(settings.log_level, settings.log_format)
        return supervise(settings)
    return run_server(settings)


def run_convert(args: argparse.Namespace) -> int:
    from millibatch.engines.convert import quick_bench
    from millibatch.engines.convert.convert import ConversionError, ConvertOptions, convert, validation_table

    # A stopped job (kill, Kubernetes, CI timeout) unwinds like Ctrl-C, so the staging folder is
    # removed rather than left half-written beside the output.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        manifest = convert(ConvertOptions(
            source=args.source, output=args.output, task=args.task, name=args.name, force=args.force,
            stsb=args.stsb, precision=args.precision, engine=args.engine, device=args.device, fuse=args.fuse,
            seq_len=tuple(args.seq_len) if args.seq_len else None,
            batch=tuple(args.batch) if args.batch else None,
            instances=args.instances,
            int8_fp32_nodes=tuple(args.int8_fp32_nodes) if args.int8_fp32_nodes is not None else None,
            benchmark=args.benchmark, benchmark_threads=args.benchmark_threads,
        ))
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"convert failed: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # convert's staging folder is already gone (its finally ran); the output was never created.
        print(f"convert interrupted: {args.output} was not written", file=sys.stderr)
        return 130
    # Tables for people on stderr; stdout stays one JSON document for scripts.
    print(validation_table(manifest), file=sys.stderr)
    if manifest.benchmark:
        print("\n" + quick_bench.table(manifest.benchmark), file=sys.stderr)
    print(json.dumps({"name": manifest.name, "task": manifest.task, "precision": manifest.precision,
                      "optimizations": manifest.optimizations, "profiles": manifest.profiles,
                      "validation": manifest.validation, "benchmark": manifest.benchmark}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ImportError as error:  # a client-only install: no pydantic, onnxruntime, tokenizers ...
        print(f"{SERVER_EXTRA_HINT} ({error})", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    return run_convert(args)


if __name__ == "__main__":
    sys.exit(main())
