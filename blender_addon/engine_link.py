"""Everything that talks to the engine: the local engine process, the client, submitting and following
jobs. The rest of the add-on never sees the client API, only Settings, connect() and JobLink.

No bpy in here except through Settings.from_prefs (connect() runs in a worker thread).
"""
import atexit
import contextlib
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

from . import shared_pkg

START_TIMEOUT = 180.0  # seconds a local engine may take to start (torch import, first run)


class LinkError(Exception):
    """A failure explained for the editor (engine not reachable, version mismatch, job refused)."""


@dataclass(frozen=True)
class Settings:
    """A snapshot of the preferences: worker threads must not read bpy data."""
    mode: str = "LOCAL"
    python: str = ""
    port: int = 5591
    jobs_dir: str = ""
    address: str = "tcp://127.0.0.1:5555"
    keys_dir: str = ""
    timeout: float = 10.0
    token: str = ""  # owner_token(): whose jobs the shared client submits

    @classmethod
    def from_prefs(cls, prefs) -> "Settings":
        import bpy
        jobs_dir = bpy.path.abspath(prefs.jobs_dir) if prefs.jobs_dir else _default_jobs_dir()
        return cls(prefs.engine_mode, bpy.path.abspath(prefs.python), prefs.port, jobs_dir,
                   prefs.address.strip(), bpy.path.abspath(prefs.keys_dir) if prefs.keys_dir else "",
                   prefs.timeout, owner_token())

    @property
    def target(self) -> str:
        return f"tcp://127.0.0.1:{self.port}" if self.mode == "LOCAL" else self.address

    @property
    def endpoint(self) -> "Settings":
        """What a connection is made for: the settings but the timeout, which an open client takes on."""
        return replace(self, timeout=0.0)

    @property
    def process(self) -> tuple:
        """What a local engine process is started with."""
        return self.python, self.port, self.jobs_dir


def _default_jobs_dir() -> str:
    import bpy
    try:  # an installed extension has a user folder that survives updates
        return bpy.utils.extension_path_user(__package__, path="jobs", create=True)
    except (ValueError, AttributeError):  # running from a source checkout
        folder = bpy.utils.user_resource('DATAFILES', path="vse_style_transfer", create=True)
        return os.path.join(folder, "jobs")


_token = ""


def owner_token() -> str:
    """This Blender user's secret for the engine: jobs belong to the token that submitted them
    (PROTOCOL.md, Owners). Kept in the add-on's user folder (mode 0600) so a restarted Blender reaches the
    same jobs; each job record keeps a copy too, so a .blend opened elsewhere can still resume its jobs."""
    global _token
    if _token:
        return _token
    path = os.path.join(os.path.dirname(_default_jobs_dir()), "client-token")
    try:
        with open(path) as handle:
            _token = handle.read().strip()
    except OSError:
        pass
    if len(_token) < 16:
        import secrets

        _token = secrets.token_urlsafe(32)
        try:
            if os.path.exists(path):
                os.remove(path)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                handle.write(_token)
        except OSError:
            pass  # still this session's owner; the job records keep the token
    return _token


def client_module():
    return shared_pkg.load("client")


# -- the local engine process ----------------------------------------------------------------------

class LocalEngine:
    """An engine process this Blender started (``<python> -m engine_server serve``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        os.makedirs(settings.jobs_dir, exist_ok=True)
        self.log_path = os.path.join(settings.jobs_dir, "engine.log")
        self.pid_path = os.path.join(settings.jobs_dir, "engine.pid")
        python = settings.python
        if not python:
            raise LinkError("Set the engine's Python interpreter in the add-on preferences (Local engine)")
        if not os.path.isfile(python):
            raise LinkError(f"Engine Python not found: {python}")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}  # not Blender's
        command = [python, "-m", "engine_server", "serve", "--bind", settings.target,
                   "--jobs-dir", settings.jobs_dir]
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console window
        with open(self.log_path, "ab") as log:
            self.log_start = log.tell()  # earlier runs' lines are not this run's news
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, cwd=settings.jobs_dir,
                                            creationflags=flags)
        with open(self.pid_path, "w") as handle:
            handle.write(str(self.process.pid))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        """The last lines this engine process wrote (never an earlier run's)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(self.log_start, os.path.getsize(self.log_path) - 4096))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = []
        for line in (line.strip() for line in text.strip().splitlines()[-lines:]):
            if line and line not in tail:
                tail.append(line)
        return " | ".join(tail)

    def stop(self, timeout: float = 10.0):
        if self.alive:
            self.process.terminate()  # the engine keeps its jobs on disk and resumes them next start
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.remove(self.pid_path)
        except OSError:
            pass


_lock = threading.Lock()      # connect() runs in a worker thread; stop() on the main thread
_local: "LocalEngine | None" = None
_client = None                # the connected EngineClient and the settings it was made for
_client_settings: "Settings | None" = None
_welcome: dict = {}
_links: set = set()           # JobLinks not closed yet: a client they follow stays open when replaced
_links_lock = threading.Lock()  # not _lock, which connect() holds for as long as a local engine starts


def local_engine_failed() -> str:
    """A message if the local engine this Blender started has exited, else ''."""
    engine = _local
    if engine is None or engine.alive:
        return ""
    tail = engine.log_tail()
    if "No module named engine_server" in tail or "No module named 'engine_server'" in tail:
        return (f"The Engine Python ({engine.settings.python}) has no engine installed: point the add-on "
                f"preferences at the environment `make setup` made (its .venv/bin/python)")
    return f"The local engine stopped (exit code {engine.process.returncode}): {tail}"


def local_pid() -> "int | None":
    return _local.process.pid if _local is not None and _local.alive else None


def stop_local():
    """Stop the engine this Blender started (on unregister and exit) and forget the client."""
    global _local
    engine = _local
    if engine is not None:
        engine.stop()  # without the lock: a connect() waiting for this engine to start gives up now
    with _lock:
        _forget_client()
        if _local is engine:
            _local = None


atexit.register(stop_local)


def _forget_client():
    global _client, _client_settings
    client, _client, _client_settings = _client, None, None
    if client is not None:
        _release(client)


def _release(client):
    """Close a client that is no longer the shared one once no job follows through it any more (new
    engine settings take effect for new jobs; the running ones go on with the engine they started on)."""
    with _links_lock:
        if client is not _client and not any(link.client is client for link in _links):
            client.close()


def forget_client():
    """Drop the connection (after the engine was found unreachable); the next connect() makes a new one."""
    with _lock:
        _forget_client()


def _new_client(settings: Settings, timeout: float):
    api = client_module()
    server_key = client_keys = None
    if settings.mode == "REMOTE" and settings.keys_dir:
        server_key = os.path.join(settings.keys_dir, "server.key")
        client_keys = os.path.join(settings.keys_dir, "client.key_secret")
        for path in (server_key, client_keys):
            if not os.path.isfile(path):
                raise LinkError(f"Key file missing: {path} (write the keys with "
                                f"'python -m engine_server keygen DIR')")
    try:
        return api.EngineClient(settings.target, server_public_key=server_key, client_keys=client_keys,
                                timeout=timeout, name="blender vse_style_transfer", token=settings.token or None)
    except ValueError as exc:
        raise LinkError(f"Bad engine address or keys: {exc}") from None


last_device = ""  # the device of the engine this Blender last spoke to ("cpu", "cuda:0 NVIDIA ..."), for presets


def _hello(client) -> dict:
    """The welcome, or LinkError for a protocol mismatch (the client's hello() checks the version)."""
    global last_device
    api = client_module()
    try:
        welcome = client.hello()
        last_device = str(welcome.get("device") or "")
    except api.EngineError as exc:
        if exc.code == "version_mismatch":
            raise LinkError(f"Engine version mismatch: {exc.message}. Use an engine and add-on of the same "
                            f"release") from None
        raise LinkError(f"The engine refused the connection: {exc.message}") from None
    return welcome


def _listening(port: int) -> bool:
    """Whether something accepts connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_local(settings: Settings):
    """A client of the local engine: the one already answering on the port, or a new process."""
    global _local
    api = client_module()
    if not (_local is not None and _local.alive and _local.settings.process == settings.process):
        if _local is not None:
            _local.stop()
            _local = None
        if _listening(settings.port):  # an engine started elsewhere (another Blender, a terminal)?
            client = _new_client(settings, min(settings.timeout, 2.0))
            try:
                return client, _hello(client)
            except api.EngineUnavailable:
                client.close()
                raise LinkError(f"Port {settings.port} is taken by something that is not an engine: "
                                f"choose another port in the add-on preferences") from None
        _local = LocalEngine(settings)
    deadline = time.monotonic() + START_TIMEOUT
    client = _new_client(settings, 1.0)
    try:
        while True:
            try:
                return client, _hello(client)
            except api.EngineUnavailable:
                if not _local.alive:
                    raise LinkError(local_engine_failed()) from None
                if time.monotonic() > deadline:
                    raise LinkError(f"The local engine did not answer within {START_TIMEOUT:.0f} s: "
                                    f"{_local.log_tail()}") from None
    except BaseException:
        client.close()
        raise


def _open(settings: Settings):
    """A new client and the engine's welcome, starting the local engine if needed; LinkError."""
    api = client_module()
    try:
        if settings.mode == "LOCAL":
            client, welcome = _start_local(settings)
            client.timeout = settings.timeout
            return client, welcome
        client = _new_client(settings, settings.timeout)
        try:
            return client, _hello(client)
        except BaseException:
            client.close()
            raise
    except api.EngineUnavailable as exc:
        raise LinkError(f"Engine not reachable at {settings.target}: {exc}") from None


def connect(settings: Settings):
    """The shared client and the engine's welcome; LinkError with a message for the editor.
    Blocking (seconds while a local engine starts): call it from a worker thread in the UI."""
    global _client, _client_settings, _welcome
    with _lock:
        engine_gone = _local is not None and not _local.alive  # restart the local engine
        if _client is not None and _client_settings.endpoint == settings.endpoint and not engine_gone:
            _client.timeout = settings.timeout  # a new timeout needs no new connection
            _client_settings = settings
            return _client, _welcome
        _forget_client()
        _client, _welcome = _open(settings)
        _client_settings = settings
        return _client, _welcome


def check(settings: Settings) -> dict:
    """Connection test on a client of its own (the shared one may be busy on the main thread); starts
    the local engine if needed. The welcome, or LinkError."""
    with _lock:
        client, welcome = _open(settings)
    client.close()
    return welcome


def in_thread(function, *args) -> Future:
    """Run a blocking engine request in a daemon thread; the UI polls the future from its timer."""
    future = Future()

    def work():
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the main thread, which reports it
            future.set_exception(exc)

    threading.Thread(target=work, name="vse_style engine", daemon=True).start()
    return future


def connect_async(settings: Settings) -> Future:
    return in_thread(connect, settings)


def connect_and_estimate_async(settings: Settings, *job) -> Future:
    return in_thread(connect_and_estimate, settings, *job)


def check_async(settings: Settings) -> Future:
    return in_thread(check, settings)


def describe(welcome: dict) -> str:
    """'Engine 0.1.0 on cuda:0 NVIDIA H100 (protocol 1)' for the connection test."""
    return (f"Engine {welcome.get('engine', '?')} on {welcome.get('device', '?')} "
            f"(protocol {welcome.get('protocol')})")


def explain(exc: BaseException) -> str:
    """One line for the editor from any failure of the client."""
    if isinstance(exc, LinkError):
        return str(exc)
    api = client_module()
    if isinstance(exc, api.EngineUnavailable):
        return f"Engine not reachable: {exc}"
    if isinstance(exc, api.EngineError):
        return f"The engine refused the request: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def estimate(client, width: int, height: int, frame_count: int, options: dict) -> dict:
    """What the job would cost on the engine (seconds, peak_bytes, fits, largest_width, ...); LinkError
    with a sentence that says what to change when it would not fit or is larger than the engine takes."""
    api = client_module()
    try:
        for attempt in range(20):  # `busy`: the engine's preview thread has others waiting
            try:
                found = client.estimate(width, height, frame_count, options)
                break
            except api.EngineError as exc:
                if exc.code != "busy" or attempt == 19:
                    raise
                time.sleep(0.5)
    except api.EngineError as exc:
        if exc.code == "unknown_type":  # an engine without estimates: go on without one
            return {}
        if exc.field == "width":
            limit = (client.welcome or {}).get("limits", {}).get("max_frame_pixels", 0)
            largest = int(width * (limit / (width * height)) ** 0.5) // 2 * 2 if limit else 0
            raise LinkError(f"{width}x{height} frames are more than this engine takes: set the width to "
                            f"{largest} px or less") from None
        raise LinkError(explain(exc)) from None
    except api.EngineUnavailable as exc:
        raise LinkError(explain(exc)) from None
    if not found.get("fits", True):
        raise LinkError(f"At {width}x{height} this needs about {found['peak_bytes'] / 2**30:.1f} GB and the engine "
                        f"({found.get('device')}) has {found['available_bytes'] / 2**30:.1f} GB free: set the width "
                        f"to {found['largest_width']} px or less, or use the Instant method")
    return found


@contextlib.contextmanager
def _own_client(settings: Settings):
    """connect() (which starts a local engine if needed), then a client of the caller's own: requests made
    on a worker thread must not share the socket the main thread's jobs read. Yields (shared client,
    welcome, own client)."""
    client, welcome = connect(settings)
    own = _new_client(settings, settings.timeout)
    try:
        yield client, welcome, own
    finally:
        own.close()


def connect_and_estimate(settings: Settings, width: int, height: int, frame_count: int, options: dict):
    """connect(), then estimate() the job on a client of its own (this may run on a worker thread):
    (client, welcome, estimate); LinkError for either."""
    with _own_client(settings) as (client, welcome, own):
        _hello(own)
        return client, welcome, estimate(own, width, height, frame_count, options)


NOT_STOPPED = "not stopped on the engine"


def continue_job(settings: Settings, job_id: str, token: str) -> str:
    """Ask the engine to run a cancelled or failed job again after its finished frames (blocking, any
    thread). '' when it is queued again, else one line saying why not."""
    api = client_module()
    try:
        with _own_client(settings) as (_client, _welcome, own):
            own.continue_job(job_id, token=token or None)
    except api.EngineError as exc:
        if exc.code == "bad_state":  # the add-on marked it failed (a lost connection), the engine did not
            return f"{NOT_STOPPED}: {exc.message}"
        if exc.code == "unknown_job":
            return f"The engine has no job {job_id} of this user any more (it was deleted or cleaned up)"
        return explain(exc)
    except (LinkError, api.EngineUnavailable) as exc:
        return explain(exc)
    return ""


def delete_job(settings: Settings, job_id: str, token: str) -> str:
    """Remove a job and its files from the engine (blocking, any thread: it may start the local engine).
    '' when it is gone (or was already), else one line saying why not."""
    api = client_module()
    try:
        with _own_client(settings) as (_client, _welcome, own):
            own.delete_job(job_id, token=token or None)
    except api.EngineError as exc:
        return "" if exc.code == "unknown_job" else explain(exc)
    except (LinkError, api.EngineUnavailable) as exc:
        return explain(exc)
    return ""


# -- one job -------------------------------------------------------------------------------------------

class JobLink:
    """One job on the engine: the upload (for a new job), then its events until it ends.

    ``tick()`` returns plain events, each a dict with ``type``:
    ``uploaded`` (count, total), ``accepted`` (job), ``progress`` (the engine's fields), ``frame`` (index,
    data), ``state`` (state, error message or ''), ``unreachable`` (message), ``reconnected``."""

    def __init__(self, client, job_id: str = "", since: int = 0, token: str = ""):
        self.client = client
        self.job_id = job_id
        self.token = token or None  # whose job it is (records made before owners had none)
        self.upload = None
        self.session = None
        self.state = "uploading"
        self._acked = 0
        if job_id:
            self.session = client.open_session(job_id, since=since, token=self.token)
        with _links_lock:
            _links.add(self)

    @classmethod
    def submit(cls, client, frames, styles, weights, options, width, height, name, token):
        link = cls(client, token=token)
        try:
            link.upload = client.start_submit(frames, styles, weights, options, width, height, name=name,
                                              token=token)
        except BaseException:
            link.close()
            raise
        return link

    def upload_again(self, frames):
        """Complete a job that waits in state ``uploading`` (its upload was interrupted): of ``frames``, all
        of the job's (paths, bytes or callables), only those the engine lacks are read and sent."""
        if self.session is not None:
            self.session.close()
            self.session = None
        self.upload = self.client.resume_upload(self.job_id, frames, token=self.token)

    def tick(self, max_seconds: float = 0.005, block: bool = False) -> list:
        """Bounded work (``max_seconds``); ``block`` waits for the engine that long (background mode)."""
        events = []
        if self.upload is not None:
            upload = self.upload
            upload.tick(max_seconds, block=block)
            if upload.job_id and not self.job_id:
                self.job_id = upload.job_id
                events.append({"type": "accepted", "job": upload.job_id})
            if len(upload.acked) != self._acked:
                self._acked = len(upload.acked)
                events.append({"type": "uploaded", "count": self._acked, "total": upload.total})
            if upload.state == "failed":
                raise LinkError(explain(upload.error))
            if upload.state == "done":
                self.upload = None
                self.state = "queued"
                self.session = self.client.open_session(self.job_id, token=self.token)
            return events
        for event in self.session.tick(max_seconds, block=block):
            kind = event.get("type")
            if kind == "job_status":
                self.state = event["state"]
                error = event.get("error") or {}
                events.append({"type": "state", "state": event["state"], "error": error.get("message") or ""})
            elif kind == "error":
                if event.get("code") == "unknown_job":
                    raise LinkError(f"The engine has no job {self.job_id} of this user (it was deleted or "
                                    f"cleaned up, or this is another engine)")
                raise LinkError(f"The engine refused the request: {event.get('message')}")
            elif kind in ("progress", "frame", "unreachable", "reconnected"):
                events.append(event)
        return events

    @property
    def done(self) -> bool:
        """The job ended and every frame it finished has been delivered."""
        return self.session is not None and self.session.done

    def cancel(self):
        """Ask the engine to stop (blocking up to the timeout). Before the engine knew the job: nothing.
        An upload under way stops first (the engine refuses frames of a cancelled job, which would read
        as a failure); the job's state then comes from a session, as after any cancel."""
        if not self.job_id:
            return
        self.client.cancel(self.job_id, token=self.token)
        if self.upload is not None:
            self.upload = None
            if self.session is None:
                self.session = self.client.open_session(self.job_id, token=self.token)

    def close(self):
        if self.session is not None:
            self.session.close()
            self.session = None
        with _links_lock:
            _links.discard(self)
        _release(self.client)
