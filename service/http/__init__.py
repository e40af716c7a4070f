"""The HTTP door: OpenAI-compatible embeddings, Cohere/Jina-style rerank, models and health, on the
gRPC server's event loop and over the same data plane (door.py starts it, routes.py answers)."""
