"""Engines: tensors in, tensors out. No protobuf, no asyncio."""
