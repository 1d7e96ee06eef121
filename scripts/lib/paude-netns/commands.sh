# shellcheck shell=bash
# paude-netns: the create, exec, run and destroy commands.

OPT_TPORT=${DEFAULT_TRANSPARENT_PORT}
OPT_DNSPORT=${DEFAULT_DNS_PORT}
OPT_SUBNET=""
OPT_CA=""

# Consumes one create option from "$@"; sets SHIFT_BY to the number of words
# used, or 0 if the first word is not a create option.
parse_create_option() {
	SHIFT_BY=0
	local opt=$1
	case ${opt} in
	--transparent-port | --dns-port | --subnet | --ca)
		(($# >= 2)) || usage_error "${opt} needs a value"
		set_create_option "${opt}" "$2"
		SHIFT_BY=2
		;;
	--transparent-port=* | --dns-port=* | --subnet=* | --ca=*)
		set_create_option "${opt%%=*}" "${opt#*=}"
		SHIFT_BY=1
		;;
	esac
}

set_create_option() {
	case $1 in
	--transparent-port)
		validate_port --transparent-port "$2"
		OPT_TPORT=$((10#$2))
		;;
	--dns-port)
		validate_port --dns-port "$2"
		OPT_DNSPORT=$((10#$2))
		;;
	--subnet)
		# Validated now, so a bad value is a usage error before anything is made.
		parse_subnet "$2" >/dev/null
		OPT_SUBNET=$2
		;;
	--ca) OPT_CA=$2 ;;
	esac
}

cmd_create() {
	local name=""
	while (($# > 0)); do
		case $1 in
		-h | --help)
			usage_create
			return 0
			;;
		esac
		parse_create_option "$@"
		if ((SHIFT_BY > 0)); then
			shift "${SHIFT_BY}"
			continue
		fi
		case $1 in
		-*) usage_error "create: unknown option '$1'" ;;
		*)
			[[ -z ${name} ]] || usage_error "create: unexpected argument '$1'"
			name=$1
			;;
		esac
		shift
	done
	[[ -n ${name} ]] || usage_error "create: NAME is required"
	validate_name "${name}"
	require_root
	require_tools
	# Checked before anything is made: a namespace registered from a private
	# mount namespace would vanish when we exit, leaving half an agent.
	if ! mount_ns_outlives_us; then
		die "this process has a private mount namespace that ends when it exits (as under 'ip netns exec'), so namespace '${name}' would vanish with it; run paude-netns under 'nsenter --net=PATH' instead, or use 'paude-netns run'"
	fi

	trap 'rollback_create' EXIT
	create_agent "${name}"
	trap - EXIT
}

rollback_create() {
	local rc=$?
	trap - EXIT
	if [[ -n ${CREATING_AGENT} ]]; then
		warn "create of '${CREATING_AGENT}' failed; removing what was made"
		destroy_agent "${CREATING_AGENT}" 2>/dev/null || true
	fi
	exit "${rc}"
}

# Replaces this process with CMD inside the agent namespace.
cmd_exec() {
	local name=""
	while (($# > 0)); do
		case $1 in
		-h | --help)
			usage_exec
			return 0
			;;
		--)
			shift
			break
			;;
		esac
		parse_env_option "$@"
		if ((SHIFT_BY > 0)); then
			shift "${SHIFT_BY}"
			continue
		fi
		case $1 in
		-*) usage_error "exec: unknown option '$1'" ;;
		*)
			[[ -z ${name} ]] || usage_error "exec: unexpected argument '$1' (put the command after --)"
			name=$1
			;;
		esac
		shift
	done
	[[ -n ${name} ]] || usage_error "exec: NAME is required"
	(($# > 0)) || usage_error "exec: a command is required after --"
	validate_name "${name}"
	require_root
	require_tools
	netns_exists "${name}" || die "no agent namespace '${name}' (create it first: paude-netns create ${name})"
	if ! ip netns exec "${name}" true 2>/dev/null; then
		die "namespace '${name}' is registered but not usable (it was probably created under 'ip netns exec'); run 'paude-netns destroy ${name}' and create it again"
	fi
	# The agent's end of the veth dies with the other end, i.e. when the
	# proxy's namespace is gone: the agent would have no way out at all.
	if ! ip -n "${name}" link show dev "${AGENT_IFNAME}" >/dev/null 2>&1; then
		die "agent '${name}' is stale: its link to the proxy's namespace is gone (was the proxy's container or namespace removed?); run 'paude-netns destroy ${name}' and create it again next to the proxy"
	fi
	exec_agent "${name}" "$@"
}

cmd_destroy() {
	local name=""
	while (($# > 0)); do
		case $1 in
		-h | --help)
			usage_destroy
			return 0
			;;
		-*) usage_error "destroy: unknown option '$1'" ;;
		*)
			[[ -z ${name} ]] || usage_error "destroy: unexpected argument '$1'"
			name=$1
			;;
		esac
		shift
	done
	[[ -n ${name} ]] || usage_error "destroy: NAME is required"
	validate_name "${name}"
	require_root
	require_tools
	destroy_agent "${name}"
}

RUN_NAME=""
RUN_CHILD=""

cmd_run() {
	local name=""
	while (($# > 0)); do
		case $1 in
		-h | --help)
			usage_run
			return 0
			;;
		--)
			shift
			break
			;;
		--name)
			(($# >= 2)) || usage_error "--name needs a value"
			validate_name "$2"
			name=$2
			shift 2
			continue
			;;
		--name=*)
			name=${1#*=}
			validate_name "${name}"
			shift
			continue
			;;
		esac
		parse_create_option "$@"
		if ((SHIFT_BY == 0)); then parse_env_option "$@"; fi
		((SHIFT_BY > 0)) || usage_error "run: unknown argument '$1' (put the command after --)"
		shift "${SHIFT_BY}"
	done
	(($# > 0)) || usage_error "run: a command is required after --"
	require_root
	require_tools

	if [[ -n ${name} ]]; then
		# An existing agent of that name is refused by create_agent, and not
		# cleaned up: BUILT_AGENT is only set once this run builds it.
		RUN_NAME=${name}
	else
		RUN_NAME="run-$$"
		while netns_exists "${RUN_NAME}"; do
			RUN_NAME="run-$$-${RANDOM}"
		done
	fi

	trap 'run_cleanup' EXIT
	trap 'run_on_signal INT 130' INT
	trap 'run_on_signal TERM 143' TERM
	trap 'run_on_signal HUP 129' HUP
	create_agent "${RUN_NAME}"

	# CMD runs as a background job so that `wait` (unlike a foreground
	# command) is interrupted by our signal traps. <&0 keeps the terminal as
	# its stdin (bash would give a background job /dev/null), and the job
	# restores default signal handling so that CMD sees Ctrl-C as usual.
	(
		trap - INT QUIT TERM HUP EXIT
		exec_agent "${RUN_NAME}" "$@"
	) <&0 &
	RUN_CHILD=$!

	local status=0
	wait "${RUN_CHILD}" || status=$?
	RUN_CHILD=""
	exit "${status}"
}

# Forwards the signal to CMD, gives it STOP_GRACE_SECONDS, then SIGKILL; the
# EXIT trap then removes the namespace.
run_on_signal() {
	local sig=$1 code=$2 deadline
	trap '' INT TERM HUP
	if [[ -n ${RUN_CHILD} ]] && kill -0 "${RUN_CHILD}" 2>/dev/null; then
		kill -"${sig}" "${RUN_CHILD}" 2>/dev/null || true
		deadline=$((SECONDS + STOP_GRACE_SECONDS))
		while kill -0 "${RUN_CHILD}" 2>/dev/null && ((SECONDS < deadline)); do
			sleep "${STOP_POLL_SECONDS}"
		done
		kill -KILL "${RUN_CHILD}" 2>/dev/null || true
		wait "${RUN_CHILD}" 2>/dev/null || true
	fi
	RUN_CHILD=""
	exit "${code}"
}

run_cleanup() {
	local rc=$?
	trap - EXIT
	trap '' INT TERM HUP
	if [[ -n ${RUN_CHILD} ]]; then
		stop_pids "${RUN_CHILD}"
	fi
	if [[ -n ${BUILT_AGENT} ]]; then
		destroy_agent "${BUILT_AGENT}" || warn "cleanup of '${BUILT_AGENT}' failed"
	fi
	exit "${rc}"
}
