# shellcheck shell=bash
# paude-pod: the apply and remove commands.

# One table per namespace: the pod has one proxy, and `apply` replaces it.
readonly POD_TABLE=paude-pod

# Numeric only: a user name would be resolved in this container's /etc/passwd,
# which need not match the proxy container's.
readonly UID_PATTERN='^[0-9]{1,10}$'
readonly UID_MAX=4294967294

pod_template_dir() {
	nft_dir_or "${PAUDE_POD_NFT_DIR:-}" "${SELF_DIR}/../nft/pod"
}

validate_uid() {
	local value=$1
	if [[ ! ${value} =~ ${UID_PATTERN} ]] || ((10#${value} > UID_MAX)); then
		usage_error "--proxy-uid must be a numeric UID, got '${value}'"
	fi
	# With UID 0 exempt, anything running as root in the pod would go out
	# unfiltered; the proxy needs no root.
	((10#${value} != 0)) || usage_error "--proxy-uid 0: run the proxy as a dedicated non-root UID"
}

# Prints the ruleset: the table is created (if absent) and deleted first, in
# the same transaction, so a re-apply replaces it atomically.
render_pod_rules() {
	local uid=$1 tport=$2 dnsport=$3 local_ports=$4 dir elements=""
	dir=$(pod_template_dir)
	if [[ -n ${local_ports} ]]; then
		elements="elements = { ${local_ports} }"
	fi
	printf 'table inet %s {}\ndelete table inet %s\n' "${POD_TABLE}" "${POD_TABLE}"
	render_templates "${dir}" TABLE "${POD_TABLE}" PROXY_UID "${uid}" \
		TPORT "${tport}" DNSPORT "${dnsport}" LOCAL_PORTS "${elements}"
}

cmd_apply() {
	local uid="" tport=${DEFAULT_TRANSPARENT_PORT} dnsport=${DEFAULT_DNS_PORT} ports=() opt value
	while (($# > 0)); do
		opt=$1
		case ${opt} in
		-h | --help)
			usage_apply
			return 0
			;;
		--proxy-uid | --transparent-port | --dns-port | --allow-local-port)
			(($# >= 2)) || usage_error "${opt} needs a value"
			value=$2
			shift 2
			;;
		--proxy-uid=* | --transparent-port=* | --dns-port=* | --allow-local-port=*)
			value=${opt#*=}
			opt=${opt%%=*}
			shift
			;;
		*) usage_error "apply: unknown argument '${opt}'" ;;
		esac
		case ${opt} in
		--proxy-uid)
			validate_uid "${value}"
			uid=$((10#${value}))
			;;
		--transparent-port)
			validate_port "${opt}" "${value}"
			tport=$((10#${value}))
			;;
		--dns-port)
			validate_port "${opt}" "${value}"
			dnsport=$((10#${value}))
			;;
		--allow-local-port)
			validate_port "${opt}" "${value}"
			ports+=("$((10#${value}))")
			;;
		esac
	done
	[[ -n ${uid} ]] || usage_error "apply: --proxy-uid UID is required"
	((tport != dnsport)) || usage_error "--transparent-port and --dns-port must differ"
	require_nft

	local list="" p rules
	for p in "${ports[@]}"; do
		[[ ${p} != "${tport}" && ${p} != "${dnsport}" ]] ||
			usage_error "--allow-local-port ${p} is a proxy listener port; the agent reaches it through the redirect"
		[[ ,${list}, == *",${p},"* ]] || list=${list:+${list}, }${p}
	done
	rules=$(render_pod_rules "${uid}" "${tport}" "${dnsport}" "${list}")
	load_ruleset "${rules}"
	info "nft table inet ${POD_TABLE}: UID ${uid} untouched; every other UID: TCP -> 127.0.0.1:${tport}, DNS -> :${dnsport}, local ports open: ${list:-none}, everything else rejected"
}

cmd_remove() {
	while (($# > 0)); do
		case $1 in
		-h | --help)
			usage_remove
			return 0
			;;
		*) usage_error "remove: unexpected argument '$1'" ;;
		esac
	done
	require_nft
	if table_exists "${POD_TABLE}"; then
		nft delete table inet "${POD_TABLE}" || die "could not delete nft table inet ${POD_TABLE}"
		info "nft table inet ${POD_TABLE} removed"
	else
		info "nft table inet ${POD_TABLE} does not exist; nothing to remove"
	fi
}
