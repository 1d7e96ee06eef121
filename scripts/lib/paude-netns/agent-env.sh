# shellcheck shell=bash
# paude-netns: the environment an agent gets from `exec`.

# Every runtime's "trust this CA bundle" variable (OpenSSL/Go/Python, Node,
# requests, curl, git, cargo, pip, Deno, AWS SDKs, gcloud CLI, gRPC, httplib2,
# Nix). Any of them inherited from the caller would point at roots without the
# proxy CA, so all are overwritten. SSL_CERT_DIR points at the hashed directory
# of the same overlay for OpenSSL capath users.
readonly TRUST_ENV_VARS=(
	SSL_CERT_FILE NODE_EXTRA_CA_CERTS REQUESTS_CA_BUNDLE CURL_CA_BUNDLE
	GIT_SSL_CAINFO CARGO_HTTP_CAINFO PIP_CERT DENO_CERT AWS_CA_BUNDLE
	CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE GRPC_DEFAULT_SSL_ROOTS_FILE_PATH
	HTTPLIB2_CA_CERTS NIX_SSL_CERT_FILE
)

# The value the agent holds instead of a real credential; the proxy overwrites
# it on the way out.
readonly DUMMY_CREDENTIAL=paude-proxy-managed

# Mirrors the credential env vars of the proxy's embedded routing table.
readonly DEFAULT_CREDENTIAL_ENV_VARS=(CLAUDE_CODE_OAUTH_TOKEN ANTHROPIC_API_KEY OPENAI_API_KEY CURSOR_API_KEY GH_TOKEN)

# Never inherited by the agent: proxy settings would route around the
# transparent path, and these Google variables carry a real credential (inline
# JSON) or the path to one; the agent gets a stub ADC instead (write_stub_adc).
readonly STRIPPED_ENV_VARS=(
	HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY FTP_PROXY
	http_proxy https_proxy all_proxy no_proxy ftp_proxy
	GCP_ADC_JSON GOOGLE_APPLICATION_CREDENTIALS
)

readonly ENV_NAME_PATTERN='^[A-Za-z_][A-Za-z0-9_]*$'

# Prints the env var names of the non-gcloud entries of a credentials JSON
# ({credentials:[{env_var, injector, ...}]}), one per line. gcloud entries name
# a file path, not a secret value, so a dummy string would only break SDKs.
credential_vars_from_config() {
	local file=$1
	if command -v jq >/dev/null 2>&1; then
		jq -r '.credentials[] | select(.injector | IN("gcloud", "anthropic_oauth", "chatgpt") | not) | .env_var
			| if type == "string" then . else error("env_var must be a string") end' -- "${file}"
	elif command -v python3 >/dev/null 2>&1; then
		python3 -c '
import json, sys
with open(sys.argv[1]) as f:
    for entry in json.load(f)["credentials"]:
        if entry.get("injector") not in ("gcloud", "anthropic_oauth", "chatgpt"):
            print(entry["env_var"])
' "${file}"
	else
		return 2
	fi
}

# Prints every credential env var the agent must hold a dummy for: the default
# table plus whatever PAUDE_PROXY_CREDENTIALS_CONFIG names. The defaults are
# always included so that a real key in the caller's environment never reaches
# the agent, whatever the config says.
credential_env_vars() {
	local config=${PAUDE_PROXY_CREDENTIALS_CONFIG:-} names rc var
	printf '%s\n' "${DEFAULT_CREDENTIAL_ENV_VARS[@]}"
	[[ -n ${config} ]] || return 0
	[[ -r ${config} ]] || die "PAUDE_PROXY_CREDENTIALS_CONFIG '${config}' is not readable"
	rc=0
	names=$(credential_vars_from_config "${config}") || rc=$?
	if ((rc == 2)); then
		warn "neither jq nor python3 found: using the default credential list, not ${config}"
		return 0
	fi
	# Fail closed: if we cannot tell which variables are credentials, a real
	# value in the caller's environment could leak into the agent.
	((rc == 0)) || die "cannot parse PAUDE_PROXY_CREDENTIALS_CONFIG '${config}' (expected {\"credentials\":[{\"env_var\":...}]})"
	while IFS= read -r var; do
		[[ -z ${var} ]] && continue
		[[ ${var} =~ ${ENV_NAME_PATTERN} ]] || die "credentials config names an invalid env var '${var}'"
		printf '%s\n' "${var}"
	done <<<"${names}"
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

# Applies the agent environment to the current shell (called right before
# exec-ing into the namespace).
apply_agent_env() {
	local name=$1 bundle var vars stub=""
	bundle=$(bundle_path_for "${name}")
	if gcloud_configured; then
		stub=$(write_stub_adc "${name}")
	fi
	install_subscription_stubs
	for var in "${STRIPPED_ENV_VARS[@]}"; do
		unset "${var}"
	done
	if [[ -n ${stub} ]]; then
		export GOOGLE_APPLICATION_CREDENTIALS="${stub}"
	fi
	for var in "${TRUST_ENV_VARS[@]}"; do
		export "${var}=${bundle}"
	done
	export SSL_CERT_DIR="${bundle%/*}"
	vars=$(credential_env_vars)
	while IFS= read -r var; do
		export "${var}=${DUMMY_CREDENTIAL}"
	done <<<"${vars}"
}
