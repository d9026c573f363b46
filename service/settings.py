"""Every knob of the service: one frozen pydantic model, read from `DERMAGAN_*` environment variables.

`Settings.from_env(environ)` takes the environment as a parameter (tests pass a dict) and names the
variable in every error; every float must be finite. `create_app(settings=None)` builds one from `os.environ`
when given none. `unknown_variables(environ)` names the DERMAGAN_* variables that are no setting (a misspelt one
would be ignored): `dermagan serve` warns of them at start-up.

| variable | default | meaning |
|---|---|---|
| DERMAGAN_MODELS_DIR | the repository's `models/` | folder with manifest.json and the ONNX files |
| DERMAGAN_MODELS | (all) | comma-separated model names to serve; an unknown name refuses to start |
| DERMAGAN_HOST / DERMAGAN_PORT | 0.0.0.0 / 8000 | where `dermagan serve` listens |
| DERMAGAN_PROVIDERS | CUDAExecutionProvider,CPUExecutionProvider | ONNX Runtime providers, in order |
| DERMAGAN_WORKERS | 1 | server processes sharing the port (`dermagan serve --workers N`); each loads every model and has its own batchers; `/metrics` adds them up |
| DERMAGAN_INTRA_OP_THREADS | 0 (= CPU cores / workers) | ORT intra-op threads per session |
| DERMAGAN_ORT_SPINNING | false | let ORT's idle intra-op threads spin (lower latency back to back, but burns the cores the codec needs) |
| DERMAGAN_MAX_BATCH | 8 | rows (images / tiles) per inference batch |
| DERMAGAN_MAX_DELAY_MS | 2 | how long a batch may wait to fill while the executor is busy |
| DERMAGAN_BATCH_BUCKETS | (1..max_batch) | batch sizes actually run (others are zero-padded up); all warmed |
| DERMAGAN_QUEUE_SIZE | 64 | queued requests per model; beyond it 503 + Retry-After |
| DERMAGAN_MAX_INFLIGHT | 0 (= queue_size + 2 x codec threads x workers) | work requests (POST /generate, /eczema/*) in the service at once, all `--workers` together, from the end of their upload to their answer; while it is full, 503 `queue_full` + Retry-After before the body is read |
| DERMAGAN_MAX_UPLOADS | 0 (= 4 x the in-flight limit) | work requests whose bodies are still arriving, all `--workers` together (each worker its share); beyond it 503 `queue_full` + Retry-After before the body is read. A slow upload holds one of these, not an in-flight place: slow clients cannot keep the models idle. Bounds the memory of bodies in transit (at most this x DERMAGAN_MAX_BODY_BYTES) |
| DERMAGAN_CODEC_THREADS | 0 (= CPU cores / workers) | threads that decode, pre-/post-process and PNG-encode images (one bounded pool) |
| DERMAGAN_UPLOAD_IDLE_S | 10 | an upload that sends nothing for this long is answered 408 `upload_stalled` and gives its upload place back (as nginx's client_body_timeout): idle connections cannot hold the upload places for the whole deadline |
| DERMAGAN_UPLOAD_MIN_RATE | 1024 | bytes per second an upload must average once it has taken DERMAGAN_UPLOAD_IDLE_S (as Kestrel's MinRequestBodyDataRate and Apache's mod_reqtimeout MinRate), else 408 `upload_stalled` and its upload place is given back: connections that trickle a byte now and then cannot hold the upload places until the deadline; 0 = off |
| DERMAGAN_SEND_IDLE_S | 10 | a client that takes no byte of its answer for this long (a stuck or vanished reader; more than the socket's buffers are waiting) has its connection closed and the answer dropped (as nginx's send_timeout): answers nobody reads do not pin memory, nor hold up a shutdown. Counted as `send_stalled` |
| DERMAGAN_HEAD_TIMEOUT_S | 10 | a request's head (request line and headers) must arrive whole within this long of its first byte, else 408 `head_timeout` and the connection is closed (as nginx's client_header_timeout); with DERMAGAN_TLS_CERTFILE set a TLS handshake must be done within it too; a new connection that sends nothing is closed after DERMAGAN_KEEP_ALIVE_S, as an idle keep-alive one is. Connections that trickle a head or a handshake, or say nothing, cannot pile up |
| DERMAGAN_MAX_HEAD_BYTES | 65536 | a request's head (request line and headers) over this many bytes is answered 431 `head_too_large` and the connection closed, before more of it is held (under httptools, `dermagan serve`'s default; h11 has its own 16 KiB limit); nginx allows ~32 KiB, Node.js 16 KiB |
| DERMAGAN_REQUEST_TIMEOUT_S | 30 | deadline of a request from arrival, over upload, codec waits, queue and inference; past it 504 |
| DERMAGAN_RETRY_AFTER_S | 1 | the Retry-After of 503 answers (all but `model_unavailable`, which retrying cannot help) |
| DERMAGAN_MAX_BODY_BYTES | 33554432 | request bodies above this get 413 (Content-Length checked first) |
| DERMAGAN_MAX_PIXELS | 16000000 | decoded images above this get 413 (checked from the header); at most 178956970, the size above which Pillow refuses any image as a decompression bomb |
| DERMAGAN_IMAGE_BUDGET_MP | 100 | megapixels of uploaded images edited or segmented at once, all workers together (each gets its share): an edit whose image does not fit waits, first come first served, within its deadline (service/budget.py). Bounds the memory that large photographs take (~4 bytes a pixel held from decoding to encoding, and an image with an alpha channel counts 5/4 of its pixels for the alpha it keeps; an edit without a mask at a large `work_px` counts its blending memory, up to ~4.75x its pixels); 0 = no bound |
| DERMAGAN_MAX_COUNT | 64 | largest `count` of /generate |
| DERMAGAN_MASK_DILATE_PX | 8 | pixels within this distance of the mask may change; all others are bit-identical |
| DERMAGAN_MASK_CONTEXT | 0.5 | context around the mask's box, as a fraction of the box side |
| DERMAGAN_TILE_OVERLAP | 0.25 | overlap of neighbouring tiles (mask-free edits), fraction of the tile side |
| DERMAGAN_TLS_CERTFILE / DERMAGAN_TLS_KEYFILE | (none) | serve HTTPS (uvicorn's TLS): the certificate chain (PEM) and its private key, both or neither; checked at start-up (unreadable, or a key that is not the certificate's: refused, naming the file). Medical images then never cross the network in clear without a TLS proxy in front |
| DERMAGAN_API_KEY | (none) | when set, every endpoint but /healthz, /readyz and the documentation (DERMAGAN_DOCS) needs `X-API-Key` or `Authorization: Bearer`. Several keys, comma-separated, are each accepted: to rotate one, add the new key, move the clients over, then remove the old one -- no request is refused on the way |
| DERMAGAN_CORS_ORIGINS | (none) | comma-separated origins (`https://annotate.example.org`, or `*`) whose web pages may call the service from a browser (CORS); they may send X-API-Key / Authorization and read X-Request-ID, X-Dermagan-Model, X-Dermagan-Model-Sha256, X-Dermagan-Seed and Retry-After |
| DERMAGAN_ROOT_PATH | (none) | the path under which a reverse proxy that strips it publishes the service (`/dermagan` for `https://host/dermagan/generate` arriving as `/generate`): the documentation pages and the OpenAPI document's server URL use it, so /docs and its Try it out work through the proxy (uvicorn's `root_path`) |
| DERMAGAN_DOCS | true | serve the API's documentation -- /docs (Swagger UI), /redoc, /openapi.json -- open without the API key (it holds no data) and loading nothing from outside the service; false: 404 |
| DERMAGAN_DRAIN_TIMEOUT_S | 30 | on SIGTERM, how long accepted work may take to finish |
| DERMAGAN_KEEP_ALIVE_S | 5 | an idle keep-alive connection is closed after this long (uvicorn's `timeout_keep_alive`); behind a load balancer, set it above the balancer's idle timeout (60 s on AWS ALB), or the balancer may send a request down a connection the service is closing and answer 502 |
| DERMAGAN_MALLOC_ARENAS | 2 | cap on glibc's malloc arenas per process (0 = glibc's default of 8 per core; `MALLOC_ARENA_MAX` wins): keeps RSS near its baseline after a surge |
| DERMAGAN_GC_FREEZE | true | once warm, move the objects alive at start-up out of the garbage collector's reach (`gc.freeze`): a full collection, which runs in the event loop, then takes ~0.1 ms instead of ~20-60 ms |
| DERMAGAN_EARLY_REFUSAL | true | on uvicorn's httptools protocol, a request the service is too full to admit gets its 503 from the HTTP protocol itself, before an ASGI task exists (service/shedding.py): the same answer for about a third to half of the event loop's CPU |
| DERMAGAN_WARMUP | true | warm every batch bucket before /readyz turns 200 |
| DERMAGAN_LOG_LEVEL | info | log level: debug, info, warning, error or critical |
| DERMAGAN_LOG_FORMAT | text | text: one readable line per record; json: one JSON object per line (`time` in ISO 8601 UTC, `level`, `logger`, `message`; an access line adds `client`, `method`, `path`, `status`, `duration_ms`, `model`, `request_id`), uvicorn's own lines included, for a log collector |
| DERMAGAN_ACCESS_LOG | true | one line per request at info (logger `dermagan.access`): client, method, path, status, time, model and request ID (X-Request-ID); never a query string, header value or body; health probes answered 200 are not logged; an overload's refusals as DERMAGAN_ACCESS_LOG_REFUSALS says |
| DERMAGAN_ACCESS_LOG_REFUSALS | summary | the access lines of 503 `queue_full` refusals: summary writes the first refusal of each second in full and one line counting the others of that second (an overload refuses thousands a second, and a line each cost the event loop about as much as the refusal: fewer answers served); each: a line each |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from dermagan.cpus import usable_cores

ENV_PREFIX = "DERMAGAN_"
#: DERMAGAN_* variables that are not settings: set by `dermagan serve --workers N` for its workers
#: (cli.SUPERVISOR_ENV, admission.ADMISSION_ENV), or read by docker compose (docker-compose.yml,
#: deploy/*.yml) in the same shell
NOT_SETTINGS = frozenset({"DERMAGAN_SUPERVISOR_PID", "DERMAGAN_SHARED_ADMISSION", "DERMAGAN_MODELS_HOST_DIR",
                          "DERMAGAN_PUBLISH_PORT", "DERMAGAN_IMAGE", "DERMAGAN_CPU_IMAGE"})


def _keys_in(secret: SecretStr) -> tuple[bytes, ...]:
    """The keys of DERMAGAN_API_KEY (comma-separated, spaces around them dropped), as headers carry them."""
    return tuple(k.strip().encode() for k in secret.get_secret_value().split(",") if k.strip())


def default_models_dir() -> Path:
    """The repository's `models/` folder (the package lives in <repo>/service/)."""
    return Path(__file__).resolve().parent.parent / "models"


def models_dir_hint(given: bool) -> str:
    """What to add to "manifest not found" when the models folder was not given (no --models-dir, no
    DERMAGAN_MODELS_DIR) and the default one does not exist: a package installed from a wheel has no models/."""
    if given or "DERMAGAN_MODELS_DIR" in os.environ or default_models_dir().is_dir():
        return ""
    return ("; the shipped models live in the source checkout's models/ (an installed package has none): pass "
            "--models-dir DIR or set DERMAGAN_MODELS_DIR")


def pillow_pixel_limit() -> int | None:
    """The pixels above which Pillow refuses to open an image (DecompressionBombError: more than twice
    PIL.Image.MAX_IMAGE_PIXELS, 178,956,970 by default); None where that check is off."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The DERMAGAN_* variables of `environ` (default os.environ) that are no setting and none of NOT_SETTINGS,
    each with the setting it is closest to where one is close (`DERMAGAN_MAX_INFLGHT (DERMAGAN_MAX_INFLIGHT?)`):
    the service ignores them, so a misspelt setting would not take effect."""
    import difflib

    environ = os.environ if environ is None else environ
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    out = []
    for key in sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in NOT_SETTINGS and k not in known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        out.append(f"{key} ({close[0]}?)" if close else key)
    return out


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use."""


class Settings(BaseModel):
    """The service's configuration. Field `x` is read from `DERMAGAN_X`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # DERMAGAN_X=inf: refused

    models_dir: Path = Field(default_factory=default_models_dir)
    models: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = Field(0, ge=0)
    ort_spinning: bool = False
    max_batch: int = Field(8, ge=1, le=1024)
    max_delay_ms: float = Field(2.0, ge=0)
    batch_buckets: tuple[int, ...] = ()
    queue_size: int = Field(64, ge=1)
    max_inflight: int = Field(0, ge=0)
    max_uploads: int = Field(0, ge=0)
    codec_threads: int = Field(0, ge=0)
    request_timeout_s: float = Field(30.0, gt=0)
    upload_idle_s: float = Field(10.0, gt=0)
    upload_min_rate: int = Field(1024, ge=0)
    send_idle_s: float = Field(10.0, gt=0)
    head_timeout_s: float = Field(10.0, gt=0)
    max_head_bytes: int = Field(64 * 1024, ge=1024)
    retry_after_s: int = Field(1, ge=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(16_000_000, ge=1)
    image_budget_mp: float = Field(100.0, ge=0, le=1e9)
    max_count: int = Field(64, ge=1)
    mask_dilate_px: int = Field(8, ge=0, le=256)
    mask_context: float = Field(0.5, ge=0, le=10)
    tile_overlap: float = Field(0.25, ge=0, lt=0.9)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    api_key: SecretStr | None = None
    cors_origins: tuple[str, ...] = ()
    root_path: str = ""
    docs: bool = True
    drain_timeout_s: float = Field(30.0, ge=0)
    keep_alive_s: int = Field(5, ge=1, le=3600)
    malloc_arenas: int = Field(2, ge=0, le=1024)
    gc_freeze: bool = True
    early_refusal: bool = True
    warmup: bool = True
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"  # what logging and uvicorn take
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    access_log_refusals: Literal["summary", "each"] = "summary"

    @field_validator("log_level", "access_log_refusals", mode="before")
    @classmethod
    def _lowercase(cls, level: Any) -> Any:
        return level.strip().lower() if isinstance(level, str) else level

    @field_validator("max_pixels")
    @classmethod
    def _pillow_limit(cls, pixels: int) -> int:
        limit = pillow_pixel_limit()
        if limit is not None and pixels > limit:
            raise ValueError(f"at most {limit}, got {pixels}: Pillow refuses any larger image as a decompression "
                             "bomb (2 x PIL.Image.MAX_IMAGE_PIXELS), so a higher limit could not take effect")
        return pixels

    @field_validator("root_path")
    @classmethod
    def _root_path(cls, root: str) -> str:
        if root and not re.fullmatch(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+", root):
            raise ValueError(f"{root!r} is not a URL path prefix: it starts with '/', names segments, and "
                             "ends without '/' (e.g. /dermagan or /ml/dermagan)")
        return root

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (http(s)://host[:port], no path) or *")
        return origins

    @field_validator("api_key")
    @classmethod
    def _keys(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not _keys_in(key):
            raise ValueError("no key in it (only commas and spaces): set a key, or unset the variable for an open service")
        return key

    @model_validator(mode="after")
    def _tls_pair(self) -> "Settings":
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = (("DERMAGAN_TLS_CERTFILE", "DERMAGAN_TLS_KEYFILE") if self.tls_keyfile is None
                              else ("DERMAGAN_TLS_KEYFILE", "DERMAGAN_TLS_CERTFILE"))
            raise ValueError(f"{given} is set but {missing} is not: HTTPS needs the certificate and its key")
        return self

    @property
    def api_keys(self) -> tuple[bytes, ...]:
        """The accepted API keys (DERMAGAN_API_KEY, comma-separated), as the request headers carry them."""
        return () if self.api_key is None else _keys_in(self.api_key)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certfile is not None else "http"

    @model_validator(mode="after")
    def _buckets(self) -> "Settings":
        if any(b < 1 or b > self.max_batch for b in self.batch_buckets):
            raise ValueError(f"batch_buckets must lie in 1..max_batch={self.max_batch}, got {list(self.batch_buckets)}")
        return self

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes run (and warmed); always includes max_batch."""
        if not self.batch_buckets:
            return tuple(range(1, self.max_batch + 1))
        return tuple(sorted(set(self.batch_buckets) | {self.max_batch}))

    @property
    def cores_per_worker(self) -> int:
        """The CPU cores this process may use (its affinity mask and its container's CPU quota,
        dermagan.cpus), shared out between the server processes."""
        return max(1, usable_cores() // self.workers)

    @property
    def codec_workers(self) -> int:
        """Threads of the codec pool: codec_threads, or this process's share of the CPU cores."""
        return self.codec_threads or self.cores_per_worker

    @property
    def ort_threads(self) -> int:
        """ORT intra-op threads per session: intra_op_threads, or this process's share of the cores."""
        return self.intra_op_threads or self.cores_per_worker

    @property
    def process_image_budget(self) -> int:
        """This worker's share of image_budget_mp, in pixels (0 = unbounded)."""
        return int(self.image_budget_mp * 1e6 / self.workers)

    @property
    def inflight_limit(self) -> int:
        """Work requests the service admits at once, all its worker processes together: max_inflight,
        or queue_size + 2 x codec threads per worker -- N workers admit what one process would, so the
        queueing delay a full service promises (admitted requests / throughput) does not grow with N."""
        return self.max_inflight or self.queue_size + 2 * self.codec_workers * self.workers

    @property
    def process_inflight_limit(self) -> int:
        """One worker's share of inflight_limit, for workers that share no count (started by another
        supervisor than `dermagan serve`)."""
        return max(1, self.inflight_limit // self.workers)

    @property
    def process_upload_limit(self) -> int:
        """One worker's share of max_uploads (default 4 x inflight_limit): requests whose bodies are still
        arriving. Each worker counts its own connections' uploads."""
        return max(1, (self.max_uploads or 4 * self.inflight_limit) // self.workers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build from `DERMAGAN_*` variables of `environ` (default os.environ); `overrides` win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = ENV_PREFIX + name.upper()
            if key not in environ:
                continue
            raw = environ[key].strip()
            if field.annotation in (tuple[str, ...], tuple[int, ...]):
                values[name] = [p.strip() for p in raw.split(",") if p.strip()]
            elif name in ("api_key", "tls_certfile", "tls_keyfile") and not raw:  # set but empty: none
                values[name] = None
            else:
                values[name] = raw
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            problems = []
            for err in e.errors():
                loc = str(err["loc"][0]) if err["loc"] else ""
                where = ENV_PREFIX + loc.upper() if loc in cls.model_fields and loc not in overrides else loc
                msg = err["msg"].removeprefix("Value error, ")
                if loc in values and values[loc] == "" and loc not in overrides:  # `docker run -e X=`, a template
                    default = cls.model_fields[loc].get_default(call_default_factory=True)
                    msg = f"set but empty: give it a value, or unset it for the default ({default})"
                problems.append(f"{where}: {msg}" if where else msg)  # a rule across settings names them itself
            raise SettingsError("invalid settings: " + "; ".join(problems)) from e
