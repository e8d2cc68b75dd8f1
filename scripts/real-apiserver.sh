#!/usr/bin/env bash
# A REAL kube-apiserver (Kubernetes 1.20.2, Debian bookworm's `kubernetes` source package) on loopback,
# backed by Debian's etcd 3.4: no container engine and no download outside the Debian archive.
#   scripts/real-apiserver.sh build   apt-get golang-go, etcd-server and the kubernetes source (deb-src),
#                                     build cmd/kube-apiserver offline (vendor/, GOPATH mode as hack/ does)
#                                     into ~/.cache/kvgate/apiserver/bin once (root; ~15 min here); kubectl
#                                     from Debian's kubernetes-client (1.20.2, same source) when none is on PATH
#   scripts/real-apiserver.sh start   etcd + kube-apiserver on loopback ports outside the ephemeral range
#                                     (others again if one was taken; TLS, self-signed; a static
#                                     system:masters token in the kubeconfig; the RBAC authorizer, so other
#                                     identities get what their Roles grant); prints URL= and KUBECONFIG= lines
#   scripts/real-apiserver.sh stop    stops both (the run directory's pids), removes the run directory
#   scripts/real-apiserver.sh test    build if needed, start, run tests/k8s_real (-m k8sreal), stop: in its own
#                                     fresh run directory (KVGATE_APISERVER_RUN if given and free); skips fail
#   scripts/real-apiserver.sh bin     prints the binary's path
# The run directory of start/stop is ${KVGATE_APISERVER_RUN:-~/.cache/kvgate/apiserver/run}: one server per
# directory; `start` reuses a live one there. A cancel (INT/TERM) during `start` stops what it started, as
# does one at any point of `test`.
# No controller-manager, scheduler or kubelet: tests play the kubelet (pod status) themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=${KVGATE_APISERVER_HOME:-$HOME/.cache/kvgate/apiserver}
RUN=${KVGATE_APISERVER_RUN:-$TOP/run}
RUN=$(realpath -m -- "$RUN")   # absolute: kill_servers finds servers by it on command lines (review s29-rev-b29 F1)
KVER=1.20.2
BREV=1   # bump when the build's patches or flags change: a new binary name, so an old one is never reused
BIN=$TOP/bin/kube-apiserver-v$KVER-$BREV
PY=${PY:-.venv/bin/python}
# absolute: build cds into the Go tree before it runs "$PY" (a relative .venv/bin/python broke a fresh build)
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac
cmd=${1:-start}
[ $# -gt 0 ] && shift
# A cancel is an exit, so that `trap stop EXIT` runs: with SIGINT untrapped, bash's wait-and-cooperative-
# exit swallows a Ctrl-C that reaches a child which had just exited (the readiness loop went on ~20 s), and
# clean-up on a signal depended on where bash was when it came (s28 CI: etcd + kube-apiserver left once).
trap 'exit 130' INT
trap 'exit 143' TERM
HOLD_STOP_TRAP=0   # `test` keeps start's EXIT trap up to its own: no moment without one

# etcd's client + peer ports and the API server's secure port, three distinct ones outside the kernel's
# ephemeral range (kvgate.bench.ports), where no other process's port-0 bind or outgoing connection lands
# between this pick and their bind (port-0 picks could be taken: review s27-rev-b27 F1). Neither can bind 0
# itself: kube-apiserver 1.20 refuses --secure-port 0, and etcd's gateway dials its configured :0.
free_ports() {
  PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
    'from kvgate.bench.ports import free_port; print(*(free_port() for _ in range(3)))'
}

build() {
  if [ -x "$BIN" ]; then echo "kube-apiserver: $BIN (built)"; return; fi
  local pkgs=""
  command -v go >/dev/null || pkgs="$pkgs golang-go"
  command -v etcd >/dev/null || pkgs="$pkgs etcd-server"
  command -v dpkg-source >/dev/null || pkgs="$pkgs dpkg-dev"
  command -v kubectl >/dev/null || pkgs="$pkgs kubernetes-client"
  if [ -n "$pkgs" ]; then
    [ "$(id -u)" = 0 ] || { echo "building kube-apiserver needs root (apt-get install$pkgs)" >&2; exit 1; }
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs
  fi
  mkdir -p "$TOP/src"
  # extracted into a temporary directory and moved into place: an interrupted extraction is redone
  if [ ! -d "$TOP/src/kubernetes-$KVER" ]; then
    rm -rf "$TOP/src/extract"; mkdir -p "$TOP/src/extract"
    if ! ls "$TOP"/src/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
      [ "$(id -u)" = 0 ] || { echo "downloading the kubernetes source needs root (apt deb-src)" >&2; exit 1; }
      local srcs=/etc/apt/sources.list.d/kvgate-deb-src.sources
      if [ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
        # deb-src for bookworm main, only for this download: removed again right after
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
          > "$srcs"
        trap 'rm -f "'"$srcs"'"; apt-get update -q >/dev/null 2>&1 || true' EXIT
        apt-get update -q
      fi
      (cd "$TOP/src" && apt-get source --download-only kubernetes)
      if [ -f "$srcs" ]; then rm -f "$srcs"; apt-get update -q >/dev/null 2>&1 || true; trap - EXIT; fi
    fi
    tar xzf "$TOP"/src/kubernetes_*.orig.tar.gz -C "$TOP/src/extract"
    mv "$TOP/src/extract/kubernetes-$KVER" "$TOP/src/kubernetes-$KVER"
    rm -rf "$TOP/src/extract"
  fi
  [ -d "$TOP/src/kubernetes-$KVER/vendor" ] || { echo "no vendor/ in the kubernetes source" >&2; exit 1; }
  mkdir -p "$TOP/gopath/src/k8s.io" "$TOP/bin"
  [ -L "$TOP/gopath/src/k8s.io/kubernetes" ] || ln -s "$TOP/src/kubernetes-$KVER" "$TOP/gopath/src/k8s.io/kubernetes"
  # (hack/lib/version.sh stamps both: the API server's /version reads client-go's)
  local V=k8s.io/kubernetes/vendor/k8s.io/component-base/version C=k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version start
  start=$(date +%s)
  export GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0 GOPATH="$TOP/gopath" GOCACHE="$TOP/gocache"
  cd "$TOP/gopath/src/k8s.io/kubernetes"
  # the marker is written last: an interrupted openapi-gen is run again
  if [ ! -f pkg/generated/openapi/.kvgate-openapi-done ]; then
    # Upstream's `make generated_files` writes this one at build time (it is not in the source tarball): the
    # packages tagged +k8s:openapi-gen (staging seen through vendor/, as the Makefile's list has them).
    nice -n 10 go build -p 1 -o "$TOP/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local dirs
    dirs=$({ grep -rl --include='*.go' '^// *+k8s:openapi-gen=' pkg cmd plugin staging
             grep -rl --include='*.go' '^// *+k8s:openapi-gen=' vendor --exclude-dir=k8s.io || true; } |
      grep -v '/testdata/\|_test.go' | sed 's|^staging/src/|vendor/|' |
      grep -v '^vendor/k8s.io/code-generator/\|^vendor/k8s.io/sample-apiserver/' | xargs -n1 dirname | sort -u |
      sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
    nice -n 10 "$TOP/bin/openapi-gen" -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$TOP/openapi-violations.report"
    touch pkg/generated/openapi/.kvgate-openapi-done
  fi
  # reflect2 v1.0.1 (vendored) calls reflect.mapiterinit with go1.17's signature: under Debian's go1.19 the
  # API server crashes encoding any map (a custom resource's create). Its v1.0.2 fix, applied in place:
  "$PY" - vendor/github.com/modern-go/reflect2 <<'EOF'
import pathlib, sys
d = pathlib.Path(sys.argv[1])
link, m = d / "unsafe_link.go", d / "unsafe_map.go"
s = link.read_text()
if "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter" in s:
    s = s.replace("func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter",
                  "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)")
    s = s.replace("""	value unsafe.Pointer // Must be in second position (see cmd/internal/gc/range.go).
	// rest fields are ignored
""", """	value unsafe.Pointer // Must be in second position (see cmd/internal/gc/range.go).
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
""")
    link.write_text(s)
    t = m.read_text()
    t = t.replace("""		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),""",
                  """		hiter:      it,""")
    t = t.replace("""func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {
""", """func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {
	it := new(hiter)
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), it)
""")
    m.write_text(t)
    print("vendor/github.com/modern-go/reflect2 patched for go1.18+ (as its v1.0.2 does)")
EOF
  (nice -n 10 go build -p 1 -tags selinux,notest,providerless \
      -ldflags "-s -w $(for V in $C $V; do printf -- '-X %s ' "$V.gitVersion=v$KVER" "$V.gitMajor=1" "$V.gitMinor=20" "$V.gitTreeState=clean"; done)" \
      -o "$BIN.tmp" ./cmd/kube-apiserver)
  mv "$BIN.tmp" "$BIN"
  cd - >/dev/null
  echo "kube-apiserver built in $(( $(date +%s) - start )) s: $BIN"
}

live() { [ -f "$RUN/url" ] && kill -0 "$(cat "$RUN/apiserver.pid" 2>/dev/null)" 2>/dev/null; }

start() {
  [ -x "$BIN" ] || { echo "no $BIN: run '$0 build' first" >&2; exit 1; }
  if live; then
    echo "URL=$(cat "$RUN/url")"; echo "KUBECONFIG=$RUN/kubeconfig"; return
  fi
  [ -d "$RUN" ] && stop   # a dead apiserver's leftovers (a live etcd too)
  # from here a cancel or a failure stops what was started (the trap is dropped once it is ready)
  trap stop EXIT
  umask 077   # tokens.csv and kubeconfig hold the system:masters token
  mkdir -p "$RUN"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=kube-apiserver \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$RUN/tls.key" -out "$RUN/tls.crt" 2>/dev/null
  openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
  # One static admin token (system:masters: everything under RBAC too). The RBAC authorizer, not AlwaysAllow
  # (k8s27): tests/k8s_real checks the shipped Roles against it with a ServiceAccount's token.
  local token
  token=$(openssl rand -hex 16)
  echo "$token,kvgate-admin,kvgate-admin,system:masters" >"$RUN/tokens.csv"
  # A port someone else bound between the pick and ours (another caller of kvgate.bench.ports, or a server
  # bound by number): fresh ports, up to 3 tries.
  local try
  for try in 1 2 3; do
    launch "$token" && { [ "$HOLD_STOP_TRAP" = 1 ] || trap - EXIT; return; }
    grep -qs 'bind: address already in use' "$RUN/etcd.log" "$RUN/apiserver.log" && [ "$try" -lt 3 ] || break
    echo "real-apiserver.sh: a port was taken before etcd or kube-apiserver bound it; again with others" >&2
    kill_servers; rm -rf "$RUN/etcd" "$RUN/certs"
  done
  local keep
  keep=${RUN%/}.failed   # next to the run directory, which stop removes
  rm -rf "$keep"; mkdir -p "$keep"; cp "$RUN"/*.log "$keep"/ 2>/dev/null || true
  echo "kube-apiserver did not become ready; logs kept in $keep; last lines:" >&2
  echo "--- etcd.log" >&2; tail -10 "$RUN/etcd.log" >&2
  echo "--- apiserver.log" >&2; tail -20 "$RUN/apiserver.log" >&2
  exit 1
}

# etcd + kube-apiserver on fresh ports; returns once /readyz answers (0) or either has died (1)
launch() {
  local token=$1 ep pp ap
  read -r ep pp ap < <(free_ports)
  [ -n "$ap" ] || { echo "real-apiserver.sh: no free ports" >&2; return 1; }
  etcd --name kvgate --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
    --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$pp" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "kvgate=http://127.0.0.1:$pp" \
    >"$RUN/etcd.log" 2>&1 &
  echo $! >"$RUN/etcd.pid"
  "$BIN" --etcd-servers "http://127.0.0.1:$ep" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$ap" --tls-cert-file "$RUN/tls.crt" --tls-private-key-file "$RUN/tls.key" \
    --cert-dir "$RUN/certs" --service-cluster-ip-range 10.96.0.0/24 \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$RUN/sa.key" \
    --service-account-signing-key-file "$RUN/sa.key" --api-audiences kvgate \
    --token-auth-file "$RUN/tokens.csv" --authorization-mode RBAC \
    --disable-admission-plugins ServiceAccount --endpoint-reconciler-type none \
    >"$RUN/apiserver.log" 2>&1 &
  echo $! >"$RUN/apiserver.pid"
  local url="https://127.0.0.1:$ap"
  cat >"$RUN/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: real
  cluster: {server: "$url", certificate-authority: "$RUN/tls.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: real
  context: {cluster: real, user: admin}
current-context: real
EOF
  for _ in $(seq 1 360); do
    if curl -sf --cacert "$RUN/tls.crt" -H "Authorization: Bearer $token" "$url/readyz" >/dev/null 2>&1; then
      echo "$url" >"$RUN/url"; echo "URL=$url"; echo "KUBECONFIG=$RUN/kubeconfig"
      return 0
    fi
    kill -0 "$(cat "$RUN/apiserver.pid")" 2>/dev/null || return 1
    kill -0 "$(cat "$RUN/etcd.pid")" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

stop() {
  kill_servers
  rm -rf "$RUN"
}

kill_servers() {
  local f pid pids run_re
  run_re=$(printf '%s' "$RUN" | sed 's/[][\\.^$*+?(){}|]/\\&/g')   # the path as a literal in pgrep's regex
  for f in apiserver etcd; do
    pid=$(cat "$RUN/$f.pid" 2>/dev/null || true)
    # a signal between `&` and the pid file's write: found by the run directory on its command line
    pids="$pid $(pgrep -f -- "--(cert-dir|data-dir) $run_re/(certs|etcd)( |\$)" 2>/dev/null | tr '\n' ' ' || true)"
    for pid in $pids; do
      kill -0 "$pid" 2>/dev/null || continue
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    done
  done
}

case "$cmd" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  bin) echo "$BIN" ;;
  test)
    build
    command -v kubectl >/dev/null || {
      echo "kubectl not found: tests/k8s_real needs it (Debian: apt-get install kubernetes-client)" >&2; exit 1; }
    # its own run directory: never a server another run started (that one's tests would lose it at our exit)
    if [ -n "${KVGATE_APISERVER_RUN:-}" ]; then
      live && { echo "a server is running in $RUN: test starts its own (another run directory)" >&2; exit 1; }
    else
      mkdir -p "$TOP/runs"; RUN=$(mktemp -d "$TOP/runs/test.XXXXXX")
    fi
    trap stop EXIT
    HOLD_STOP_TRAP=1 start
    KVGATE_REAL_APISERVER=$(cat "$RUN/url") KUBECONFIG=$RUN/kubeconfig KVGATE_REQUIRE_REAL_APISERVER=1 \
      "$PY" -m pytest -q -p no:cacheprovider -m k8sreal tests/k8s_real "$@" ;;
  *) echo "usage: $0 [build|start|stop|test|bin]" >&2; exit 2 ;;
esac
