"""What the promotion modules share: their errors, the MLflow client they default to and the parser of
registered-model URIs. Imports nothing of galmorph, so that every promotion module can import it."""

from __future__ import annotations

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"


class PromotionError(RuntimeError):
    """A promotion or rollback cannot be carried out (message says why)."""


class RegistryConsistencyError(PromotionError):
    """The aliases read back after a promotion are not the ones written."""


class PromotionRaceLost(PromotionError):
    """The champion changed between this promotion's read and its write (another writer got there first);
    nothing was written."""


class ModelRefError(PromotionError, ValueError):
    """A model URI that names no registered version (not ``models:/...``, no version or alias, an unknown alias)."""


def mlflow_client(client=None):
    """``client``, or a new ``MlflowClient`` of the process's tracking/registry URI."""
    if client is not None:
        return client
    import mlflow

    return mlflow.MlflowClient()


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` -> ``(NAME, VERSION, None)``; ``models:/NAME@ALIAS`` -> ``(NAME, None, ALIAS)``;
    :class:`ModelRefError` for anything else."""
    if not str(uri).startswith("models:/"):
        raise ModelRefError(f"{uri!r} is not a registered model URI (models:/NAME/VERSION or models:/NAME@alias)")
    rest = str(uri)[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, None, alias
    else:
        name, _, version = rest.partition("/")
        if name and version:
            return name, version, None
    name = rest.split("@", 1)[0].split("/", 1)[0]
    raise ModelRefError(f"{uri!r} names no version or alias: give models:/{name}/N or models:/{name}@champion")
