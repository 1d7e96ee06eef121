# shellcheck shell=bash
# paude-netns: render the nft/ role templates for one agent and load them.

# Templates ship next to the script (repo: nft/). Installs that put them
# elsewhere set PAUDE_NETNS_NFT_DIR.
nft_template_dir() {
	local dir=${PAUDE_NETNS_NFT_DIR:-${SELF_DIR}/../nft}
	[[ -d ${dir} ]] || die "nft rule templates not found in '${dir}' (set PAUDE_NETNS_NFT_DIR)"
	printf '%s' "${dir}"
}

# Prints the complete ruleset for one agent. Every value substituted here was
# validated before (name pattern, port range, IPv4 syntax), so none can inject
# nft syntax.
render_rules() {
	local table=$1 veth=$2 agent_addr=$3 tport=$4 dnsport=$5 dir file found=0
	dir=$(nft_template_dir)
	for file in "${dir}"/*.nft; do
		[[ -e ${file} ]] || continue
		found=1
		sed -e "s|@TABLE@|${table}|g" \
			-e "s|@VETH@|${veth}|g" \
			-e "s|@AGENT_ADDR@|${agent_addr}|g" \
			-e "s|@TPORT@|${tport}|g" \
			-e "s|@DNSPORT@|${dnsport}|g" \
			"${file}"
	done
	((found)) || die "no *.nft templates in '${dir}'"
}

# All roles go in through one `nft -f`, which is a single transaction: either
# the whole table exists or none of it does.
load_rules() {
	local rules
	rules=$(render_rules "$@")
	if [[ ${rules} =~ @[A-Z_]+@ ]]; then
		die "an nft template uses a placeholder this script does not know"
	fi
	printf '%s\n' "${rules}" | nft -f - || die "loading nft rules failed (is the nf_tables kernel module available?)"
}

delete_rules() {
	local table=$1
	if table_exists "${table}"; then
		nft delete table inet "${table}" || warn "could not delete nft table inet ${table}"
		return 0
	fi
	return 1
}
