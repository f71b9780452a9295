"""One terminal for the ``vae`` command and its Beam workers: our lines, not the frameworks'.

:func:`quiet_environment` runs first, before TensorFlow, MLflow or Beam is imported: it sets the
environment variables those libraries read once (``TF_CPP_MIN_LOG_LEVEL``, ``MLFLOW_CONFIGURE_LOGGING``)
and hooks the first ``import tensorflow`` so that the native lines it prints while it loads (absl's
"before absl::InitializeLog()" notice, "Could not find cuda drivers") never reach the terminal.
:func:`setup_logging` then sets one format: the plain message for people at a terminal, or
``TIMED_FORMAT`` (UTC ISO time, level, logger) for scheduled runs. Worker processes read the same
choice from the environment (:func:`configure_worker`). With ``verbose`` nothing is hidden.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

LOG_FORMAT_ENV = "VAE_LOG_FORMAT"
VERBOSE_ENV = "VAE_VERBOSE"
LOG_FORMATS = ("auto", "plain", "timed")
TIMED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# the loggers of libraries that speak at INFO about their own business (store migrations, plugins)
QUIET_LOGGERS = (
    "absl",
    "tensorflow",
    "mlflow",
    "alembic",
    "sqlalchemy.engine",
    "huey",
    "h5py",
    "matplotlib",
    "PIL",
    "apache_beam",
)
# what TensorFlow's C++ side prints below this level stays silent: 3 keeps out the ERROR lines it
# prints about a missing GPU (cuInit) or an op attribute it does not know, which are not errors of
# the job; a real failure raises a Python exception. -v lowers it to 0 (everything).
QUIET_TF_LEVEL = "3"
# records that are noise whatever their level: an optional import Beam warns about at every start,
# and the start-up chatter of a Beam worker process
NOISE = re.compile(
    r"apitools not found|No semi_persistent_directory found|Discarding unparseable args|Logging handler created"
)
# native lines TensorFlow prints while it loads (absl format: I0000 00:00:... file.cc:31] ...)
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|E\d{4} [\d:.]+ +\d+ \S+:\d+\] Unable to register cu"
    r"|To enable the following instructions: )"
)

_state = {"verbose": False, "tf_level_ours": False}


def is_verbose() -> bool:
    """Whether ``-v`` was given (tracebacks, framework lines)."""
    return _state["verbose"]


# --- before the heavy imports -------------------------------------------------------------------


def quiet_environment() -> None:
    """Sets what TensorFlow and MLflow read once at import, unless the user set it, and hooks the
    first TensorFlow and MLflow imports. Cheap; call it before anything imports them."""
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_TF_LEVEL
        _state["tf_level_ours"] = True
    # MLflow then adds no handler of its own: its warnings take our format, through the root logger
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    hooks = {"tensorflow": quiet_native_stderr, "mlflow": _after(_quiet_mlflow)}
    hooks = {name: hook for name, hook in hooks.items() if name not in sys.modules}  # too late for those
    if hooks and not any(isinstance(f, _ImportHooks) for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportHooks(hooks))


class _ImportHooks(importlib.abc.MetaPathFinder):
    """Runs a context manager around the first import of each named module; gone once all ran."""

    def __init__(self, hooks: dict[str, Callable[[], contextlib.AbstractContextManager]]) -> None:
        self.hooks = hooks

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        around = self.hooks.pop(fullname, None)
        if around is None:
            return None
        if not self.hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderAround(spec.loader, around)
                return spec
        return None


class _LoaderAround(importlib.abc.Loader):
    def __init__(self, loader: Any, around: Callable[[], contextlib.AbstractContextManager]) -> None:
        self._loader = loader
        self._around = around

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with self._around():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Passes what is written to file descriptor 2 meanwhile (C++ code writes there directly) through a
    small filter process that drops TensorFlow's start-up noise, line by line as it comes. A process,
    not a thread: native code writes while holding the GIL, so a thread could neither drain a full
    pipe (a deadlock) nor pass on a fatal line before an abort. All of it with ``-v``."""
    if _state["verbose"]:
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to keep quiet
        yield
        return
    read_end, write_end = os.pipe()
    try:
        program = _FILTER_PROGRAM.format(pattern=NATIVE_NOISE.pattern)
        forward = subprocess.Popen([sys.executable, "-c", program], stdin=read_end, stdout=saved)
    except OSError:
        os.close(read_end)
        os.close(write_end)
        os.close(saved)
        yield
        return
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes our last write end of the pipe: the filter reads to its end and exits
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            forward.wait(timeout=10)


_FILTER_PROGRAM = """
import re, sys
noise = re.compile({pattern!r})
for line in sys.stdin.buffer:
    if not noise.match(line.decode(errors="replace")):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def _after(action: Callable[[], None]) -> Callable[[], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def around() -> Iterator[None]:
        yield
        action()

    return around


def _quiet_mlflow() -> None:
    """MLflow's loggers speak through ours, and so do its bare prints to stderr ("Successfully
    registered model ...", "Created version ..."): as INFO lines of the ``mlflow`` logger, which only
    ``-v`` shows (``vae train`` says what it registered itself)."""
    utils = sys.modules.get("mlflow.utils.logging_utils")
    if utils is None or isinstance(utils.MLFLOW_LOGGING_STREAM, _PrintsToLog):
        return
    for name in ("mlflow", "alembic", "sqlalchemy.engine", "huey"):
        logger = logging.getLogger(name)
        theirs = [h for h in logger.handlers if getattr(h, "stream", None) is utils.MLFLOW_LOGGING_STREAM]
        if theirs:  # MLflow configured itself (imported before us, or MLFLOW_CONFIGURE_LOGGING=true)
            logger.handlers = [h for h in logger.handlers if h not in theirs]
            logger.propagate = True
    utils.MLFLOW_LOGGING_STREAM = _PrintsToLog(logging.getLogger("mlflow"))  # what eprint() prints to


class _PrintsToLog:
    """A text stream that logs each line it is given (MLflow's ``MLFLOW_LOGGING_STREAM``, with its
    ``enabled`` switch)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.enabled = True
        self._pending = ""

    def write(self, text: str) -> int:
        if self.enabled:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                if line.strip():
                    self.logger.info("%s", line)
        return len(text)

    def flush(self) -> None:
        pass


# --- the format ---------------------------------------------------------------------------------


class TimedFormatter(logging.Formatter):
    """``TIMED_FORMAT`` with the time in UTC, ISO 8601 to the millisecond."""

    def __init__(self) -> None:
        super().__init__(TIMED_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PlainFormatter(logging.Formatter):
    """The message alone; a warning or an error says so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "apache_beam.runners.portability.local_job_service" and record.msg == "Worker: %s":
            return False  # a worker's own line, forwarded: the worker prints it itself, in our format
        return not NOISE.search(str(record.msg))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a progress bar's)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def resolve_format(log_format: str | None = None) -> str:
    """``plain`` or ``timed``: as asked (``--log-format``, else ``$VAE_LOG_FORMAT``); ``auto``
    (the default) is plain when stderr is a terminal, timed otherwise."""
    chosen = (log_format or os.environ.get(LOG_FORMAT_ENV) or "auto").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}={chosen!r}: choose one of {', '.join(LOG_FORMATS)}")
    if chosen == "auto":
        return "plain" if _is_terminal(sys.stderr) else "timed"
    return chosen


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def setup_logging(verbose: bool = False, log_format: str | None = None) -> str:
    """Configures the root logger for a ``vae`` command or a worker; returns the format in force.

    The choice is exported (``VAE_LOG_FORMAT``, ``VAE_VERBOSE``) so that Beam worker processes,
    which inherit the environment, log the same way."""
    quiet_environment()
    chosen = resolve_format(log_format)
    _state["verbose"] = verbose
    os.environ[LOG_FORMAT_ENV] = chosen
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if verbose and _state["tf_level_ours"]:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    handler = _StderrHandler()
    handler.setFormatter(TimedFormatter() if chosen == "timed" else PlainFormatter())
    if not verbose:
        handler.addFilter(_DropNoise())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)  # Python warnings in the same format, once per place as usual
    _quiet_mlflow()  # when MLflow was imported already
    return chosen


def configure_worker() -> None:
    """A Beam worker process (:mod:`pipeline.beam.worker_main`): the parent's format and verbosity."""
    setup_logging(os.environ.get(VERBOSE_ENV) == "1", os.environ.get(LOG_FORMAT_ENV))


# what a job's own code logs on a worker: per-shard progress, model loads
JOB_LOGGERS = ("pipeline", "scoring", "training")


def configure_dask_worker() -> None:
    """A Dask worker process (run on each by the job): our loggers write at INFO to its stderr, in the
    launcher's format where it passed it on (a local cluster's workers inherit its environment), else
    timed. The root logger and dask's own stay as the worker's owner set them, but our loggers no
    longer propagate to the root's handlers (a log shipper there gets the worker's stderr instead).
    Idempotent: every job on a long-lived cluster runs it again."""
    handler = _StderrHandler()
    chosen = os.environ.get(LOG_FORMAT_ENV, "timed")
    handler.setFormatter(PlainFormatter() if chosen == "plain" else TimedFormatter())
    if os.environ.get(VERBOSE_ENV) != "1":
        handler.addFilter(_DropNoise())
    for name in JOB_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
