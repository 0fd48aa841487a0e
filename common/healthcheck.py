"""``python -m common.healthcheck``: exit 0 when this container's service answers /ready (the image's HEALTHCHECK).

The port is the service's own setting (AGENT_PORT or ORCHESTRATOR_PORT), so one image serves every service.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> None:
    port = os.environ.get("AGENT_PORT") or os.environ.get("ORCHESTRATOR_PORT") or "5002"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ready")
    if os.environ.get("API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            sys.exit(0 if resp.status == 200 else 1)
    except Exception:  # any failure means "not healthy yet"
        sys.exit(1)


if __name__ == "__main__":
    main()
