# SIMULATED Fedora 42 test host (shared/ENVIRONMENT.md recipe): a Debian forky userland with Debian's real dnf5
# and rpm, reading as Fedora 42 (distribution Fedora 42, os_family RedHat, pkg_mgr dnf5). No systemd as PID 1,
# no dracut/grubby/akmods/SELinux; the CI machine's kernel. See molecule/fedora42_sim/README.md.
ARG BASE=local/debian:forky-minbase
FROM ${BASE}
RUN echo 'Acquire::Check-Valid-Until "false";' >/etc/apt/apt.conf.d/99snapshot \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      dnf5 python3-libdnf5 rpm createrepo-c python3 gnupg ca-certificates procps sudo \
 && rm -rf /var/lib/apt/lists/*
COPY fedora-release.spec /tmp/fedora-release.spec
# Read as Fedora 42; dnf5 as `dnf`; Debian's `local` libdnf5 plugin off; a stand-in fedora-release-common that
# gives dnf5 its releasever and tells the rpmdb about what dpkg installed (sh, bash, glibc, python3).
RUN dpkg-divert --quiet --local --rename --add /usr/lib/os-release \
 && printf '%s\n' 'NAME="Fedora Linux"' 'VERSION="42 (Container Image)"' 'ID=fedora' 'VERSION_ID=42' \
      'VERSION_CODENAME=""' 'PLATFORM_ID="platform:f42"' 'PRETTY_NAME="Fedora Linux 42 (Container Image) - SIMULATED"' \
      'ANSI_COLOR="0;38;2;60;110;180"' 'CPE_NAME="cpe:/o:fedoraproject:fedora:42"' 'VARIANT="Container Image"' \
      'VARIANT_ID=container' >/usr/lib/os-release \
 && echo "Fedora release 42 (Adams)" >/etc/fedora-release && ln -sf fedora-release /etc/redhat-release \
 && ln -sf dnf5 /usr/bin/dnf && mkdir -p /etc/yum.repos.d \
 && for f in /etc/dnf/libdnf5-plugins/local.conf; do [ -f "$f" ] && sed -i 's/^enabled *=.*/enabled = 0/' "$f"; done; \
    rpmbuild -bb --quiet --define "_rpmformat 4" --define "_topdir /tmp/rpmbuild" /tmp/fedora-release.spec \
 && rpm -i --nodeps /tmp/rpmbuild/RPMS/noarch/fedora-release-common-42-1.noarch.rpm \
 && rm -rf /tmp/rpmbuild /tmp/fedora-release.spec
CMD ["sleep", "infinity"]
