"""The one exception hierarchy of the project.

Messages name the model (or artifact) and the field at fault, so an operator can act on them
without reading a traceback; servers send only the message to clients.
"""


class ShopSearchError(Exception):
    """Base class for every error this project raises on purpose."""


class DataError(ShopSearchError):
    """A dataset on disk is missing, malformed or inconsistent."""


class ConfigError(ShopSearchError):
    """A model, ensemble or training configuration is invalid."""

    def __init__(self, model: str, field: str, problem: str):
        self.model, self.field, self.problem = model, field, problem
        super().__init__(f"{model}: {field}: {problem}")


class InvalidInputError(ShopSearchError):
    """A request carries input the model cannot serve; the request fails, the server carries on."""

    def __init__(self, model: str, field: str, problem: str):
        self.model, self.field, self.problem = model, field, problem
        super().__init__(f"{model}: {field}: {problem}")


class ArtifactError(ShopSearchError):
    """A built artifact is missing or does not match what loads it (e.g. index vs embedder)."""


class FusionUnavailableError(ArtifactError):
    """This ONNX Runtime's optimizer finds no attention to fuse in the exported graph (older releases,
    e.g. 1.23, the newest for Python 3.10, do not match the graph today's torch and transformers export)."""


class IndexRecallError(ArtifactError):
    """An approximate catalog index found too few of exact search's top 100 on the dev queries."""

    def __init__(self, kind: str, recall: float, threshold: float, queries: int):
        self.recall, self.threshold = recall, threshold
        super().__init__(f"ranker: the {kind} index's recall@100 against exact search is {recall:.4f} on {queries} dev "
                         f"queries, below [index].min_recall {threshold}; probe more (nprobe / ef_search) or use INDEX=exact")


class ExportParityError(ShopSearchError):
    """An exported model's outputs drifted from the source model beyond its declared bounds.

    `checks` holds every measured number, passing or not: (name, value, bound, ok)."""

    def __init__(self, artifact: str, checks: list[tuple[str, float, str, bool]]):
        self.artifact, self.checks = artifact, checks
        lines = [f"  {'ok  ' if ok else 'FAIL'} {name} = {value:.6g} (bound {bound})" for name, value, bound, ok in checks]
        super().__init__(f"{artifact} drifted from its source model:\n" + "\n".join(lines))

    @property
    def failed(self) -> list[str]:
        return [name for name, _, _, ok in self.checks if not ok]


class ServerError(ShopSearchError):
    """tritonserver could not be found, started or reached."""


class BackendUnavailableError(ShopSearchError):
    """An optional accelerator stack (CUDA, TensorRT) is not importable on this machine."""


class DeployError(ShopSearchError):
    """A generation could not be published, activated or rolled back; what was serving keeps serving."""
