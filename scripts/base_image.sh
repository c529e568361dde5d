#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim-bookworm from Debian's own packages, for machines that
# reach Debian's mirror but no container registry (make base-image; README, "Deploy with Docker").
# Debian 12 minbase + python3 (3.11.2, the CPython the locks target) + venv/pip + CA certificates,
# without docs, man pages or apt lists; imported as an image by whichever tool is present.
#   scripts/base_image.sh IMAGE [BUILDER]      e.g. localhost/pdserve-base:bookworm podman
# Differences from the official image, which the Dockerfile allows for: Python is /usr/bin/python3
# (Debian's), not /usr/local/bin/python, and there is no `python` command, only `python3`.
set -euo pipefail
image=${1:?usage: scripts/base_image.sh IMAGE [BUILDER]}
builder=${2:-podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
out=build/base
mkdir -p "$out"
# What Docker's official Debian images put in /etc/apt/apt.conf.d/docker-clean: no package caches
# (/var/cache/apt/*.bin, 80 MB after an apt-get update) and no downloaded .deb files left in layers.
export docker_clean='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";'
command -v mmdebstrap >/dev/null || { echo "mmdebstrap not found: apt-get install -y mmdebstrap" >&2; exit 1; }
# Security and point-release updates too, so the image's apt sources (which the Dockerfile's
# apt-get uses) and its packages match what the official image's would.
mmdebstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  --customize-hook='printf "%s\n" "$docker_clean" > "$1"/etc/apt/apt.conf.d/docker-clean' \
  bookworm "$out/rootfs.tar" \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
# The official image's configuration that matters here: a UTF-8 locale for Python and python3 as CMD.
changes=(--change 'ENV LANG=C.UTF-8' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'CMD ["python3"]')
case "$builder" in
  docker | podman) "$builder" import "${changes[@]}" "$out/rootfs.tar" "$image" ;;
  buildah)  # buildah has no import: podman's storage is the same, so import with podman if present
    command -v podman >/dev/null || { echo "importing a rootfs needs podman or docker" >&2; exit 1; }
    podman import "${changes[@]}" "$out/rootfs.tar" "$image" ;;
  *) echo "unknown builder: $builder" >&2; exit 1 ;;
esac
ls -l "$out/rootfs.tar"
