# shellcheck shell=bash
# paude-netns: help texts, one per subcommand.

usage_main() {
	cat <<EOF
Usage: paude-netns COMMAND [ARGS]

Put an AI agent into a network namespace whose only way out is paude-proxy:
every TCP connection goes to the proxy's transparent listener, every DNS query
to its sandbox DNS server, and everything else (UDP incl. QUIC, ICMP, IPv6,
other protocols, other agents, the proxy host's other services) is rejected.

Run it as root in the network namespace that runs the proxy: the host, a
container, or a namespace entered with 'nsenter --net=PATH'.

Commands:
  create NAME [OPTIONS]       build the namespace, veth, routes, nft table and /etc files
  exec NAME -- CMD [ARG...]   run CMD inside NAME with CA trust and dummy credentials
  run [OPTIONS] -- CMD [ARG...]
                              create a temporary agent, exec CMD, destroy it on exit or signal
  destroy NAME                remove everything create made (idempotent)

'paude-netns COMMAND --help' describes each command.

Example (the agent runs as you, not as root, with the proxy's CA trusted):
  sudo paude-netns run -- runuser -u "\$USER" -- claude
EOF
}

usage_create_options() {
	cat <<EOF
Options:
  --transparent-port P  proxy transparent listener port (default ${DEFAULT_TRANSPARENT_PORT})
  --dns-port P          proxy sandbox DNS port (default ${DEFAULT_DNS_PORT})
  --subnet CIDR         IPv4 link between proxy and agent (default: first free
                        /30 in 10.200.0.0/16); host side gets .1, agent .2
  --ca PATH             proxy CA certificate (default \$PAUDE_PROXY_CA_DIR/ca.crt,
                        i.e. $(default_ca_path))
  -h, --help            this text
EOF
}

usage_create() {
	cat <<EOF
Usage: paude-netns create NAME [OPTIONS]

Creates network namespace NAME with a veth to the current namespace, loads the
nft table 'paude-NAME' that redirects the agent's TCP to the transparent port
and DNS (UDP/TCP 53) to the DNS port and rejects everything else, and writes
/etc/netns/NAME/ (resolv.conf, nsswitch.conf, ssl/ with system roots + the
proxy CA). The agent gets no IPv6 at all.

NAME: 1-32 characters of A-Z a-z 0-9 _ -.

$(usage_create_options)

Note: separate create/exec/destroy calls need a mount namespace that outlives
each call. 'ip netns exec OTHER paude-netns create ...' runs in a throwaway
mount namespace, in which NAME would vanish when it returns, so create refuses
to start there (nothing is made); use
'nsenter --net=/run/netns/OTHER paude-netns ...' or 'paude-netns run' instead.
EOF
}

usage_env_options() {
	cat <<EOF
  --env NAME[=VALUE]    also give the agent NAME (VALUE, or the caller's value);
                        repeatable. Credential and proxy variables are refused.
  --env-file FILE       NAME=VALUE lines (blank lines and # comments skipped,
                        no quoting or expansion); repeatable
EOF
}

usage_exec() {
	cat <<EOF
Usage: paude-netns exec NAME [--env NAME[=VALUE]]... [--env-file FILE]... -- CMD [ARG...]

Runs CMD inside agent namespace NAME (via 'ip netns exec', so /etc/netns/NAME
overlays /etc) from an EMPTY environment plus:
  - PATH, HOME, USER, LOGNAME, TERM, LANG, LANGUAGE, TZ and LC_* when set;
  - what --env and --env-file name;
  - the CA variables of 'paude-proxy ca env' (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS,
    npm_config_cafile, REQUESTS_CA_BUNDLE, CODEX_CA_CERTIFICATE, ...) and
    SSL_CERT_DIR, pointing at the agent's bundle (system roots + proxy CA);
  - ${DUMMY_CREDENTIAL} for every credential variable that holds a value in
    the proxy's routing table ('paude-proxy routes --vars': the embedded table,
    or \$PAUDE_PROXY_CREDENTIALS_CONFIG); a variable that holds a file path
    gets a stub file or stays unset: GOOGLE_APPLICATION_CREDENTIALS points at a
    stub ADC (the JSON 'paude-proxy stub-adc' prints) when the caller has
    GCP_ADC_JSON or GOOGLE_APPLICATION_CREDENTIALS set (or PAUDE_NETNS_GCLOUD=1).
No proxy variable reaches the agent. paude-proxy must be on PATH (or set
PAUDE_PROXY_BIN). Fails if the agent is stale (the proxy's namespace is gone).

CMD runs as root unless you drop privileges, and root inside the namespace
could leave it (e.g. by entering another namespace); run agents as an
unprivileged user, e.g.
  paude-netns exec NAME -- runuser -u agent -- CMD

Options:
$(usage_env_options)
  -h, --help            this text
EOF
}

usage_run() {
	cat <<EOF
Usage: paude-netns run [OPTIONS] -- CMD [ARG...]

Creates an agent namespace (named NAME, or a generated name), runs CMD in it as
'exec' does (same environment), and destroys the namespace when CMD exits or
when paude-netns gets SIGINT, SIGTERM or SIGHUP (forwarded to CMD, which gets ${STOP_GRACE_SECONDS}s before SIGKILL).
Exits with CMD's status (128+N if a signal N ended the run).
Works under 'ip netns exec' too, because everything happens in one process.

$(usage_create_options)
  --name NAME           the agent's name (default run-PID); an existing agent
                        of that name is refused, never touched
$(usage_env_options)
EOF
}

usage_destroy() {
	cat <<EOF
Usage: paude-netns destroy NAME

Stops any process left in namespace NAME, then removes the veth (first, so the
agent loses its only path before its rules go), the namespace, the nft table
'paude-NAME', /etc/netns/NAME and the runtime state. Safe to repeat: an absent
agent is reported and is not an error.

Options:
  -h, --help  this text
EOF
}
