"""Peer servers for the benchmark, one module each; `catalog` says how to start them and talk to them."""
