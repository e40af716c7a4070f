"""The Models service shows which engine runs a model and why (auto selection on this machine)."""

from __future__ import annotations

from pathlib import Path

from millibatch.client import AsyncClient
from millibatch.engines import cuda_runtime
from tests.helpers import running_server


async def test_models_service_reports_engine_choice_and_reason(tiny_embed_dir: Path) -> None:
    async with running_server([tiny_embed_dir]) as server, AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as c:
        (model,) = (await c.list_models()).models
    assert model.engine_reason.startswith("auto: ")
    if cuda_runtime.device_count() == 0:
        assert (model.engine, model.device) == ("onnxruntime", "cpu")
        assert "because" in model.engine_reason
    else:
        assert model.device == "cuda"
