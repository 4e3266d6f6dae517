# The lab's Prometheus, Alertmanager and node exporter, from Debian 12's own packages (no registry here; production
# uses the upstream prom/* images through the same variables). One package layer, three images whose entry points
# are the upstream images' (each binary, run as nobody, data under /prometheus and /alertmanager).
ARG MINBASE=local/debian:bookworm-minbase
FROM ${MINBASE} AS debian-prometheus
# Not installed (dpkg path-exclude, see dpkg.cfg(5)): documentation, translations and moment-timezone's per-zone
# data files (212 MB: the classic UI loads only moment-timezone-with-data.min.js), which halves the image.
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/locale/*' \
      'path-exclude=/usr/share/javascript/moment-timezone/data/*' > /etc/dpkg/dpkg.cfg.d/llm-lab-slim \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus prometheus-alertmanager prometheus-node-exporter \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o nobody -g nogroup /prometheus /alertmanager
USER nobody

FROM debian-prometheus AS prometheus
ENTRYPOINT ["/usr/bin/prometheus"]

FROM debian-prometheus AS alertmanager
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]

FROM debian-prometheus AS node-exporter
ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]
