"""What both FastAPI peers share: the request body, the app factory and the uvicorn launch."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel


class EmbedBody(BaseModel):
    """JSON request body: {"inputs": ["text", ...]}."""

    inputs: list[str]


def serve_app(embed: Callable[[list[str]], np.ndarray], port: int) -> None:
    """Serve POST /embed with `embed` on 127.0.0.1:port; a sync handler, so FastAPI runs it in its thread pool
    as a typical deployment does (one forward pass per request, no batching)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/embed")
    def embed_route(body: EmbedBody) -> dict[str, list[list[float]]]:
        return {"embeddings": embed(body.inputs).tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every FastAPI peer takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-dir", required=True, help="millibatch model directory (manifest.json)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the framework")
    return parser
