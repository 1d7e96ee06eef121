#!/usr/bin/env bash
# Explicit mode with podman: the proxy in one container holding the real keys, the agent in
# another with dummy keys, HTTPS_PROXY and the CA (shared through a volume). Works for
# clients that honour HTTPS_PROXY; for the rest use deploy/podman/pod.sh (pod mode).
#
#   ANTHROPIC_API_KEY=sk-ant-... deploy/podman/two-containers.sh [CMD [ARG...]]
#
# Leaves the network, the volume and the proxy container running; remove them with
#   podman rm -f paude-proxy; podman network rm paude; podman volume rm paude-proxy-ca
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=deploy/podman/common.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/common.sh"

readonly NETWORK=paude
readonly VOLUME=paude-proxy-ca
readonly PROXY_NAME=paude-proxy
readonly PROXY_URL=http://paude-proxy:3128

main() {
	local podman
	podman=$(podman_bin)
	trap remove_env_file EXIT
	credential_args
	"${podman}" network exists "${NETWORK}" || "${podman}" network create "${NETWORK}" >/dev/null
	"${podman}" volume exists "${VOLUME}" || "${podman}" volume create "${VOLUME}" >/dev/null
	"${podman}" run -d --replace --name "${PROXY_NAME}" --network "${NETWORK}" \
		--user "${PROXY_UID}:${PROXY_UID}" \
		-e ALLOWED_DOMAINS="${ALLOWED_DOMAINS}" -e PAUDE_PROXY_CA_DIR=/data/ca \
		"${PROXY_CRED_ARGS[@]}" -v "${VOLUME}:/data/ca" "${PAUDE_PROXY_IMAGE}" >/dev/null
	wait_healthy "${PROXY_NAME}"

	# The agent's trust and proxy variables, from the one list in the binary.
	ENV_FILE=$(mktemp)
	"${podman}" run --rm "${PAUDE_PROXY_IMAGE}" ca env --format plain \
		--proxy "${PROXY_URL}" --bundle /data/ca/ca.crt >"${ENV_FILE}"
	(($# > 0)) || set -- bash
	"${podman}" run --rm -it --network "${NETWORK}" --user "${AGENT_UID}:${AGENT_UID}" \
		-v "${VOLUME}:/data/ca:ro" --env-file "${ENV_FILE}" \
		"${AGENT_DUMMY_ARGS[@]}" -e HOME=/tmp "${AGENT_IMAGE}" "$@"
}

main "$@"
