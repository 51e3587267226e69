"""Find, prepare, start and stop the tritonserver that ships in the nvidia-pytriton wheel."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shopsearch.errors import ServerError
from shopsearch.ops.admin_key import ADMIN_HEADER
from shopsearch.triton.repository import BUILD_MANIFEST, built_models, response_cache_bytes

STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path
    stub_source: Path

    @property
    def caches(self) -> Path:
        """Cache implementations (the wheel ships `local`; NVIDIA's container has /opt/tritonserver/caches)."""
        return self.binary.parent.parent / "caches"

    @property
    def stub_target(self) -> Path:
        return self.backends / "python" / STUB_NAME

    def stub_ready(self) -> bool:
        return self.stub_target.exists() and self.stub_target.read_bytes() == self.stub_source.read_bytes()


def find_triton() -> TritonInstall:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerError("tritonserver not found: the nvidia-pytriton wheel is not installed (run `make venv`)")
    root = Path(spec.origin).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(root / "bin" / "tritonserver", root / "backends", root / "python_backend_stubs" / version / STUB_NAME)
    for path in (install.binary, install.backends / "python", install.stub_source):
        if not path.exists():
            raise ServerError(f"tritonserver install is incomplete: {path} is missing (Python {version} supported?)")
    return install


def stub_library_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with the running interpreter's library directory first on
    LD_LIBRARY_PATH. The stub links against libpython<major.minor>; a pyenv or container Python
    keeps it in its own LIBDIR, where the dynamic loader does not look by default."""
    env = dict(os.environ if env is None else env)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    return env


def missing_stub_libraries(stub: Path) -> list[str]:
    """The shared libraries the stub would not find when the server starts it."""
    listing = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=stub_library_env()).stdout
    return [line.split()[0] for line in listing.splitlines() if "not found" in line]


def install_python_backend_stub() -> Path:
    """Copy the stub for this interpreter's Python version where the Python backend looks for it;
    without it every Python-backend model fails to load."""
    install = find_triton()
    if not install.stub_ready():
        shutil.copy2(install.stub_source, install.stub_target)
        install.stub_target.chmod(0o755)
    return install.stub_target


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM tritonserver when the process that started it dies (a killed
    test run or CLI must not leave a server and its stubs holding ports and memory). Linux ties this
    to the *thread* that started it: start servers from a thread that outlives them."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stub_processes(server_pid: int) -> dict[int, str]:
    """pid -> model.py path of each Python-backend stub this tritonserver runs (Linux /proc)."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == server_pid and args and args[0].endswith(STUB_NAME.encode()) and len(args) > 1:
            stubs[int(entry.name)] = args[1].decode(errors="replace")
    return stubs


def process_group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_process_group(group: int, grace_s: float = 5.0) -> bool:
    """SIGTERM every process left in `group`, SIGKILL what outlives `grace_s`; True when some were left."""
    if not process_group_alive(group):
        return False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if not process_group_alive(group):
                return True
            time.sleep(0.05)
    return True


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Every Triton API group but health, metadata and inference needs the admin key, over HTTP (header
# `admin-key`) and gRPC (metadata `triton-grpc-protocol-admin-key`: Triton prefixes the name).
RESTRICTED_API_GROUPS = ("model-repository", "model-config", "logging", "trace", "shared-memory", "statistics")
# perf_analyzer reads model configs and statistics over gRPC, where it cannot send a header (its -H
# is HTTP only): a server started for profiling (`make tune` / `bench` / `ladder`'s own servers,
# `make serve PROFILING=1` for `make perf-sweep`) leaves these two open on its loopback address.
PROFILING_OPEN_GROUPS = ("model-config", "statistics")
GRPC_ADMIN_METADATA = f"triton-grpc-protocol-{ADMIN_HEADER}"


def restricted_api_args(admin_key: str, profiling: bool = False) -> list[str]:
    """The restricted groups (less PROFILING_OPEN_GROUPS when `profiling`) behind `admin_key`."""
    groups = [g for g in RESTRICTED_API_GROUPS if not (profiling and g in PROFILING_OPEN_GROUPS)]
    restricted = f"{','.join(groups)}:{ADMIN_HEADER}={admin_key}"
    return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]


def response_cache_args(repository: Path, cache_directory: Path | None = None) -> list[str]:
    """Triton's local response cache sized as the build asked (nothing when it asked for none)."""
    size = response_cache_bytes(repository)
    if not size:
        return []
    return [*([f"--cache-directory={cache_directory}"] if cache_directory else []), f"--cache-config=local,size={size}"]


class TritonServer:
    """A tritonserver process bound to loopback, started in the project's virtualenv.

    Use as a context manager, or start()/stop(). Ports default to free ones. The server runs in
    explicit model-control mode and loads exactly the models the build manifest lists. With an
    `admin_key`, `make deploy` / rollback load new versions and Triton refuses model load/unload
    without that key in the `admin-key` header, over HTTP and gRPC alike. Without one, the
    repository cannot be changed.
    """

    def __init__(self, repository: Path, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 log_path: Path | None = None, extra_args: tuple[str, ...] = (), admin_key: str | None = None,
                 profiling: bool = False, response_cache: bool = True):
        self.repository = Path(repository).resolve()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_path = log_path
        self.extra_args = extra_args
        self.profiling = profiling  # model configs and statistics open to perf_analyzer (see PROFILING_OPEN_GROUPS)
        self.admin_key = admin_key
        # False: no response cache even where the build asks for one (benchmarks of the uncached path).
        self.response_cache = response_cache
        self.process: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        install = find_triton()
        return [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={install.backends}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *(response_cache_args(self.repository, install.caches) if self.response_cache else []),
            *self.model_control_args(),
            *self.extra_args,
        ]

    def model_control_args(self) -> list[str]:
        """Explicit model control: the server loads exactly the models the build manifest lists (a
        directory it does not list is never loaded), and model control needs the admin key."""
        load = [f"--load-model={model}" for model in built_models(self.repository)]
        # Without an admin key, model control is locked with a key nobody is told: the models load
        # at start and the repository cannot change.
        return ["--model-control-mode=explicit", *load, *restricted_api_args(self.admin_key or secrets.token_urlsafe(32), self.profiling)]

    def start(self, timeout: float = 180.0) -> "TritonServer":
        install = find_triton()
        if not install.stub_ready():
            raise ServerError(f"Python backend stub missing at {install.stub_target}: run `make venv`")
        if not (self.repository / BUILD_MANIFEST).is_file():
            raise ServerError(f"{self.repository} holds no built repository: run `make build-repo`")
        env = stub_library_env()
        # Python-backend models import from the interpreter that starts the server (the venv).
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = str(Path(sys.prefix))
        output = subprocess.DEVNULL
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "w")
            output = self._log_handle
        self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=_stop_with_parent)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise ServerError(f"tritonserver not ready after {timeout:.0f}s{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path and self.log_path.exists():
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "; log tail:\n" + "\n".join(tail)
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        group = self.process.pid  # started in a session of its own: it leads the group its stubs share
        if self.process.poll() is None:
            # SIGINT lets tritonserver unload models and stop the Python stubs cleanly.
            os.killpg(group, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait(10)
        # A server that crashed (or was killed alone) leaves its Python-backend stubs running,
        # re-parented to init, each holding its model's memory (measured: ~300 MB per ranker stub);
        # a restart would then run beside them. Whatever is left of the group ends here.
        end_process_group(group)
        self.process = None
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
