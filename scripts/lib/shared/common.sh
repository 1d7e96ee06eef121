# shellcheck shell=bash
# Shared by scripts/paude-netns and scripts/paude-pod: messages, exit codes and
# the argument checks both apply. The caller sets PROG (its own name) first.

info() { printf '%s: %s\n' "${PROG}" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "${PROG}" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "${PROG}" "$*" >&2
	exit 1
}

# Exit status for usage errors, as in sysexits.h (EX_USAGE), so that wrappers
# can tell a bad invocation from a failed setup.
readonly EXIT_USAGE=64
usage_error() {
	printf '%s: %s (see --help)\n' "${PROG}" "$*" >&2
	exit "$EXIT_USAGE"
}

# Defaults match the proxy's documented example listeners
# (PAUDE_PROXY_TRANSPARENT_LISTEN=:3129, PAUDE_PROXY_DNS_LISTEN=:3153).
readonly DEFAULT_TRANSPARENT_PORT=3129
readonly DEFAULT_DNS_PORT=3153

validate_port() {
	local what=$1 value=$2
	if [[ ! ${value} =~ ^[0-9]{1,5}$ ]] || ((10#${value} < 1 || 10#${value} > 65535)); then
		usage_error "${what} must be a port number in 1..65535, got '${value}'"
	fi
}

require_nft() {
	if ! command -v nft >/dev/null 2>&1; then
		die "'nft' not found: install nftables (Debian/Ubuntu: apt-get install nftables; Fedora: dnf install nftables)"
	fi
}

table_exists() { nft list table inet "$1" >/dev/null 2>&1; }
