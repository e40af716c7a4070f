"""Deadline-aware micro-batching: plain asyncio, no protobuf, no engine details beyond the protocol."""
