# shellcheck shell=bash
# paude-netns: the placeholder credentials files a subscription agent holds.
#
# ANTHROPIC_OAUTH_CREDS_FILE and CHATGPT_AUTH_FILE name FILES the proxy reads
# (like GOOGLE_APPLICATION_CREDENTIALS), not secret values: the agent gets a
# stub file where its CLI looks (Claude Code: ~/.claude/.credentials.json or
# $CLAUDE_CONFIG_DIR; Codex: ${CODEX_HOME:-~/.codex}/auth.json), never the
# variables themselves. The stubs are the JSON `paude-proxy stub claude` and
# `paude-proxy stub codex` print (a test keeps them equal).

readonly STUB_CLAUDE_JSON='{
  "claudeAiOauth": {
    "accessToken": "paude-proxy-managed",
    "expiresAt": 4102444800000,
    "refreshToken": "paude-proxy-managed",
    "scopes": [
      "user:inference",
      "user:profile"
    ]
  }
}'

readonly STUB_CODEX_JSON='{
  "OPENAI_API_KEY": null,
  "auth_mode": "chatgpt",
  "last_refresh": "2100-01-01T00:00:00Z",
  "tokens": {
    "access_token": "paude-proxy-managed-access",
    "account_id": "paude-proxy-managed-account",
    "id_token": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjaGF0Z3B0X2FjY291bnRfaWQiOiJwYXVkZS1wcm94eS1tYW5hZ2VkLWFjY291bnQiLCJlbWFpbCI6InBhdWRlLXByb3h5LW1hbmFnZWRAcGF1ZGUtcHJveHkuaW52YWxpZCIsImV4cCI6NDEwMjQ0NDgwMCwiaHR0cHM6Ly9hcGkub3BlbmFpLmNvbS9hdXRoIjp7ImNoYXRncHRfYWNjb3VudF9pZCI6InBhdWRlLXByb3h5LW1hbmFnZWQtYWNjb3VudCIsImNoYXRncHRfcGxhbl90eXBlIjoicGx1cyJ9fQ.cGF1ZGUtcHJveHktbWFuYWdlZA",
    "refresh_token": "paude-proxy-managed-refresh"
  }
}'

# Path variables of the subscription routes: never inherited by the agent.
readonly SUBSCRIPTION_PATH_VARS=(ANTHROPIC_OAUTH_CREDS_FILE CHATGPT_AUTH_FILE PAUDE_PROXY_CHATGPT_AUTH_STATE_FILE)

# Writes `text` to `file` (mode 0600) unless a real credentials file is there:
# an existing file that is not a paude-proxy stub is left alone, with a warning.
install_stub_file() {
	local file=$1 text=$2 dir
	dir=${file%/*}
	if [[ -e ${file} ]] && ! grep -q 'paude-proxy-managed' -- "${file}"; then
		warn "${file} holds real credentials: not replaced by a stub (the agent can read it)"
		return 0
	fi
	mkdir -p -- "${dir}"
	chmod 0700 -- "${dir}"
	(
		umask 077
		printf '%s\n' "${text}" >"${file}"
	)
}

# Installs the stubs for the subscriptions the caller's environment configures
# (or PAUDE_NETNS_CLAUDE=1 / PAUDE_NETNS_CODEX=1 for a proxy running elsewhere),
# then drops the path variables from the environment.
install_subscription_stubs() {
	local home=${HOME:-}
	if [[ -n ${ANTHROPIC_OAUTH_CREDS_FILE:-} || ${PAUDE_NETNS_CLAUDE:-0} == 1 ]]; then
		[[ -n ${home} ]] || die "HOME is unset: cannot install the Claude stub credentials"
		install_stub_file "${CLAUDE_CONFIG_DIR:-${home}/.claude}/.credentials.json" "${STUB_CLAUDE_JSON}"
	fi
	if [[ -n ${CHATGPT_AUTH_FILE:-} || ${PAUDE_NETNS_CODEX:-0} == 1 ]]; then
		[[ -n ${home} ]] || die "HOME is unset: cannot install the Codex stub credentials"
		install_stub_file "${CODEX_HOME:-${home}/.codex}/auth.json" "${STUB_CODEX_JSON}"
	fi
	local var
	for var in "${SUBSCRIPTION_PATH_VARS[@]}"; do
		unset "${var}"
	done
}
