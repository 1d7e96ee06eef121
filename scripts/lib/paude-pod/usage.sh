# shellcheck shell=bash
# paude-pod: help texts, one per subcommand.

usage_main() {
	cat <<EOF2
Usage: paude-pod COMMAND [ARGS]

Contain an AI agent that shares its network namespace with paude-proxy (a
Kubernetes pod, a podman pod): every process whose UID is not the proxy's gets
its TCP redirected to the proxy's transparent listener and its DNS to the
proxy's sandbox DNS server; everything else (UDP incl. QUIC, ICMP, IPv6, other
protocols, the proxy's explicit and admin ports, other local services) is
rejected. The proxy's own UID goes out untouched.

Run it with CAP_NET_ADMIN in the shared namespace, e.g. from an init container.

Commands:
  apply --proxy-uid UID [OPTIONS]   install (or replace) the nft table ${POD_TABLE}
  remove                            delete it again (idempotent)

'paude-pod COMMAND --help' describes each command.
EOF2
}

usage_apply() {
	cat <<EOF2
Usage: paude-pod apply --proxy-uid UID [OPTIONS]

Installs the nft table 'inet ${POD_TABLE}' in the current network namespace,
replacing an existing one in the same transaction (applying twice is harmless).

Options:
  --proxy-uid UID         the UID paude-proxy runs as (required, not 0): its
                          traffic is left alone; every other UID is contained
  --transparent-port P    proxy transparent listener port (default ${DEFAULT_TRANSPARENT_PORT})
  --dns-port P            proxy sandbox DNS port (default ${DEFAULT_DNS_PORT})
  --allow-local-port P    a port on this namespace's own addresses (127.0.0.1,
                          the pod IP) that the agent may reach directly, e.g. a
                          sidecar; repeatable. The proxy's explicit (3128) and
                          admin ports stay closed unless listed here.
  -h, --help              this text

Run the proxy with loopback listeners, PAUDE_PROXY_TRANSPARENT_LISTEN=
127.0.0.1:${DEFAULT_TRANSPARENT_PORT} and PAUDE_PROXY_DNS_LISTEN=127.0.0.1:${DEFAULT_DNS_PORT}: redirected DNS answers
only find their way back from a socket bound to 127.0.0.1 (nft/pod/10-pod.nft
says why). Never run the agent as the proxy's UID or as root: root could
remove the table.
EOF2
}

usage_remove() {
	cat <<EOF2
Usage: paude-pod remove

Deletes the nft table 'inet ${POD_TABLE}' from the current network namespace.
Safe to repeat: an absent table is reported and is not an error.

Options:
  -h, --help  this text
EOF2
}
