"""mitmproxy addon for scripts/bench: inject the real credential for the bench upstream,
as paude-proxy and Squid do, and stream every body in both directions (without it
mitmproxy buffers whole messages, which would make SSE and bulk rows meaningless)."""

import os

REAL_AUTH = os.environ["PAUDE_BENCH_REAL_AUTH"]
INJECT_HOST = os.environ["PAUDE_BENCH_HOST"]


class BenchInject:
    def requestheaders(self, flow):
        flow.request.stream = True
        if flow.request.pretty_host == INJECT_HOST:
            # Assignment replaces every value the client sent.
            flow.request.headers["Authorization"] = REAL_AUTH

    def responseheaders(self, flow):
        flow.response.stream = True


addons = [BenchInject()]
