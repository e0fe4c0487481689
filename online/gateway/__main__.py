"""`python -m online.gateway --port 8000` — run the gateway on TANDEM_HOME's state."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.settings import TandemSettings
from online.gateway.serve import serve_gateway


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Tandem workflow gateway.")
    parser.add_argument("--home", type=Path, default=None, help="TANDEM_HOME (default: env or ./.tandem)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--access-log", action="store_true", help="log one JSON line per request")
    args = parser.parse_args()
    settings = TandemSettings(home=args.home) if args.home else TandemSettings()
    serve_gateway(settings, args.host, args.port, access_log=args.access_log)


if __name__ == "__main__":
    main()
