"""`python -m online.servers`: run one model server.

python -m online.servers --home DIR MODEL [--versions 1,2] [--port 8100] [--max-batch-size 32]
    (follows the registry: versions that gain an alias load while serving; --no-watch to pin)
python -m online.servers --spec spec.json [--port 8100]
"""

from __future__ import annotations

import argparse
import logging
import sys

from models.errors import TandemModelError
from online.servers.deployment import DeploymentSpec, load_spec
from online.servers.run import ServerError, resolve_deployment, serve_deployment

logger = logging.getLogger("tandem.servers")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m online.servers", description="Run a Tandem model server.")
    p.add_argument("model", nargs="?", help="registry model name (not with --spec)")
    p.add_argument("--spec", help="JSON DeploymentSpec file instead of resolving MODEL from the registry")
    p.add_argument("--home", help="TANDEM_HOME holding the registry and artifacts (default: $TANDEM_HOME)")
    p.add_argument("--versions", help="comma-separated versions or aliases (default: stable, canary, shadow)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--batch-timeout", type=float, help="seconds a batch waits to fill")
    p.add_argument("--workers", type=int, help="inference worker processes per device")
    p.add_argument("--torch-threads", type=int, help="torch threads per worker (default: cores // workers)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the models run (default auto: CUDA when torch sees a GPU)")
    p.add_argument("--registry-poll-s", type=float, help="seconds between registry polls (default 2)")
    p.add_argument("--release-grace-s", type=float,
                   help="seconds a version that lost every alias stays loaded (default 60)")
    p.add_argument("--no-watch", action="store_true",
                   help="serve only the versions given at start; do not follow the registry")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # LitServe logs to stdout; keep it timely in files
    overrides = {
        "max_batch_size": args.max_batch_size,
        "batch_timeout": args.batch_timeout,
        "workers": args.workers,
        "torch_threads": args.torch_threads,
        "device": args.device,
        "registry_poll_s": args.registry_poll_s,
        "release_grace_s": args.release_grace_s,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        if args.spec:
            if args.model or args.versions:
                parser.error("--spec already names the model and versions; drop MODEL/--versions")
            spec = load_spec(args.spec)
            spec = DeploymentSpec.model_validate({**spec.model_dump(), **overrides})
        else:
            if not args.model:
                parser.error("name a registry MODEL or pass --spec FILE")
            from models.settings import TandemSettings

            settings = TandemSettings(home=args.home) if args.home else TandemSettings()
            versions = [v.strip() for v in args.versions.split(",") if v.strip()] if args.versions else None
            spec = resolve_deployment(settings, args.model, versions, **overrides)
        if args.no_watch:
            spec = spec.model_copy(update={"registry_root": None})
        serve_deployment(spec, args.host, args.port, log_level=args.log_level)
    except ServerError as exc:
        logger.error("%s", exc)
        return 1
    except (TandemModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
