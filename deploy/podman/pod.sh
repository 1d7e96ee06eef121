#!/usr/bin/env bash
# Pod mode with podman (rootless works: the pod owns its network namespace): the proxy and
# the agent share one pod; `paude-pod apply` contains every UID but the proxy's, so the
# agent needs no proxy settings at all and nothing but the proxy can get out.
#
#   ANTHROPIC_API_KEY=sk-ant-... deploy/podman/pod.sh [CMD [ARG...]]
#
# The pod (and its volume) are removed when CMD exits.
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=deploy/podman/common.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/common.sh"

readonly POD=${PAUDE_POD_NAME:-paude-agent}
readonly VOLUME="${POD}-ca"
readonly TRANSPARENT_PORT=3129
readonly DNS_PORT=3153

cleanup() {
	local podman
	podman=$(podman_bin)
	"${podman}" pod rm -f "${POD}" >/dev/null 2>&1 || true
	"${podman}" volume rm -f "${VOLUME}" >/dev/null 2>&1 || true
}

main() {
	local podman
	podman=$(podman_bin)
	credential_args
	trap 'cleanup; remove_env_file' EXIT
	"${podman}" pod create --name "${POD}" >/dev/null
	"${podman}" volume create "${VOLUME}" >/dev/null

	# 1. The rules, before anything else runs in the pod.
	"${podman}" run --rm --pod "${POD}" --user 0:0 --cap-drop all --cap-add NET_ADMIN \
		--entrypoint /usr/local/bin/paude-pod "${PAUDE_PROXY_IMAGE}" \
		apply --proxy-uid "${PROXY_UID}" --transparent-port "${TRANSPARENT_PORT}" --dns-port "${DNS_PORT}"

	# 2. The proxy, as the one UID the rules leave alone, on loopback listeners.
	"${podman}" run -d --pod "${POD}" --name "${POD}-proxy" --user "${PROXY_UID}:${PROXY_UID}" \
		--cap-drop all \
		-e ALLOWED_DOMAINS="${ALLOWED_DOMAINS}" -e PAUDE_PROXY_CA_DIR=/data/ca \
		-e PAUDE_PROXY_LISTEN=127.0.0.1:3128 \
		-e PAUDE_PROXY_TRANSPARENT_LISTEN="127.0.0.1:${TRANSPARENT_PORT}" \
		-e PAUDE_PROXY_DNS_LISTEN="127.0.0.1:${DNS_PORT}" \
		"${PROXY_CRED_ARGS[@]}" -v "${VOLUME}:/data/ca" "${PAUDE_PROXY_IMAGE}" >/dev/null
	wait_healthy "${POD}-proxy"

	# 3. The agent: dummy keys, the CA, no proxy settings.
	ENV_FILE=$(mktemp)
	"${podman}" run --rm "${PAUDE_PROXY_IMAGE}" ca env --no-proxy --format plain \
		--bundle /data/ca/ca.crt >"${ENV_FILE}"
	(($# > 0)) || set -- bash
	"${podman}" run --rm -it --pod "${POD}" --user "${AGENT_UID}:${AGENT_UID}" --cap-drop all \
		-v "${VOLUME}:/data/ca:ro" --env-file "${ENV_FILE}" \
		"${AGENT_DUMMY_ARGS[@]}" -e HOME=/tmp "${AGENT_IMAGE}" "$@"
}

main "$@"
