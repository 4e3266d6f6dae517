# SIMULATED NVIDIA DCGM exporter (tests only): serves DCGM exporter's metric names and labels for one simulated
# RTX 5090, with no GPU and no DCGM. See tests/fixtures/dcgm-exporter-sim/dcgm_exporter_sim.py.
ARG BASE=local/llm-base:bookworm
FROM ${BASE}
COPY dcgm_exporter_sim.py /usr/local/bin/dcgm-exporter-sim
USER nobody
ENTRYPOINT ["python3", "/usr/local/bin/dcgm-exporter-sim"]
