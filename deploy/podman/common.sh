# shellcheck shell=bash
# Shared by the podman recipes: settings (override through the environment) and helpers.

# The image built from ./Containerfile: podman build -t localhost/paude-proxy:latest .
PAUDE_PROXY_IMAGE=${PAUDE_PROXY_IMAGE:-localhost/paude-proxy:latest}
# Your agent's image; it needs nothing from paude-proxy except the CA volume.
AGENT_IMAGE=${AGENT_IMAGE:-docker.io/library/node:22-bookworm-slim}
# What the agent may reach (README: agent presets).
ALLOWED_DOMAINS=${ALLOWED_DOMAINS:-@claude}
# The Containerfile's proxy UID, and the agent's.
readonly PROXY_UID=10001
readonly AGENT_UID=1000
# Temporary files removed on exit.
ENV_FILE=""

podman_bin() { printf '%s' "${PODMAN:-podman}"; }

# The routing table's value-holding credential variables, asked from the image (the same
# table the proxy uses; no second list here).
credential_vars() {
	local holds var
	while read -r holds var; do
		if [[ ${holds} == value && ${var} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then printf '%s\n' "${var}"; fi
	done < <("$(podman_bin)" run --rm "${PAUDE_PROXY_IMAGE}" routes --vars)
}

# Fills PROXY_CRED_ARGS with -e NAME for every credential variable set here (podman -e NAME
# copies the value without putting it on a command line) and AGENT_DUMMY_ARGS with
# -e NAME=paude-proxy-managed for every one of them.
PROXY_CRED_ARGS=()
AGENT_DUMMY_ARGS=()
credential_args() {
	local vars var
	vars=$(credential_vars)
	[[ -n ${vars} ]] || {
		printf 'cannot read the routing table from %s\n' "${PAUDE_PROXY_IMAGE}" >&2
		return 1
	}
	while IFS= read -r var; do
		if [[ -n ${!var:-} ]]; then PROXY_CRED_ARGS+=(-e "${var}"); fi
		AGENT_DUMMY_ARGS+=(-e "${var}=paude-proxy-managed")
	done <<<"${vars}"
}

remove_env_file() {
	if [[ -n ${ENV_FILE} ]]; then rm -f -- "${ENV_FILE}"; fi
}

# Waits until the proxy container answers its admin /healthz.
wait_healthy() {
	local name=$1 i
	for ((i = 0; i < 60; i++)); do
		if "$(podman_bin)" exec "${name}" /usr/local/bin/paude-proxy healthcheck >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.5
	done
	printf 'paude-proxy in %s did not become healthy\n' "${name}" >&2
	return 1
}
