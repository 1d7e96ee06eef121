"""Prints the YAML documents of argv[1] as one JSON array (PyYAML, Debian python3-yaml),
so that tests/deploy_recipes.rs checks the manifests with serde_json."""
import json
import sys

import yaml

with open(sys.argv[1]) as f:
    print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))
