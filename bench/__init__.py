"""Benchmarks: every number in the README comes from a script here."""
