"""Run one scenario with the official `tritonclient` against a server; print the results as JSON.

It runs in its own process because tritonclient's generated modules and millibatch's own
`inference` protos define the same protobuf symbols, which one process's descriptor pool refuses.
Usage: triton_client.py '<json spec>' where spec = {"url": ..., "scenario": ..., ...}.
"""

from __future__ import annotations

import base64
import json
import queue
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException


def error_of(call: Callable[[], Any]) -> dict[str, str] | None:
    """The status and message of a call that should fail, or None if it succeeded."""
    try:
        call()
    except InferenceServerException as error:
        return {"status": str(error.status()).removeprefix("StatusCode."), "message": str(error.message())}
    return None


def text_input(texts: list[str], name: str = "text") -> tc.InferInput:
    tensor = tc.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(-1, 1))
    return tensor


def int_input(name: str, values: list[list[int]], datatype: str = "INT64") -> tc.InferInput:
    array = np.array(values, dtype=np.int64 if datatype == "INT64" else np.int32)
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def outputs_of(result: tc.InferResult, names: list[str]) -> dict[str, Any]:
    return {name: result.as_numpy(name).tolist() for name in names if result.as_numpy(name) is not None}


def run(spec: dict[str, Any]) -> Any:
    client = tc.InferenceServerClient(spec["url"])
    scenario = spec["scenario"]
    model = spec.get("model", "tiny-embed")
    if scenario == "descriptors":
        from tritonclient.grpc import model_config_pb2, service_pb2

        return {m.DESCRIPTOR.name: base64.b64encode(m.DESCRIPTOR.serialized_pb).decode()
                for m in (service_pb2, model_config_pb2)}
    if scenario == "health":
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "unknown_model": error_of(lambda: client.is_model_ready("no-such-model")),
        }
    if scenario == "metadata":
        return {
            "server": client.get_server_metadata(as_json=True),
            "model": client.get_model_metadata(model, as_json=True),
            "config": client.get_model_config(model, as_json=True),
            "statistics": client.get_inference_statistics(model, as_json=True),
        }
    if scenario == "repository":
        return {
            "index": client.get_model_repository_index(as_json=True),
            "load": error_of(lambda: client.load_model(model)),
            "unload": error_of(lambda: client.unload_model(model)),
        }
    if scenario == "infer":
        inputs = [text_input(spec["texts"])]
        if spec.get("pairs"):
            inputs.append(text_input(spec["pairs"], "text_pair"))
        for name, values in spec.get("ints", {}).items():
            inputs.append(int_input(name, values, spec.get("datatype", "INT64")))
        if not spec["texts"]:
            inputs = inputs[1:]
        outputs = [tc.InferRequestedOutput(n) for n in spec.get("outputs", [])] or None
        result = client.infer(model, inputs, outputs=outputs, request_id="r-1", client_timeout=20,
                              timeout=spec.get("timeout"))
        response = result.get_response(as_json=True)
        return {"id": response.get("id"), "model": response["model_name"],
                "shapes": {o["name"]: [int(d) for d in o["shape"]] for o in response["outputs"]},
                "outputs": outputs_of(result, spec["names"])}
    if scenario == "stream":
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i, texts in enumerate(spec["batches"]):
            client.async_stream_infer(spec.get("stream_models", {}).get(str(i), model), [text_input(texts)],
                                      request_id=f"s-{i}")
        collected: dict[str, Any] = {"ok": {}, "errors": []}
        for _ in spec["batches"]:
            result, error = answers.get(timeout=20)
            if error is not None:
                collected["errors"].append(str(error.message()))
            else:
                collected["ok"][result.get_response().id] = result.as_numpy("embeddings").tolist()
        client.stop_stream()
        return collected
    if scenario == "errors":
        cases: dict[str, Callable[[], Any]] = {
            "unknown_model": lambda: client.infer("no-such-model", [text_input(["hi"])]),
            "wrong_version": lambda: client.infer(model, [text_input(["hi"])], model_version="7"),
            "wrong_datatype": lambda: client.infer(model, [int_input("text", [[1, 2]])]),
            "missing_mask": lambda: client.infer(model, [int_input("input_ids", [[101, 102]])]),
            "unknown_input": lambda: client.infer(model, [text_input(["hi"], "sentence")]),
            "unknown_output": lambda: client.infer(model, [text_input(["hi"])],
                                                   outputs=[tc.InferRequestedOutput("nope")]),
            "mask_shape": lambda: client.infer(model, [int_input("input_ids", [[101, 102]]),
                                                       int_input("attention_mask", [[1, 1, 1]])]),
            "left_padded": lambda: client.infer(model, [int_input("input_ids", [[0, 101, 102]]),
                                                        int_input("attention_mask", [[0, 1, 1]])]),
            "id_out_of_vocab": lambda: client.infer(model, [int_input("input_ids", [[101, 10**9]]),
                                                            int_input("attention_mask", [[1, 1]])]),
            "too_long": lambda: client.infer(model, [text_input(["word " * 500])]),
            "empty_text": lambda: client.infer(model, [text_input([""])]),
            "pair_without_text": lambda: client.infer(model, [text_input(["a"], "text_pair")]),
            "timeout_spent": lambda: client.infer(model, [text_input(["hi"])], timeout=1),
        }
        return {name: error_of(call) for name, call in cases.items()}
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
