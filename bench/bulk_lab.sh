#!/usr/bin/env bash
# bench/bulk_lab.sh: one bulk transfer at a time through paude-proxy in explicit and in
# transparent mode, interleaved, in one namespace lab, printing the proxy's CPU ticks for
# each; optionally under `perf record` or `strace -c`. Quicker than scripts/bench for
# attributing the transparent row's bulk gap. Root only; nothing leaves the lab.
#
#   gw   nginx on 198.18.0.1:8443 (on lo) and paude-proxy (explicit :3128, transparent :3129)
#   ag   a scripts/paude-netns agent: its TCP is redirected to :3129 by nft
#   pl   a plain namespace on a veth of its own, no nft: explicit mode over a veth
#
# Modes, in the order given (repeat them to interleave):
#   explicit       curl in gw over lo, CONNECT through :3128
#   explicit_veth  curl in pl over a veth, CONNECT through :3128
#   transparent    curl in ag over the paude-netns veth, redirected
#   mtu=N          sets every lab veth's MTU to N for the modes after it
#
#   bench/bulk_lab.sh [--size 1G] [--upload] [--perf DIR | --strace DIR] MODE...
#   bench/bulk_lab.sh --size 1G explicit transparent explicit_veth explicit transparent
set -euo pipefail
shopt -s inherit_errexit

readonly PROG=bulk_lab
ROOT=$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd)
readonly ROOT
readonly UPSTREAM_IP=198.18.0.1 UPSTREAM_PORT=8443 HOST=bench.test
readonly EXPLICIT_PORT=3128 TRANSPARENT_PORT=3129 DNS_PORT=3153
readonly AGENT_SUBNET=10.251.12.0/30 PLAIN_GW=10.252.9.1 PLAIN_CLIENT=10.252.9.2
# How long the proxy may take to say it listens (tenths of a second).
readonly READY_POLLS=200
# perf's sampling rate: cpu-clock is the only event this machine has.
readonly PERF_HZ=2000

die() {
	printf '%s: %s\n' "${PROG}" "$*" >&2
	exit 64
}

size=256M upload="" perf_dir="" strace_dir=""
bin=${PAUDE_PROXY_BIN:-${ROOT}/target/release/paude-proxy}
while (($# > 0)); do
	case $1 in
	--size) size=${2:?--size needs a value}; shift 2 ;;
	--upload) upload=1; shift ;;
	--perf) perf_dir=${2:?--perf needs a directory}; shift 2 ;;
	--strace) strace_dir=${2:?--strace needs a directory}; shift 2 ;;
	-h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
	-*) die "unknown option '$1'" ;;
	*) break ;;
	esac
done
(($# > 0)) || die "no mode given (explicit, explicit_veth, transparent, mtu=N)"
[[ ${size} =~ ^[0-9]+[KMG]?$ ]] || die "--size must be like 256M or 1G, got '${size}'"
for m in "$@"; do
	[[ ${m} =~ ^(explicit|explicit_veth|transparent|mtu=[0-9]{3,5})$ ]] || die "unknown mode '${m}'"
done
[[ -x ${bin} ]] || die "no proxy binary at ${bin} (cargo build --release, or set PAUDE_PROXY_BIN)"
((EUID == 0)) || die "needs root (network namespaces)"

dir=$(mktemp -d /tmp/bulk-lab.XXXXXX)
tag="bulklab$$"
gw="${tag}-gw" ag="${tag}-ag" pl="${tag}-pl"
nginx_pid="" proxy_pid="" agent_made=""
cleanup() {
	if [[ -n ${proxy_pid} ]]; then kill "${proxy_pid}" 2>/dev/null || true; fi
	if [[ -n ${nginx_pid} ]]; then kill "${nginx_pid}" 2>/dev/null || true; fi
	wait 2>/dev/null || true
	if [[ -n ${agent_made} ]]; then
		nsenter --net="/run/netns/${gw}" "${ROOT}/scripts/paude-netns" destroy "${ag}" >/dev/null 2>&1 || true
	fi
	ip netns del "${pl}" 2>/dev/null || true
	ip netns del "${gw}" 2>/dev/null || true
	rm -rf -- "${dir}"
}
trap cleanup EXIT

quiet() { "$@" >/dev/null 2>&1; }

make_pki() {
	quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "${dir}/up-ca.key" -out "${dir}/up-ca.crt" -days 2 -subj "/CN=bulk-lab CA"
	quiet openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "${dir}/up.key" -out "${dir}/up.csr" -subj "/CN=${HOST}"
	printf 'subjectAltName=DNS:%s\n' "${HOST}" >"${dir}/ext.cnf"
	quiet openssl x509 -req -in "${dir}/up.csr" -CA "${dir}/up-ca.crt" -CAkey "${dir}/up-ca.key" \
		-CAcreateserial -out "${dir}/up.crt" -days 2 -extfile "${dir}/ext.cnf"
}

start_nginx() {
	mkdir -p "${dir}/www"
	truncate -s "${size}" "${dir}/www/bulk"
	cat >"${dir}/nginx.conf" <<-EOF
		load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
		worker_processes 1;
		daemon off;
		pid ${dir}/nginx.pid;
		error_log ${dir}/nginx.err error;
		events { }
		http {
		    access_log off;
		    client_body_temp_path ${dir};
		    proxy_temp_path ${dir};
		    fastcgi_temp_path ${dir};
		    uwsgi_temp_path ${dir};
		    scgi_temp_path ${dir};
		    client_max_body_size 0;
		    server {
		        listen ${UPSTREAM_IP}:${UPSTREAM_PORT} ssl;
		        ssl_certificate ${dir}/up.crt;
		        ssl_certificate_key ${dir}/up.key;
		        root ${dir}/www;
		        location = /bulk { }
		        location = /upload { echo_read_request_body; echo ok; }
		    }
		}
	EOF
	ip netns exec "${gw}" nginx -c "${dir}/nginx.conf" &
	nginx_pid=$!
}

start_proxy() {
	printf '%s %s\n' "${UPSTREAM_IP}" "${HOST}" >"${dir}/hosts"
	env -i PATH=/usr/bin:/bin HOME="${dir}" NO_COLOR=1 \
		PAUDE_PROXY_LISTEN="0.0.0.0:${EXPLICIT_PORT}" \
		PAUDE_PROXY_TRANSPARENT_LISTEN="0.0.0.0:${TRANSPARENT_PORT}" \
		PAUDE_PROXY_CA_DIR="${dir}/ca" PAUDE_PROXY_HOSTS_FILE="${dir}/hosts" \
		PAUDE_PROXY_ALLOWED_UPSTREAM_NETS="${UPSTREAM_IP}/32" \
		PAUDE_PROXY_UPSTREAM_CA="${dir}/up-ca.crt" \
		ALLOWED_DOMAINS="${HOST}" ALLOWED_OTEL_PORTS="${UPSTREAM_PORT}" \
		BLOCKED_LOG_PATH="${dir}/blocked.log" \
		ip netns exec "${gw}" "${bin}" >"${dir}/proxy.log" 2>&1 &
	proxy_pid=$!
	local i
	for ((i = 0; i < READY_POLLS; i++)); do
		grep -q "listening role=transparent" "${dir}/proxy.log" && return 0
		sleep 0.1
	done
	die "the proxy did not start: $(cat "${dir}/proxy.log")"
}

make_lab() {
	ip netns add "${gw}"
	ip -n "${gw}" link set lo up
	ip -n "${gw}" addr add "${UPSTREAM_IP}/32" dev lo
	make_pki
	start_nginx
	start_proxy
	agent_made=1
	nsenter --net="/run/netns/${gw}" "${ROOT}/scripts/paude-netns" create "${ag}" \
		--subnet "${AGENT_SUBNET}" --transparent-port "${TRANSPARENT_PORT}" \
		--dns-port "${DNS_PORT}" --ca "${dir}/ca/ca.crt" >/dev/null
	ip netns add "${pl}"
	ip -n "${gw}" link add blpl0 type veth peer name eth0 netns "${pl}"
	ip -n "${gw}" addr add "${PLAIN_GW}/30" dev blpl0
	ip -n "${gw}" link set blpl0 up
	ip -n "${pl}" link set lo up
	ip -n "${pl}" addr add "${PLAIN_CLIENT}/30" dev eth0
	ip -n "${pl}" link set eth0 up
}

set_mtu() {
	local ns link
	for ns in "${gw}" "${ag}" "${pl}"; do
		while read -r link; do
			ip -n "${ns}" link set "${link}" mtu "$1"
		done < <(ip -n "${ns}" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1)
	done
}

# curl's own output: bytes down, bytes up, seconds.
transfer() {
	local mode=$1 ns proxy=() path=/bulk body=()
	case ${mode} in
	explicit) ns=${gw} proxy=(-x "http://127.0.0.1:${EXPLICIT_PORT}") ;;
	explicit_veth) ns=${pl} proxy=(-x "http://${PLAIN_GW}:${EXPLICIT_PORT}") ;;
	transparent) ns=${ag} ;;
	*) die "unknown mode '${mode}'" ;;
	esac
	if [[ -n ${upload} ]]; then
		path=/upload body=(-T "${dir}/www/bulk")
	fi
	ip netns exec "${ns}" curl -sS --fail -o /dev/null --cacert "${dir}/ca/ca.crt" \
		--resolve "${HOST}:${UPSTREAM_PORT}:${UPSTREAM_IP}" "${proxy[@]}" "${body[@]}" \
		-w '%{size_download} %{size_upload} %{time_total}' \
		"https://${HOST}:${UPSTREAM_PORT}${path}"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/${proxy_pid}/stat"; }

make_lab
# Warm: the leaf is minted and the upstream pool made before anything is counted.
for warm in explicit explicit_veth transparent; do quiet transfer "${warm}"; done
mtu=1500 n=0
for mode in "$@"; do
	if [[ ${mode} == mtu=* ]]; then
		mtu=${mode#mtu=}
		set_mtu "${mtu}"
		continue
	fi
	n=$((n + 1))
	tracer_pid=""
	if [[ -n ${perf_dir} ]]; then
		mkdir -p "${perf_dir}"
		perf record -q -e cpu-clock -F "${PERF_HZ}" -g -p "${proxy_pid}" \
			-o "${perf_dir}/${n}-${mode}.perf.data" >/dev/null 2>&1 &
		tracer_pid=$!
		sleep 0.5
	elif [[ -n ${strace_dir} ]]; then
		mkdir -p "${strace_dir}"
		strace -c -f -p "${proxy_pid}" -o "${strace_dir}/${n}-${mode}.strace" 2>/dev/null &
		tracer_pid=$!
		sleep 1
	fi
	t0=$(cpu_ticks)
	out=$(transfer "${mode}")
	t1=$(cpu_ticks)
	if [[ -n ${tracer_pid} ]]; then
		kill -INT "${tracer_pid}"
		wait "${tracer_pid}" || true
	fi
	printf '%s mtu=%s down/up/secs=%s proxy_cpu_ticks=%s\n' "${mode}" "${mtu}" "${out// //}" "$((t1 - t0))"
done
