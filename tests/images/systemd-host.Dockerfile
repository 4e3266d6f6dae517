# Test host: a Debian userland with systemd as PID 1, reachable by Ansible like any host.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-apt systemd systemd-sysv dbus sudo iproute2 ca-certificates curl gnupg procps \
 && rm -rf /var/lib/apt/lists/* \
 && systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      getty.target console-getty.service systemd-logind.service systemd-modules-load.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
