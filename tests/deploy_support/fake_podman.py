"""A stand-in for `podman` that records every call (argv, and the content of any
--env-file) as one JSON line in $FAKE_PODMAN_LOG. `run ... IMAGE routes|ca ...` runs the real
paude-proxy ($FAKE_PODMAN_PROXY) with those arguments, so recipes get the binary's real
lists; `exists` subcommands say no; everything else succeeds silently."""
import json
import os
import subprocess
import sys

args = sys.argv[1:]
event = {"argv": args}
for i, a in enumerate(args):
    if a == "--env-file" and i + 1 < len(args):
        with open(args[i + 1]) as f:
            event["env_file"] = f.read()
with open(os.environ["FAKE_PODMAN_LOG"], "a") as log:
    log.write(json.dumps(event) + "\n")

image = os.environ.get("PAUDE_PROXY_IMAGE", "localhost/paude-proxy:latest")
if args and args[0] == "run" and image in args:
    rest = args[args.index(image) + 1:]
    if rest and rest[0] in ("routes", "ca"):
        sys.exit(subprocess.call([os.environ["FAKE_PODMAN_PROXY"]] + rest))
if len(args) >= 2 and args[1] == "exists":
    sys.exit(1)
sys.exit(0)
