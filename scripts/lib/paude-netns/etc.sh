# shellcheck shell=bash
# paude-netns: files the agent sees in /etc (resolver, name service, CA trust).
#
# `ip netns exec NAME` bind-mounts each entry of /etc/netns/NAME over
# /etc/<entry> in the agent's private mount namespace. Only entries whose
# target already exists in /etc can be bound, so we only create overlays for
# files and directories the host has.

# Where system roots usually live (Debian/Alpine, Fedora/RHEL, BSD-style).
readonly SYSTEM_ROOT_BUNDLES=(
	/etc/ssl/certs/ca-certificates.crt
	/etc/pki/tls/certs/ca-bundle.crt
	/etc/ssl/cert.pem
)

# Path of the agent's CA bundle. The /etc/netns path (not /etc/ssl/...) is what
# the env vars point at: it is valid inside the agent whether or not the
# /etc/ssl overlay could be bound.
bundle_path_for() { printf '%s/ssl/certs/ca-certificates.crt' "$(etc_dir_for "$1")"; }

default_ca_path() { printf '%s/ca.crt' "${PAUDE_PROXY_CA_DIR:-/data/ca}"; }

check_ca_file() {
	local ca=$1
	[[ -r ${ca} ]] || die "proxy CA '${ca}' not readable: start paude-proxy once (it writes \$PAUDE_PROXY_CA_DIR/ca.crt) or pass --ca PATH"
	grep -q -- '-----BEGIN CERTIFICATE-----' "${ca}" || die "proxy CA '${ca}' is not a PEM certificate"
}

# The sandbox DNS server is the only resolver: its answers are the record the
# proxy's SNI <-> IP check trusts. Queries to it arrive on port 53 of the
# host-side veth address and are redirected to the real DNS port by nft.
write_resolv_conf() {
	local dir=$1 host_addr=$2
	{
		printf '# Written by paude-netns: the sandbox DNS server of paude-proxy.\n'
		printf 'nameserver %s\n' "${host_addr}"
	} >"${dir}/resolv.conf"
	chmod 0644 "${dir}/resolv.conf"
}

# Host name service modules such as nss-resolve talk to host daemons over unix
# sockets, which a network namespace does not isolate; lookups through them
# would bypass the sandbox DNS and its answer record. Keep hosts: to files+dns.
write_nsswitch_conf() {
	local dir=$1
	[[ -f /etc/nsswitch.conf ]] || return 0
	sed -e 's/^hosts:.*/hosts: files dns/' /etc/nsswitch.conf >"${dir}/nsswitch.conf"
	chmod 0644 "${dir}/nsswitch.conf"
}

# Builds /etc/netns/NAME/ssl, which replaces /etc/ssl inside the agent so that
# tools using the system trust store (OpenSSL cafile/capath, curl, git, Go)
# trust the proxy CA without any flag or env var.
write_ssl_overlay() {
	local dir=$1 ca=$2 ssl entry roots="" candidate bundle hash i
	ssl="${dir}/ssl"
	mkdir -p "${ssl}/certs"
	if [[ -d /etc/ssl ]]; then
		for entry in /etc/ssl/*; do
			[[ -e ${entry} ]] || continue
			case ${entry##*/} in
			# certs is rebuilt below; private holds host keys the agent must not see.
			certs | private) continue ;;
			esac
			# Dereference: a symlink back into /etc/ssl would point into the
			# overlay itself once it is mounted there.
			cp -RL -- "${entry}" "${ssl}/" 2>/dev/null || warn "could not copy ${entry} into the agent's /etc/ssl"
		done
		# Copy certs/ as a real directory even when /etc/ssl/certs is a symlink
		# (Fedora), so that writing our bundle never touches the host's files.
		# Its per-certificate symlinks point into /usr/share and stay valid.
		if [[ -d /etc/ssl/certs ]]; then
			cp -a -- /etc/ssl/certs/. "${ssl}/certs/"
		fi
	fi

	for candidate in "${SYSTEM_ROOT_BUNDLES[@]}"; do
		if [[ -r ${candidate} ]]; then
			roots=${candidate}
			break
		fi
	done
	bundle="${ssl}/certs/ca-certificates.crt"
	rm -f -- "${bundle}"
	{
		if [[ -n ${roots} ]]; then
			cat -- "${roots}"
			printf '\n'
		else
			warn "no system root bundle found; the agent will trust only the proxy CA"
		fi
		printf '# paude-proxy CA\n'
		cat -- "${ca}"
	} >"${bundle}"
	chmod 0644 "${bundle}"

	# For capath users (OpenSSL hashed directory lookup).
	cp -- "${ca}" "${ssl}/certs/paude-proxy-ca.pem"
	chmod 0644 "${ssl}/certs/paude-proxy-ca.pem"
	if command -v openssl >/dev/null 2>&1 && hash=$(openssl x509 -hash -noout -in "${ca}" 2>/dev/null); then
		for ((i = 0; i < 10; i++)); do
			if [[ ! -e "${ssl}/certs/${hash}.${i}" ]]; then
				ln -s paude-proxy-ca.pem "${ssl}/certs/${hash}.${i}"
				break
			fi
		done
	fi
}

write_etc_overlay() {
	local name=$1 host_addr=$2 ca=$3 dir
	dir=$(etc_dir_for "${name}")
	mkdir -p "${dir}"
	write_resolv_conf "${dir}" "${host_addr}"
	write_nsswitch_conf "${dir}"
	write_ssl_overlay "${dir}" "${ca}"
}
