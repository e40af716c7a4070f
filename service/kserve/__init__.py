"""KServe V2 / Triton gRPC protocol (`inference.GRPCInferenceService`) on millibatch's port."""
