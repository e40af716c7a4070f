"""millibatch: a deadline-aware gRPC inference server for transformer encoders."""

__version__ = "0.1.0"
