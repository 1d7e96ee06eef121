# shellcheck shell=bash
# Shared by scripts/paude-netns and scripts/paude-pod: render nft rule
# templates (nft/) with @KEY@ placeholders and load them in one transaction.

# Prints the directory holding the templates: $1 (an override, may be empty)
# or $2 (the default next to the script).
nft_dir_or() {
	local override=$1 default=$2 dir
	dir=${override:-${default}}
	[[ -d ${dir} ]] || die "nft rule templates not found in '${dir}'"
	printf '%s' "${dir}"
}

# render_templates DIR KEY VALUE [KEY VALUE]...: prints every DIR/*.nft with
# @KEY@ replaced by VALUE. Callers validate every value first (names, ports,
# addresses, UIDs), so none can inject nft syntax; '|' and newlines are refused
# here as a second lock because they would break the sed expression.
render_templates() {
	local dir=$1 file found=0 args=()
	shift
	while (($# >= 2)); do
		[[ $2 != *'|'* && $2 != *$'\n'* && $2 != *'\'* ]] || die "refusing to render nft value '$2'"
		args+=(-e "s|@$1@|$2|g")
		shift 2
	done
	for file in "${dir}"/*.nft; do
		[[ -e ${file} ]] || continue
		found=1
		sed "${args[@]}" "${file}"
	done
	((found)) || die "no *.nft templates in '${dir}'"
}

# All roles go in through one `nft -f`, which is a single transaction: either
# the whole ruleset exists or none of it does.
load_ruleset() {
	local rules=$1
	if [[ ${rules} =~ @[A-Z_]+@ ]]; then
		die "an nft template uses a placeholder this script does not know"
	fi
	printf '%s\n' "${rules}" | nft -f - || die "loading nft rules failed (is the nf_tables kernel module available?)"
}
