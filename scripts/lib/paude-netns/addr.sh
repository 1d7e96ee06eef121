# shellcheck shell=bash
# paude-netns: IPv4 arithmetic and per-agent subnet allocation.

# Default pool: one /30 per agent (host side .1, agent .2) out of 10.200.0.0/16.
readonly POOL_BASE=10.200.0.0
readonly POOL_PREFIX=16
readonly AGENT_PREFIX=30

ip_to_int() {
	local a b c d
	IFS=. read -r a b c d <<<"$1"
	printf '%d' $(((a << 24) | (b << 16) | (c << 8) | d))
}

int_to_ip() {
	local n=$1
	printf '%d.%d.%d.%d' $(((n >> 24) & 255)) $(((n >> 16) & 255)) $(((n >> 8) & 255)) $((n & 255))
}

valid_ipv4() {
	local ip=$1 part parts
	[[ ${ip} =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
	IFS=. read -ra parts <<<"${ip}"
	for part in "${parts[@]}"; do
		((10#${part} <= 255)) || return 1
	done
}

# True if anything in the current namespace already uses CIDR: an address or
# route inside it, or a non-default route covering it. Overlapping would make
# the agent's /30 shadow (or be shadowed by) an existing network.
subnet_in_use() {
	local cidr=$1 line
	if [[ -n $(ip -4 route show table all root "${cidr}" 2>/dev/null) ]]; then
		return 0
	fi
	while IFS= read -r line; do
		[[ -z ${line} || ${line} == default* ]] && continue
		return 0
	done < <(ip -4 route show table all match "${cidr}" 2>/dev/null)
	return 1
}

# Validates a user-given --subnet and prints "network prefix".
parse_subnet() {
	local cidr=$1 net prefix n mask
	[[ ${cidr} == */* ]] || usage_error "--subnet must be CIDR like 10.200.7.0/30, got '${cidr}'"
	net=${cidr%/*}
	prefix=${cidr#*/}
	valid_ipv4 "${net}" || usage_error "--subnet: '${net}' is not an IPv4 address"
	if [[ ! ${prefix} =~ ^[0-9]{1,2}$ ]] || ((prefix < 8 || prefix > AGENT_PREFIX)); then
		usage_error "--subnet prefix must be /8../${AGENT_PREFIX} (two usable addresses needed), got '/${prefix}'"
	fi
	n=$(ip_to_int "${net}")
	mask=$(((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))
	if (((n & mask) != n)); then
		usage_error "--subnet ${cidr} has host bits set; did you mean $(int_to_ip $((n & mask)))/${prefix}?"
	fi
	printf '%s %s' "${net}" "${prefix}"
}

# Prints the first /30 of the pool that nothing in this namespace uses.
pick_free_subnet() {
	local base size step count i cidr
	base=$(ip_to_int "${POOL_BASE}")
	size=$((1 << (32 - POOL_PREFIX)))
	step=$((1 << (32 - AGENT_PREFIX)))
	count=$((size / step))
	# A route covering the whole pool (e.g. a 10.0.0.0/8 LAN) makes every
	# candidate unusable; say so at once instead of probing them all.
	if subnet_in_use "${POOL_BASE}/${POOL_PREFIX}" &&
		[[ -z $(ip -4 route show table all root "${POOL_BASE}/${POOL_PREFIX}" 2>/dev/null) ]]; then
		die "a route in this namespace covers ${POOL_BASE}/${POOL_PREFIX}: pass --subnet CIDR with a free range"
	fi
	for ((i = 0; i < count; i++)); do
		cidr="$(int_to_ip $((base + i * step)))/${AGENT_PREFIX}"
		if ! subnet_in_use "${cidr}"; then
			printf '%s %s' "${cidr%/*}" "${AGENT_PREFIX}"
			return 0
		fi
	done
	die "no free /${AGENT_PREFIX} left in ${POOL_BASE}/${POOL_PREFIX} (or a route covers it): pass --subnet CIDR"
}
