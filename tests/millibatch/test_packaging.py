"""The wheel as a user installs it: one top-level package, a light client, and a server that a user's own
`service/` or `engines/` folder cannot shadow."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The only distributions a client-only install asks for.
CLIENT_DISTRIBUTIONS = {"grpcio", "protobuf"}


#: What a wheel is built from (the rest of the checkout is not packaged).
PACKAGED = ("pyproject.toml", "README.md", "millibatch", "service", "batching", "engines")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools leaves a build/ folder behind, which must not go stale in the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, timeout=300)
    return next(out.glob("millibatch-*.whl"))


def fresh_venv(folder: Path, wheel: Path) -> Path:
    """A new virtual environment with only the wheel in it (no dependencies); returns its python."""
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)
    return python


def test_the_wheel_holds_one_top_level_package_and_a_light_core(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    roots = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert roots == {"millibatch"}
    for package in ("service", "service/http", "batching", "engines", "engines/convert", "v1", "kserve"):
        assert f"millibatch/{package}/__init__.py" in names, package
    # Requirements without an extra marker are what a plain install pulls in: the client's two.
    core = {r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip()
            for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    assert core == CLIENT_DISTRIBUTIONS
    assert {"client", "server", "convert"} <= set(metadata.get_all("Provides-Extra"))


def requirement_closure(names: set[str]) -> set[str]:
    """`names` and everything they require in turn (extras left out), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        for requirement in importlib.metadata.requires(name) or []:
            if "extra ==" not in requirement:
                todo.append(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0])
    return seen


def only_client_dependencies(folder: Path) -> Path:
    """A folder holding just grpcio, protobuf and what they themselves need, linked from the test
    environment's site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for name in requirement_closure(CLIENT_DISTRIBUTIONS):
        files = importlib.metadata.distribution(name).files or []
        for root in {f.parts[0] for f in files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")}:
            if not (folder / root).exists() and (site / root).exists():
                (folder / root).symlink_to(site / root)
    return folder


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A user's project folder with its own `service`, `batching` and `engines` packages, which must not
    be imported by millibatch."""
    folder = tmp_path / "app"
    for name in ("service", "batching", "engines"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} was imported')\n")
    return folder


@pytest.fixture
def server_in_user_folder(wheel: Path, tiny_embed_dir: Path, tmp_path: Path,
                          user_folder: Path) -> Iterator[int]:
    """`python -m millibatch serve` from the fresh venv, run inside `user_folder`; yields its port."""
    python = fresh_venv(tmp_path / "venv", wheel)
    # The server's dependencies come from this environment's site-packages, put on the path without
    # running its .pth files (which would re-enable the checkout's editable install).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "OMP_NUM_THREADS": "1"}
    command = [str(python), "-m", "millibatch", "serve", "--model", str(tiny_embed_dir), "--host", "127.0.0.1",
               "--port", "0", "--metrics-port", "0", "--http-port", "0", "--no-profile-on-start"]
    process = subprocess.Popen(command, cwd=user_folder, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = 0
        ends = time.monotonic() + 120
        while time.monotonic() < ends and not port:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("millibatch serving on port"):
                port = int(line.split()[-1])
        assert port, process.communicate(timeout=30)[1][-3000:] if process.poll() is not None else "no port"
        yield port
    finally:
        process.terminate()
        process.wait(30)


def test_server_from_the_wheel_ignores_the_users_own_packages(server_in_user_folder: int, wheel: Path,
                                                              tmp_path: Path, user_folder: Path) -> None:
    # The client side runs from a second fresh venv that has nothing but grpcio and protobuf.
    python = fresh_venv(tmp_path / "client-venv", wheel)
    deps = only_client_dependencies(tmp_path / "client-deps")
    script = (
        "import sys\n"
        "from millibatch.client import Client\n"
        f"with Client('127.0.0.1:{server_in_user_folder}', timeout=30) as client:\n"
        "    vectors = client.embed(['hello world', 'a second text'])\n"
        "print(len(vectors), len(vectors[0]))\n"
        "heavy = sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers', 'pydantic', 'uvloop') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run([str(python), "-c", script], cwd=user_folder, env={**os.environ, "PYTHONPATH": str(deps)},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    count, _dimensions = result.stdout.splitlines()[0].split()
    assert count == "2"
    assert result.stdout.splitlines()[1] == "heavy: []"


def test_the_cli_from_a_client_install_says_what_to_install(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv", wheel)
    deps = only_client_dependencies(tmp_path / "deps")
    result = subprocess.run([str(python), "-m", "millibatch", "serve", "--help"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(deps)}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "pip install 'millibatch[server]'" in result.stderr
