# shellcheck shell=bash
# paude-netns: building and tearing down one agent namespace.

# Set while create_agent runs, so an interrupted create can be rolled back.
CREATING_AGENT=""
# Set once create_agent starts changing anything, and never cleared: `run`
# only cleans up a name it actually built, never one that merely collided.
BUILT_AGENT=""

# Only `ip netns exec` puts us in a named netns with a mount namespace that no
# process outside our own tree shares; a namespace registered from there (a
# bind mount under /run/netns) dies with that mount namespace.
mount_ns_outlives_us() {
	local own dir pid ppid key value
	[[ -n $(ip netns identify 2>/dev/null || true) ]] || return 0
	own=$(readlink "/proc/$$/ns/mnt") || return 0
	for dir in /proc/[0-9]*; do
		pid=${dir#/proc/}
		[[ ${pid} == "$$" ]] && continue
		ppid=""
		while read -r key value; do
			if [[ ${key} == PPid: ]]; then
				ppid=${value}
				break
			fi
		done 2>/dev/null <"${dir}/status" || continue
		[[ ${ppid} == "$$" ]] && continue
		[[ $(readlink "${dir}/ns/mnt" 2>/dev/null || true) == "${own}" ]] && return 0
	done
	return 1
}

# Best effort: IPv6 is off for the agent (see nft/10-redirect.nft). If /proc/sys
# is read-only (some containers), the nft rules still reject all IPv6.
disable_ipv6_host_side() {
	local veth=$1 knob="/proc/sys/net/ipv6/conf/$1/disable_ipv6"
	[[ -e ${knob} ]] || return 0
	echo 1 >"${knob}" 2>/dev/null || warn "could not disable IPv6 on ${veth}; nft rules still reject it"
}

disable_ipv6_agent_side() {
	local name=$1
	# lo keeps ::1: loopback traffic cannot leave the namespace.
	ip netns exec "${name}" sh -c '
		[ -d /proc/sys/net/ipv6 ] || exit 0
		echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 &&
		echo 1 >/proc/sys/net/ipv6/conf/'"${AGENT_IFNAME}"'/disable_ipv6' 2>/dev/null ||
		warn "could not disable IPv6 inside ${name}; nft rules still reject it"
}

# Uses OPT_TPORT, OPT_DNSPORT, OPT_SUBNET, OPT_CA (see parse_create_option).
create_agent() {
	local name=$1 veth table ca net prefix base host_addr agent_addr
	validate_name "${name}"
	veth=$(veth_name_for "${name}")
	table=$(table_name_for "${name}")
	ca=${OPT_CA:-$(default_ca_path)}
	check_ca_file "${ca}"

	# The existence checks run under the lock too, so two creates of one name
	# cannot both pass them (and the loser's rollback cannot remove the
	# winner's agent).
	take_lock
	if netns_exists "${name}"; then
		die "agent namespace '${name}' already exists (remove it with: paude-netns destroy ${name})"
	fi
	if link_exists "${veth}"; then
		die "interface ${veth} for '${name}' already exists (remove it with: paude-netns destroy ${name})"
	fi
	if table_exists "${table}"; then
		die "nft table inet ${table} already exists (remove it with: paude-netns destroy ${name})"
	fi

	local subnet
	if [[ -n ${OPT_SUBNET} ]]; then
		subnet=$(parse_subnet "${OPT_SUBNET}")
		read -r net prefix <<<"${subnet}"
		if subnet_in_use "${net}/${prefix}"; then
			die "--subnet ${net}/${prefix} overlaps an address or route in this namespace"
		fi
	else
		subnet=$(pick_free_subnet)
		read -r net prefix <<<"${subnet}"
	fi
	base=$(ip_to_int "${net}")
	host_addr=$(int_to_ip $((base + 1)))
	agent_addr=$(int_to_ip $((base + 2)))

	CREATING_AGENT=${name}
	BUILT_AGENT=${name}
	write_state "$(state_dir_for "${name}")" \
		"name=${name}" "veth=${veth}" "table=${table}" "subnet=${net}/${prefix}" \
		"host_addr=${host_addr}" "agent_addr=${agent_addr}" \
		"transparent_port=${OPT_TPORT}" "dns_port=${OPT_DNSPORT}"

	# Rules first: they match the veth by name, so they are in force before
	# the veth exists and no packet of the agent is ever unfiltered.
	load_rules "${table}" "${veth}" "${agent_addr}" "${OPT_TPORT}" "${OPT_DNSPORT}"

	ip netns add "${name}"
	ip link add "${veth}" type veth peer name "${AGENT_IFNAME}" netns "${name}"
	disable_ipv6_host_side "${veth}"
	disable_ipv6_agent_side "${name}"
	ip addr add "${host_addr}/${prefix}" dev "${veth}"
	ip -n "${name}" addr add "${agent_addr}/${prefix}" dev "${AGENT_IFNAME}"
	ip -n "${name}" link set lo up
	write_etc_overlay "${name}" "${host_addr}" "${ca}"

	ip link set "${veth}" up
	ip -n "${name}" link set "${AGENT_IFNAME}" up
	# Everything goes to the host side; nft decides what happens to it there.
	ip -n "${name}" route add default via "${host_addr}" dev "${AGENT_IFNAME}"

	release_lock
	CREATING_AGENT=""
	info "agent '${name}': ${agent_addr} via ${veth} (${host_addr}), TCP -> :${OPT_TPORT}, DNS -> :${OPT_DNSPORT}, nft table inet ${table}"
}

# Removes everything create_agent made, in an order that never leaves the
# agent with a path but no rules. Prints whether anything was there.
destroy_agent() {
	local name=$1 veth table found=0 pids
	validate_name "${name}"
	veth=$(read_state_value "${name}" veth)
	[[ ${veth} =~ ^pn[0-9a-f]{8}$ ]] || veth=$(veth_name_for "${name}")
	table=$(table_name_for "${name}")

	if netns_exists "${name}"; then
		mapfile -t pids < <(ip netns pids "${name}" 2>/dev/null || true)
		stop_pids "${pids[@]}"
	fi
	# The veth goes first: without it the agent has no path at all, so removing
	# its rules afterwards cannot open anything.
	# Each step warns instead of aborting: a cleanup that stops half-way
	# would leave more behind than one that carries on.
	if link_exists "${veth}"; then
		ip link del "${veth}" || warn "could not remove ${veth}"
		found=1
	fi
	if netns_exists "${name}"; then
		ip netns del "${name}" || warn "could not remove namespace ${name}"
		found=1
	fi
	if delete_rules "${table}"; then
		found=1
	fi
	local dir
	for dir in "$(etc_dir_for "${name}")" "$(state_dir_for "${name}")"; do
		if [[ -e ${dir} ]]; then
			rm -rf -- "${dir}" || warn "could not remove ${dir}"
			found=1
		fi
	done
	if ((found)); then
		info "agent '${name}' destroyed"
	else
		info "agent '${name}' does not exist; nothing to remove"
	fi
}
