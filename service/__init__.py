"""The gRPC edge: protobuf in, protobuf out. Everything below it takes plain Python types."""
