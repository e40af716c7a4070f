"""The peers: how to start each server and how the load generator talks to it (bench.processes starts them)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from bench.processes import ROOT, Launch, free_port, serve_launch
from millibatch.engines.model_dir import Manifest

BASELINE = "fastapi-torch"
TRITON_PEERS = ("triton-ids", "triton-text")
ALL_PEERS = (BASELINE, "fastapi-onnx", *TRITON_PEERS, "millibatch")
#: infinity-emb (bench.goodput only): its own server, on the checkpoint the model directory was converted from,
#: with its default PyTorch engine (`infinity`) or its ONNX Runtime engine (`infinity-onnx`).
INFINITY = "infinity"
INFINITY_ONNX = "infinity-onnx"
INFINITY_PEERS = (INFINITY, INFINITY_ONNX)
#: Where the checkpoint infinity's ONNX engine loads is made (bench.peers.infinity_onnx), one per model.
INFINITY_ONNX_DIR = ROOT / "build" / "infinity-onnx"
#: A sitecustomize that gives ONNX Runtime sessions without a thread count one thread per core of the process's
#: CPU set: by default ONNX Runtime pins a thread to every core of the machine, out of the server's cores.
ORT_THREADS_SHIM = Path(__file__).resolve().parent / "ort_threads"
#: The model name the infinity peer serves under, which the load generator's requests name.
INFINITY_MODEL = "minilm"


@dataclass(frozen=True)
class Door:
    """One of millibatch's other doors: the load generator's protocol for it, the failure kind its client
    reports for a call refused under overload, and the rpc label the server counts its calls under
    (millibatch_requests_total)."""

    protocol: str
    refused: str
    rpc: str


#: millibatch called through its other doors, each by the client its users would bring: KServe V2 through
#: NVIDIA's tritonclient (text tokenized on the server), and the OpenAI-compatible HTTP door through a plain
#: HTTP client that sends X-Request-Timeout (`http`) or the official OpenAI SDKs as their users call them
#: (`openai`: Python's, `openai-node`: Node's; each with its timeout and its two retries).
DOORS = {"v2": Door("triton-text", "RESOURCE_EXHAUSTED", "v2.ModelInfer"),
         "http": Door("openai", "http-429", "http.embeddings"),
         "openai": Door("openai-client", "http-429", "http.embeddings"),
         "openai-node": Door("openai-node-client", "http-429", "http.embeddings")}
#: The peers that call millibatch through them.
DOOR_PEERS = {f"millibatch-{name}": door.protocol for name, door in DOORS.items()}
#: The rpc label of the calls each of millibatch's protocols makes (Embed's, and each door's).
SERVED_RPC = {"millibatch": "Embed", **{door.protocol: door.rpc for door in DOORS.values()}}
#: millibatch's Embed called by clients that do more than send: the load generator's extra flags for each.
#: `throttled` refuses calls in the client as the server's refusals mount (millibatch.throttle, with the SRE
#: book's multiplier of 2).
CLIENT_PEERS = {"millibatch-throttled": ["--throttle", "2"]}


@dataclass
class PeerContext:
    """What every launch needs: model directory, server threads, the Triton environment's Python, and the
    infinity-emb environment's `infinity_emb` command."""

    model_dir: Path
    threads: int
    triton_python: str | None
    triton_libdir: str | None
    infinity: str | None = None


def launch(name: str, model_dir: Path, ctx: PeerContext, extra_args: list[str] | None = None,
           repo: Path = ROOT) -> Launch:
    """The launch of peer `name`; a `millibatch*` name serves `model_dir` (fp32, int8, ... any model dir),
    from the checkout `repo` (another build). `extra_args` go on the server's command line, those after a
    `--` (millibatch peers) on the load generator's."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    threads = str(ctx.threads)
    if name in (BASELINE, "fastapi-onnx"):
        module = "bench.peers.fastapi_torch" if name == BASELINE else "bench.peers.fastapi_onnx"
        command = [sys.executable, "-m", module, "--model-dir", str(model_dir), "--port", str(port),
                   "--threads", threads]
        return Launch(name, command, "http", target)
    if name in TRITON_PEERS:
        if ctx.triton_python is None:
            raise RuntimeError("no Triton environment (build/bench-triton-venv); `make bench` creates it")
        mode = name.removeprefix("triton-")
        metrics_port = free_port()
        command = [ctx.triton_python, "-m", "bench.peers.pytriton_onnx", "--model-dir", str(model_dir),
                   "--mode", mode, "--grpc-port", str(port), "--http-port", str(free_port()),
                   "--metrics-port", str(metrics_port), "--threads", threads, *(extra_args or [])]
        # tritonserver links libpython; pytriton finds it only through LD_LIBRARY_PATH.
        env = {"LD_LIBRARY_PATH": ctx.triton_libdir or ""}
        flags = ["--model", "minilm"]
        if mode == "ids":
            flags += ["--tokenizer", str(model_dir / "tokenizer.json")]
        return Launch(name, command, f"triton-{mode}", target, python=ctx.triton_python, env=env, loadgen_flags=flags,
                      metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")
    if name in INFINITY_PEERS:
        return infinity_launch(name, model_dir, ctx, port, extra_args or [])
    if name.startswith("millibatch"):
        server_args, client_args = split_client_flags(extra_args or [])
        flags = ["--threads-per-instance", threads, "--log-level", "warning", *server_args]
        base = name.partition("+")[0]  # millibatch-v2+LABEL, millibatch-throttled+LABEL: variants run as their peer
        if base in DOOR_PEERS:
            spec = replace(door_launch(base, model_dir, flags, repo), name=name)
        else:
            spec = serve_launch(model_dir, flags, name=name, port=port, metrics=True, repo=repo)
            spec = replace(spec, loadgen_flags=[*spec.loadgen_flags, *CLIENT_PEERS.get(base, [])])
        return replace(spec, loadgen_flags=[*spec.loadgen_flags, *client_args])  # after the peer's own: they win
    raise ValueError(f"unknown peer {name!r}; choose from {ALL_PEERS} or millibatch-<label>")


def infinity_launch(name: str, model_dir: Path, ctx: PeerContext, port: int, extra_args: list[str]) -> Launch:
    """infinity-emb's OpenAI-compatible server (`infinity_emb v2`) as its users start it on a CPU, on the
    checkpoint `model_dir` was converted from, with its batch size and thread defaults, its result cache off
    (repeated texts would be answered from it), no telemetry or hub. `infinity` runs its default engine
    (PyTorch through sentence-transformers); `infinity-onnx` its ONNX Runtime engine (`--engine optimum`) on
    the same checkpoint exported to ONNX in fp32. It knows no deadline: the load generator's HTTP client gives
    up at it, as a caller would."""
    if ctx.infinity is None:
        raise RuntimeError("no infinity-emb environment (build/bench-infinity-venv); "
                           "`make build/bench-infinity-venv/.stamp` creates it")
    manifest = Manifest.load(model_dir)
    model_id, cwd = str(manifest.source), ROOT
    env = {"DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    engine = "torch"
    if name == INFINITY_ONNX:
        from bench.peers.infinity_onnx import hidden_state_checkpoint

        folder = INFINITY_ONNX_DIR / f"{manifest.name}-{manifest.source_hash.removeprefix('sha256:')[:12]}"
        # infinity 0.0.78 names a local checkpoint's ONNX file by the path it globbed, which optimum 2 then
        # joins to the checkpoint's path again: only a checkpoint named "." from inside it loads.
        model_id, cwd, engine = ".", hidden_state_checkpoint(Path(manifest.source), folder), "optimum"
        # This engine pools by the CLS token unless told otherwise (its PyTorch engine reads the checkpoint's
        # pooling): told the model's own, as its users must be.
        extra_args = ["--pooling-method", manifest.pooling, *extra_args]
        # Its optimizer's cache (Hugging Face's hub cache) beside the checkpoint, not in it: infinity looks
        # for ONNX files everywhere under the checkpoint.
        env["HF_HOME"] = str(folder.parent / f"{folder.name}-hf-home")
        env["PYTHONPATH"] = str(ORT_THREADS_SHIM)  # intra-op threads = server cores, as every peer gets
    command = [ctx.infinity, "v2", "--model-id", model_id, "--served-model-name", INFINITY_MODEL,
               "--engine", engine, "--device", "cpu", "--no-vector-disk-cache", "--host", "127.0.0.1",
               "--port", str(port), "--url-prefix", "/v1", "--log-level", "warning", *extra_args]
    return Launch(name, command, "openai", f"127.0.0.1:{port}", env=env, loadgen_flags=["--model", INFINITY_MODEL],
                  cwd=cwd)


def split_client_flags(flags: list[str]) -> tuple[list[str], list[str]]:
    """A millibatch peer's extra flags: the server's, then after `--` the load generator's ('-- --throttle 1.5')."""
    if "--" not in flags:
        return flags, []
    at = flags.index("--")
    return flags[:at], flags[at + 1:]


def door_launch(name: str, model_dir: Path, flags: list[str], repo: Path = ROOT) -> Launch:
    """millibatch serving `model_dir` from the checkout `repo`, called through the door of DOOR_PEERS[name]."""
    protocol = DOOR_PEERS[name]
    http_port = free_port() if protocol.startswith("openai") else 0  # the HTTP door, off unless it is called
    spec = serve_launch(model_dir, flags, name=name, metrics=True, repo=repo,
                        env={"MILLIBATCH_HTTP_PORT": str(http_port)} if http_port else None)
    return replace(spec, protocol=protocol, target=f"127.0.0.1:{http_port}" if http_port else spec.target,
                   loadgen_flags=["--model", Manifest.load(model_dir).name])
