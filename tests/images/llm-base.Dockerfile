# Base image for the lab's llama.cpp engine (stands in for python:3.11-slim-bookworm, which needs a registry).
ARG MINBASE=local/debian:bookworm-minbase
FROM ${MINBASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
