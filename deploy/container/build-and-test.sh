#!/usr/bin/env bash
# Build the `cpu` image without a Docker engine or registry, run it, and answer a real Embed request.
#   1. debootstrap a Debian bookworm rootfs and import it into buildah as the BASE image
#   2. buildah bud --isolation chroot --storage-driver vfs --target cpu
#   3. buildah run the image (host network, loopback only) and call Embed + health from the host
# Everything (rootfs, image store) stays under build/container/ (git-ignored). Needs root, buildah,
# debootstrap, and network access to the Debian mirror and PyPI. Usage: deploy/container/build-and-test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$ROOT/build/container
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PORT=${TEST_PORT:-50151}
METRICS_PORT=${TEST_METRICS_PORT:-50195}
HTTP_PORT=${TEST_HTTP_PORT:-50180}
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
mkdir -p "$WORK"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started ))s] $*"; }

# 1. Base rootfs, once. minbase + python3 so the Dockerfile's apt-get step has little left to do.
if [[ ! -f $WORK/rootfs.tar ]]; then
    stamp "debootstrap bookworm"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$MIRROR" \
        > "$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar.tmp" . && mv "$WORK/rootfs.tar.tmp" "$WORK/rootfs.tar"
    rm -rf "$WORK/rootfs"
fi
if ! "${BUILDAH[@]}" inspect --type image localhost/millibatch-base:bookworm > /dev/null 2>&1; then
    stamp "import base image"
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$ctr" "$WORK/rootfs.tar" /
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    "${BUILDAH[@]}" commit --quiet "$ctr" localhost/millibatch-base:bookworm > /dev/null
    "${BUILDAH[@]}" rm "$ctr" > /dev/null
fi

# 2. The image. A local CPU torch wheel (e.g. from pip's find-links) spares the PyTorch index.
torch_index=()
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
    cp -n "$dir"/torch-2.13.0+cpu-cp311-*.whl deploy/container/wheels/ 2>/dev/null || true
done
if compgen -G "deploy/container/wheels/torch-*.whl" > /dev/null; then
    torch_index=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
fi
# Trust the same extra CAs as this machine (a TLS-inspecting proxy in front of PyPI, if any).
cp -n "${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"/*.crt deploy/container/ca/ 2>/dev/null || true
stamp "buildah bud --target cpu"
"${BUILDAH[@]}" bud --isolation chroot --layers "${torch_index[@]}" \
    --build-arg BASE=localhost/millibatch-base:bookworm \
    --target cpu -t localhost/millibatch:cpu -f Dockerfile . > "$WORK/bud.log" 2>&1 \
    || { tail -50 "$WORK/bud.log"; exit 1; }
stamp "image built: $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' localhost/millibatch:cpu)"
if "${BUILDAH[@]}" run --isolation chroot "$("${BUILDAH[@]}" from --quiet localhost/millibatch:cpu)" -- \
        /opt/millibatch/bin/python -c "import torch" 2>/dev/null; then
    echo "torch must not be in the runtime image" >&2; exit 1
fi

# 3. Run it as its own user, on the host's loopback, and talk to it.
ctr=$("${BUILDAH[@]}" from --quiet localhost/millibatch:cpu)
cleanup() {
    # The server's own exit status (SIGTERM) must not become the script's.
    if [[ -n ${server:-} ]]; then
        kill "$server" 2> /dev/null || true
        wait "$server" 2> /dev/null || true
    fi
    "${BUILDAH[@]}" rm -a > /dev/null 2>&1 || true
}
trap cleanup EXIT
stamp "run"
"${BUILDAH[@]}" run --isolation chroot --user 10001:10001 \
    --env MILLIBATCH_HOST=127.0.0.1 --env MILLIBATCH_PORT="$PORT" --env MILLIBATCH_METRICS_PORT="$METRICS_PORT" \
    --env MILLIBATCH_HTTP_PORT="$HTTP_PORT" \
    "$ctr" -- millibatch serve > "$WORK/serve.log" 2>&1 &
server=$!
PYTHONPATH=$ROOT "$PYTHON" - "$PORT" "$METRICS_PORT" "$HTTP_PORT" <<'PY'
import json, sys, time, urllib.request
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from millibatch.client import Client

port, metrics, http_port = sys.argv[1], sys.argv[2], sys.argv[3]
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
health = health_pb2_grpc.HealthStub(channel)
until = time.monotonic() + 120
while True:
    try:
        if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == 1:
            break
    except grpc.RpcError:
        pass
    if time.monotonic() > until:
        sys.exit("container did not become SERVING in 120 s")
    time.sleep(1)
with Client(f"127.0.0.1:{port}") as client:
    vectors = np.array(client.embed(["A man is playing a guitar.", "A man plays the guitar.", "Stocks fell."]))
assert vectors.shape == (3, 384), vectors.shape
similar, different = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
assert similar > 0.8 > different, (similar, different)
text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
from prometheus_client.parser import text_string_to_metric_families
ok = [s.value for f in text_string_to_metric_families(text) for s in f.samples
      if s.name == "millibatch_requests_total" and s.labels == {"model": "all-MiniLM-L6-v2", "rpc": "Embed", "code": "OK"}]
assert ok == [1.0], ok
request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/embeddings", method="POST",
                                 data=json.dumps({"input": "A man is playing a guitar."}).encode())
answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
assert np.allclose(answer["data"][0]["embedding"], vectors[0], atol=1e-6)
print(f"container answered Embed: dim 384, cos(similar)={similar:.3f} cos(different)={different:.3f}; "
      "and /v1/embeddings over HTTP the same")
PY
stamp "ok"
