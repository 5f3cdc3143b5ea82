"""Helpers shared by the tests and the benchmarks: pipelines with names of their own on the
running stack (pipeline.py), PostgreSQL schemas of their own (schemas.py). Not part of the
services: the Docker image leaves it out."""
