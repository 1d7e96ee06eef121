# shellcheck shell=bash
# paude-netns: render the nft/ role templates for one agent and load them
# (the rendering itself is ../shared/nft.sh, shared with paude-pod).

# Templates ship next to the script (repo: nft/). Installs that put them
# elsewhere set PAUDE_NETNS_NFT_DIR.
nft_template_dir() {
	nft_dir_or "${PAUDE_NETNS_NFT_DIR:-}" "${SELF_DIR}/../nft"
}

# Prints the complete ruleset for one agent. Every value substituted here was
# validated before (name pattern, port range, IPv4 syntax).
render_rules() {
	local table=$1 veth=$2 agent_addr=$3 tport=$4 dnsport=$5 dir
	dir=$(nft_template_dir)
	render_templates "${dir}" TABLE "${table}" VETH "${veth}" AGENT_ADDR "${agent_addr}" \
		TPORT "${tport}" DNSPORT "${dnsport}"
}

load_rules() {
	local rules
	rules=$(render_rules "$@")
	load_ruleset "${rules}"
}

delete_rules() {
	local table=$1
	if table_exists "${table}"; then
		nft delete table inet "${table}" || warn "could not delete nft table inet ${table}"
		return 0
	fi
	return 1
}
