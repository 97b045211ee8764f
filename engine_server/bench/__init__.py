"""Benchmarks: python -m engine_server.bench {modes,speed}."""
