# shellcheck shell=bash
# paude-netns: the environment an agent gets from `exec` and `run`.
#
# The agent starts from an EMPTY environment. It gets only: the allowlist below
# (from the caller, when set), what --env/--env-file name, the CA trust
# variables and one stand-in per credential variable of the proxy's routing
# table. Both lists come from the paude-proxy binary (`ca env`, `routes
# --vars`), so there is no second copy here that could drift.

# Inherited from the caller when set, plus every LC_* variable.
readonly ALLOWED_ENV_VARS=(PATH HOME USER LOGNAME TERM LANG LANGUAGE TZ)

# The value the agent holds instead of a real credential; the proxy overwrites
# it on the way out.
readonly DUMMY_CREDENTIAL=paude-proxy-managed

# Never given to the agent, even through --env: proxy settings would route
# around the transparent path.
readonly PROXY_ENV_VARS=(
	HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY FTP_PROXY
	http_proxy https_proxy all_proxy no_proxy ftp_proxy
)

readonly ENV_NAME_PATTERN='^[A-Za-z_][A-Za-z0-9_]*$'

# --env / --env-file of exec and run, in the order given (later wins).
OPT_ENV=()
OPT_ENV_FILES=()

# Consumes one agent-environment option from "$@"; sets SHIFT_BY like
# parse_create_option.
parse_env_option() {
	SHIFT_BY=0
	case $1 in
	--env | --env-file)
		(($# >= 2)) || usage_error "$1 needs a value"
		set_env_option "$1" "$2"
		SHIFT_BY=2
		;;
	--env=* | --env-file=*)
		set_env_option "${1%%=*}" "${1#*=}"
		SHIFT_BY=1
		;;
	esac
}

set_env_option() {
	case $1 in
	--env)
		[[ ${2%%=*} =~ ${ENV_NAME_PATTERN} ]] || usage_error "--env: '${2%%=*}' is not a variable name"
		OPT_ENV+=("$2")
		;;
	--env-file)
		[[ -r $2 ]] || usage_error "--env-file: '$2' is not readable"
		OPT_ENV_FILES+=("$2")
		;;
	esac
}

# The paude-proxy binary: PAUDE_PROXY_BIN, else the one on PATH. Required: it
# alone knows which variables are credentials and which runtimes need which
# CA variable.
proxy_bin() {
	local bin=${PAUDE_PROXY_BIN:-}
	if [[ -z ${bin} ]]; then
		bin=$(command -v paude-proxy 2>/dev/null) ||
			die "paude-proxy not found: put it on PATH or set PAUDE_PROXY_BIN (it says which variables are credentials)"
	fi
	[[ -x ${bin} ]] || die "PAUDE_PROXY_BIN '${bin}' is not executable"
	printf '%s' "${bin}"
}

# Prints `HOLDS NAME` lines (value|path|unset) for the proxy's routing table:
# the embedded one, or PAUDE_PROXY_CREDENTIALS_CONFIG. Fails closed.
credential_vars() {
	local bin out
	bin=$(proxy_bin)
	out=$("${bin}" routes --vars) ||
		die "cannot read the credential routing table (PAUDE_PROXY_CREDENTIALS_CONFIG='${PAUDE_PROXY_CREDENTIALS_CONFIG:-}')"
	printf '%s\n' "${out}"
}

# Prints `NAME=VALUE` lines of the CA trust variables for BUNDLE.
trust_vars() {
	local bundle=$1 bin out
	bin=$(proxy_bin)
	out=$("${bin}" ca env --no-proxy --format plain --bundle "${bundle}" --cert-dir "${bundle%/*}") ||
		die "'paude-proxy ca env' failed"
	printf '%s\n' "${out}"
}

# The stub Application Default Credentials the agent holds when the proxy has a
# gcloud credential: the same JSON `paude-proxy stub-adc` prints. Google's
# libraries use it to ask oauth2.googleapis.com for a token, which the proxy
# answers itself with a placeholder, then injects the real token on the way out.
readonly STUB_ADC_JSON='{
  "type": "authorized_user",
  "client_id": "paude-proxy-managed",
  "client_secret": "paude-proxy-managed",
  "refresh_token": "paude-proxy-managed",
  "universe_domain": "googleapis.com"
}'

# True when the caller's environment carries Google credentials for the proxy
# (or PAUDE_NETNS_GCLOUD=1 says the proxy, running elsewhere, has them).
gcloud_configured() {
	[[ -n ${GCP_ADC_JSON:-} || -n ${GOOGLE_APPLICATION_CREDENTIALS:-} || ${PAUDE_NETNS_GCLOUD:-0} == 1 ]]
}

# Writes the stub ADC where the agent can read it and prints its path.
write_stub_adc() {
	local name=$1 file
	file="$(etc_dir_for "${name}")/paude-proxy-adc.json"
	printf '%s\n' "${STUB_ADC_JSON}" >"${file}"
	chmod 0644 "${file}"
	printf '%s' "${file}"
}

# A file named by a credential variable that holds a path: the stub the agent
# gets instead, or nothing (then the variable stays unset). Providers with
# stub files add a case here.
stub_file_for() {
	local var=$1 name=$2
	case ${var} in
	GOOGLE_APPLICATION_CREDENTIALS)
		if gcloud_configured; then write_stub_adc "${name}"; fi
		;;
	esac
}

is_proxy_var() {
	local var=$1 p
	for p in "${PROXY_ENV_VARS[@]}"; do
		[[ ${var} == "${p}" ]] && return 0
	done
	return 1
}

# Fills AGENT_ENV with NAME=VALUE words for agent NAME.
AGENT_ENV=()
build_agent_env() {
	local name=$1 bundle creds trust holds var line file stub locale_vars
	local -A env=() credential=()
	bundle=$(bundle_path_for "${name}")
	creds=$(credential_vars)
	trust=$(trust_vars "${bundle}")

	mapfile -t locale_vars < <(compgen -e LC_ || true)
	for var in "${ALLOWED_ENV_VARS[@]}" "${locale_vars[@]}"; do
		if [[ -v ${var} ]]; then env[${var}]=${!var}; fi
	done

	while read -r holds var; do
		[[ -z ${var} ]] && continue
		[[ ${var} =~ ${ENV_NAME_PATTERN} ]] || die "the routing table names an invalid variable '${var}'"
		credential[${var}]=${holds}
	done <<<"${creds}"

	local entries=("${OPT_ENV[@]}")
	for file in "${OPT_ENV_FILES[@]}"; do
		while IFS= read -r line || [[ -n ${line} ]]; do
			line=${line#"${line%%[![:space:]]*}"}
			[[ -z ${line} || ${line} == '#'* ]] && continue
			line=${line#export }
			[[ ${line} == *=* && ${line%%=*} =~ ${ENV_NAME_PATTERN} ]] ||
				usage_error "--env-file ${file}: expected NAME=VALUE lines, got '${line%%=*}...'"
			entries+=("${line}")
		done <"${file}"
	done
	for line in "${entries[@]}"; do
		var=${line%%=*}
		if [[ -v credential[${var}] ]]; then
			usage_error "--env ${var}: a credential variable of the proxy; the agent gets a stand-in for it"
		fi
		if is_proxy_var "${var}"; then
			usage_error "--env ${var}: proxy settings would route around the transparent path"
		fi
		if [[ ${line} == *=* ]]; then
			env[${var}]=${line#*=}
		elif [[ -v ${var} ]]; then
			env[${var}]=${!var}
		fi
	done

	while IFS= read -r line; do
		[[ -z ${line} ]] && continue
		var=${line%%=*}
		[[ ${var} =~ ${ENV_NAME_PATTERN} ]] || die "'paude-proxy ca env' printed an invalid line"
		env[${var}]=${line#*=}
	done <<<"${trust}"

	for var in "${!credential[@]}"; do
		case ${credential[${var}]} in
		value) env[${var}]=${DUMMY_CREDENTIAL} ;;
		path)
			unset 'env[${var}]'
			stub=$(stub_file_for "${var}" "${name}")
			if [[ -n ${stub} ]]; then env[${var}]=${stub}; fi
			;;
		*) unset 'env[${var}]' ;;
		esac
	done

	AGENT_ENV=()
	for var in "${!env[@]}"; do
		AGENT_ENV+=("${var}=${env[${var}]}")
	done
}

# Replaces this process with CMD inside agent NAME, in the agent environment.
exec_agent() {
	local name=$1
	shift
	# Subscription agents read their stub credentials file from their home.
	install_subscription_stubs
	build_agent_env "${name}"
	exec ip netns exec "${name}" env -i -- "${AGENT_ENV[@]}" "$@"
}
