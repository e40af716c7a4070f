"""Benchmarks: every published figure (README, docs/) comes from a script here, with its command, date and machine."""
