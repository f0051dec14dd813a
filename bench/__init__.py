"""Ferryman's benchmarks: plain scripts against the real services on this machine (see README)."""
