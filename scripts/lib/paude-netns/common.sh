# shellcheck shell=bash
# paude-netns: shared constants, messages, preconditions, names and state.
# Sourced by scripts/paude-netns; not meant to be run on its own.

# Runtime state lives on tmpfs: it is only meaningful while the namespace exists,
# and namespaces do not survive a reboot either.
readonly STATE_ROOT=/run/paude-netns
# `ip netns exec NAME` bind-mounts every entry of this directory over /etc/<entry>.
readonly ETC_NETNS_ROOT=/etc/netns
readonly NETNS_RUN_DIR=/run/netns

# How long a signalled agent (run) or a leftover process (destroy) gets to exit
# after SIGTERM before it is killed.
readonly STOP_GRACE_SECONDS=5
# Poll step while waiting for a process to exit.
readonly STOP_POLL_SECONDS=0.1

# Interface name of the agent's end of the veth, inside its own namespace.
readonly AGENT_IFNAME=eth0

# Messages, EXIT_USAGE, default ports and validate_port: ../shared/common.sh.

require_root() {
	if [[ ${EUID} -ne 0 ]]; then
		die "must run as root: creating network namespaces, veths and nft tables needs CAP_SYS_ADMIN and CAP_NET_ADMIN (try: sudo $0 ...)"
	fi
}

# The script is useless without these; say exactly what to install.
require_tools() {
	if ! command -v ip >/dev/null 2>&1; then
		die "'ip' not found: install iproute2 (Debian/Ubuntu: apt-get install iproute2; Fedora: dnf install iproute)"
	fi
	if ! ip netns list >/dev/null 2>&1; then
		die "'ip netns' does not work here: install the full iproute2 (busybox ip lacks netns support)"
	fi
	require_nft
}

# Names end up in a netns name, a path under /etc/netns and /run, and an nft
# table identifier, so allow only characters that are safe in all of them.
readonly NAME_PATTERN='^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$'
validate_name() {
	local name=$1
	if [[ ! ${name} =~ ${NAME_PATTERN} ]]; then
		usage_error "invalid agent name '${name}': use 1-32 characters of A-Z a-z 0-9 _ -, starting with a letter or digit"
	fi
}

# The host-side veth name must fit IFNAMSIZ (15 characters) whatever the agent
# name, and destroy must find it even if the state file is gone, so it is
# derived from the name: "pn" + CRC32 of the name in hex.
veth_name_for() {
	local crc
	crc=$(printf '%s' "$1" | cksum)
	printf 'pn%08x' "${crc%% *}"
}

table_name_for() { printf 'paude-%s' "$1"; }
state_dir_for() { printf '%s/%s' "${STATE_ROOT}" "$1"; }
etc_dir_for() { printf '%s/%s' "${ETC_NETNS_ROOT}" "$1"; }

netns_exists() { [[ -e "${NETNS_RUN_DIR}/$1" ]]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# State is plain key=value lines, parsed (never sourced) so a tampered file
# cannot run code as root.
write_state() {
	local dir=$1
	shift
	mkdir -p "${dir}"
	printf '%s\n' "$@" >"${dir}/state.tmp"
	mv -f "${dir}/state.tmp" "${dir}/state"
}

# Prints the value of KEY from the state file of NAME, or nothing.
read_state_value() {
	local name=$1 key=$2 file k v
	file="$(state_dir_for "${name}")/state"
	[[ -r ${file} ]] || return 0
	while IFS='=' read -r k v; do
		if [[ ${k} == "${key}" ]]; then
			printf '%s' "${v}"
			return 0
		fi
	done <"${file}"
}

# Serialises subnet allocation between concurrent creates. Held only while an
# agent is being built: `run` must release it before starting the agent
# command, or every other create would wait for that agent to finish.
LOCK_FD=""
take_lock() {
	mkdir -p "${STATE_ROOT}"
	if command -v flock >/dev/null 2>&1; then
		exec {LOCK_FD}>"${STATE_ROOT}/.lock"
		flock "${LOCK_FD}"
	else
		warn "flock not found (util-linux): concurrent creates could pick the same subnet"
	fi
}

release_lock() {
	if [[ -n ${LOCK_FD} ]]; then
		exec {LOCK_FD}>&-
		LOCK_FD=""
	fi
}

# Sends SIGTERM to PIDS, waits up to STOP_GRACE_SECONDS, then SIGKILLs
# whatever is left. Used so that no agent process outlives its namespace.
stop_pids() {
	local pids=("$@") deadline alive pid
	((${#pids[@]} > 0)) || return 0
	kill -TERM "${pids[@]}" 2>/dev/null || true
	deadline=$((SECONDS + STOP_GRACE_SECONDS))
	while ((SECONDS < deadline)); do
		alive=0
		for pid in "${pids[@]}"; do
			if kill -0 "${pid}" 2>/dev/null; then alive=1; fi
		done
		((alive)) || return 0
		sleep "${STOP_POLL_SECONDS}"
	done
	kill -KILL "${pids[@]}" 2>/dev/null || true
}
