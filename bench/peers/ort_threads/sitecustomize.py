"""Started with the infinity-onnx peer's interpreter (on its PYTHONPATH): ONNX Runtime sessions made without a
thread count get one intra-op thread per core the process may run on.

Left to its default, ONNX Runtime makes one intra-op thread per physical core of the machine and pins each to
its core, out of the CPU set the server was started on: pinned to the server's core, infinity's ONNX engine
ran on the load generator's core as well (server CPU 1.6-1.8 cores). infinity-emb has no thread setting, so
this gives it what every other peer is given: intra-op threads = server cores."""

from __future__ import annotations

import os
from typing import Any


def _confine() -> None:
    try:
        import onnxruntime
    except ImportError:
        return
    made = onnxruntime.InferenceSession.__init__

    def init(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
        options = sess_options if sess_options is not None else onnxruntime.SessionOptions()
        if options.intra_op_num_threads == 0:
            options.intra_op_num_threads = len(os.sched_getaffinity(0))
        made(self, path_or_bytes, options, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = init


_confine()
