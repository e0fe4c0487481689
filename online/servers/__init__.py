"""Model servers: one LitServe app per model deployment (a model and one or more of its versions).

`serve_model(settings, name)` serves a registry model's aliased versions; `serve_deployment(spec)`
serves an explicit `DeploymentSpec`; `python -m online.servers --help` is the command line.
"""

from online.servers.api import DeploymentAPI
from online.servers.deployment import DeploymentSpec, VersionSpec, deployment_from_registry, load_spec
from online.servers.run import (
    ServerError,
    ServerStartError,
    WorkerDiedError,
    build_server,
    resolve_deployment,
    serve_deployment,
    serve_model,
)

__all__ = [
    "DeploymentAPI",
    "DeploymentSpec",
    "ServerError",
    "ServerStartError",
    "VersionSpec",
    "WorkerDiedError",
    "build_server",
    "deployment_from_registry",
    "load_spec",
    "resolve_deployment",
    "serve_deployment",
    "serve_model",
]
