"""Settings: the only module that reads the environment.

`load_settings()` is called once per process entry point (the API factory, the arq worker, the CLI and
`scripts/start`); everything else receives the resulting `Settings` object. Tests construct
`Settings(_env_file=None, ...)` directly.
"""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import limits
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.platform.constants import OFFLINE_EMBEDDING_DIMENSIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DOCS_DIR = REPO_ROOT / "docs" / "sample"

#: LECTERN_ROLES names (README "Topology"): which of the container's programs run. Unset or `all` means
#: every role this configuration can run (see `Settings.roles`); `shared.platform.roles` checks combinations.
ROLE_NAMES = ("api", "worker", "store", "redis", "watchdog")

DEFAULT_CORS_ORIGINS = (
    "http://localhost:3000",
    "http://localhost:3001",
    "https://physical-ai-textbook.vercel.app",
)

#: Variables that must be set when APP_ENV=production, with the name shown to operators.
PRODUCTION_REQUIRED = {
    "database_url": "DATABASE_URL",
    "qdrant_url": "QDRANT_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "admin_api_key": "ADMIN_API_KEY",
    "better_auth_secret": "BETTER_AUTH_SECRET",
}


#: One FRAME_ANCESTORS entry: an http(s) origin, optionally with a `*.` subdomain wildcard or a port.
_FRAME_ANCESTOR = re.compile(r"https?://(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*(:[0-9]{1,5})?", re.IGNORECASE)


class ConfigError(Exception):
    """Configuration is missing or malformed; the message names variables, never values."""


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every environment variable of API.md, typed, with defaults for embedded mode."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    app_env: Literal["development", "production"] = Field("development", validation_alias=_alias("APP_ENV"))
    port: int = Field(7860, ge=1, le=65535, validation_alias=_alias("PORT"))
    web_concurrency: int = Field(2, ge=1, le=64, validation_alias=_alias("WEB_CONCURRENCY"))
    data_dir: Path = Field(Path("./data"), validation_alias=_alias("DATA_DIR"))

    database_url: SecretStr | None = Field(
        None, validation_alias=_alias("DATABASE_URL", "NEON_DATABASE_URL", "NEON_API_KEY")
    )
    db_pool_size: int = Field(5, ge=1, validation_alias=_alias("DB_POOL_SIZE"))

    qdrant_url: str | None = Field(None, validation_alias=_alias("QDRANT_URL"))
    qdrant_api_key: SecretStr | None = Field(None, validation_alias=_alias("QDRANT_API_KEY"))
    qdrant_collection: str = Field("textbook", min_length=1, validation_alias=_alias("QDRANT_COLLECTION"))

    openai_api_key: SecretStr | None = Field(None, validation_alias=_alias("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_alias("OPENAI_BASE_URL"))
    openai_chat_model: str = Field("gpt-4o-mini", validation_alias=_alias("OPENAI_CHAT_MODEL", "OPENAI_MODEL"))
    openai_embedding_model: str = Field("text-embedding-3-small", validation_alias=_alias("OPENAI_EMBEDDING_MODEL"))
    embedding_dimensions: int = Field(1536, ge=1, le=8192, validation_alias=_alias("EMBEDDING_DIMENSIONS"))
    openai_timeout_s: float = Field(30.0, gt=0, validation_alias=_alias("OPENAI_TIMEOUT"))

    redis_url: str | None = Field(None, validation_alias=_alias("REDIS_URL"))

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CORS_ORIGINS),
        validation_alias=_alias("CORS_ORIGINS", "CORS_ALLOWED_ORIGINS"),
    )
    cors_origin_regex: str | None = Field(None, validation_alias=_alias("CORS_ORIGIN_REGEX"))
    space_host: str | None = Field(None, validation_alias=_alias("SPACE_HOST"))
    # Proxies in front of us that append to X-Forwarded-For; unset = 1 on Spaces (SPACE_HOST set), else 0.
    trusted_proxy_hops: int | None = Field(None, ge=0, le=10, validation_alias=_alias("TRUSTED_PROXY_HOPS"))
    # Who may frame the pages (`/`, `/admin`) besides the Space page https://huggingface.co (api.pages).
    frame_ancestors: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_alias("FRAME_ANCESTORS")
    )

    admin_api_key: SecretStr | None = Field(None, validation_alias=_alias("ADMIN_API_KEY"))
    better_auth_secret: SecretStr | None = Field(None, validation_alias=_alias("BETTER_AUTH_SECRET"))

    docs_dir: Path = Field(SAMPLE_DOCS_DIR, validation_alias=_alias("DOCS_DIR"))
    site_url: str = Field("https://physical-ai-textbook.vercel.app", validation_alias=_alias("SITE_URL"))

    chunk_size: int = Field(1200, ge=200, le=20000, validation_alias=_alias("CHUNK_SIZE"))
    chunk_overlap: int = Field(150, ge=0, le=5000, validation_alias=_alias("CHUNK_OVERLAP"))
    embed_batch_size: int = Field(100, ge=1, le=2048, validation_alias=_alias("EMBED_BATCH_SIZE"))
    embed_batch_tokens: int = Field(100_000, ge=1000, validation_alias=_alias("EMBED_BATCH_TOKENS"))
    embed_concurrency: int = Field(4, ge=1, le=64, validation_alias=_alias("EMBED_CONCURRENCY"))
    embed_rpm: int = Field(3000, ge=1, validation_alias=_alias("EMBED_RPM"))
    embed_tpm: int = Field(1_000_000, ge=1000, validation_alias=_alias("EMBED_TPM"))
    ingest_job_timeout: float = Field(600.0, gt=0, validation_alias=_alias("INGEST_JOB_TIMEOUT"))
    ingest_max_tries: int = Field(10, ge=1, validation_alias=_alias("INGEST_MAX_TRIES"))
    auto_ingest: bool | None = Field(None, validation_alias=_alias("AUTO_INGEST"))
    vector_rpc_timeout: float = Field(10.0, gt=0, validation_alias=_alias("VECTOR_RPC_TIMEOUT"))

    rate_limit_chat: str = Field("20/minute", validation_alias=_alias("RATE_LIMIT_CHAT"))
    # Sign-in attempts per client IP and per email (brute-force guard, shared by all workers via Redis).
    rate_limit_sign_in: str = Field("10/minute", validation_alias=_alias("RATE_LIMIT_SIGN_IN"))
    # Sign-ups per client IP (each costs one scrypt; generous enough for a classroom behind one NAT).
    rate_limit_sign_up: str = Field("30/hour", validation_alias=_alias("RATE_LIMIT_SIGN_UP"))

    # Chat (retrieval thresholds are calibrated in docs/notes/chat.md)
    retrieval_top_k: int = Field(5, ge=1, le=20, validation_alias=_alias("RETRIEVAL_TOP_K"))
    retrieval_min_dense_score: float = Field(0.45, validation_alias=_alias("RETRIEVAL_MIN_DENSE_SCORE"))
    retrieval_min_term_coverage: float = Field(0.6, ge=0, le=1, validation_alias=_alias("RETRIEVAL_MIN_TERM_COVERAGE"))
    retrieval_min_semantic_score: float = Field(
        0.35, ge=-1, le=1, validation_alias=_alias("RETRIEVAL_MIN_SEMANTIC_SCORE")
    )
    retrieval_offtopic_semantic_score: float = Field(
        0.25, ge=-1, le=1, validation_alias=_alias("RETRIEVAL_OFFTOPIC_SEMANTIC_SCORE")
    )
    chat_stream_idle_timeout_s: float = Field(30.0, gt=0, validation_alias=_alias("CHAT_STREAM_IDLE_TIMEOUT"))
    chat_stream_ping_interval_s: float = Field(15.0, gt=0, validation_alias=_alias("CHAT_STREAM_PING_INTERVAL"))
    content_cache_ttl_s: int = Field(30 * 24 * 3600, ge=60, validation_alias=_alias("CONTENT_CACHE_TTL"))
    circuit_failure_threshold: int = Field(5, ge=1, validation_alias=_alias("CIRCUIT_FAILURE_THRESHOLD"))
    circuit_recovery_timeout: float = Field(30.0, gt=0, validation_alias=_alias("CIRCUIT_RECOVERY_TIMEOUT"))
    # Worker watchdog (worker/watchdog.py): restart a worker whose arq health-check key is this stale.
    watchdog_stale_s: float = Field(20.0, gt=0, validation_alias=_alias("WATCHDOG_STALE_S"))
    watchdog_startup_grace_s: float = Field(90.0, ge=0, validation_alias=_alias("WATCHDOG_STARTUP_GRACE_S"))
    # Scale-out (README "Topology"): this container's roles, its name in /health/circuits, and how long an
    # API- or worker-only container waits at start for the container that serves the embedded store.
    lectern_roles: str | None = Field(None, validation_alias=_alias("LECTERN_ROLES"))
    hostname: str = Field(default_factory=socket.gethostname, min_length=1, validation_alias=_alias("HOSTNAME"))
    store_wait_s: float = Field(30.0, ge=0, le=600, validation_alias=_alias("LECTERN_STORE_WAIT"))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias=_alias("LOG_LEVEL")
    )
    log_format: Literal["json", "console"] | None = Field(None, validation_alias=_alias("LOG_FORMAT"))

    # ---- validators -------------------------------------------------------------------------
    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        return value

    @field_validator("cors_origin_regex")
    @classmethod
    def _check_origin_regex(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a regular expression matching whole origins ({exc.msg})") from None
        return value

    @field_validator("frame_ancestors", mode="before")
    @classmethod
    def _check_frame_ancestors(cls, value: Any) -> Any:
        # Strict, because each entry is written into a Content-Security-Policy header verbatim.
        items = value.split(",") if isinstance(value, str) else value
        origins = [str(item).strip().rstrip("/") for item in items or () if str(item).strip()]
        for origin in origins:
            if not _FRAME_ANCESTOR.fullmatch(origin):
                raise ValueError(f"expected comma-separated origins like https://example.com, got {origin!r}")
        return origins

    @field_validator("lectern_roles", mode="before")
    @classmethod
    def _check_roles(cls, value: Any) -> Any:
        if value is None or str(value).strip() == "":
            return None
        names = [item.strip().lower() for item in str(value).split(",") if item.strip()]
        if not names or any(name not in (*ROLE_NAMES, "all") for name in names):
            raise ValueError(f"expected 'all' or a comma-separated list of {', '.join(ROLE_NAMES)}")
        return ",".join(names)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("app_env", mode="before")
    @classmethod
    def _lower_env(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url", mode="before")
    @classmethod
    def _check_db_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        allowed = ("postgres", "postgresql", "postgresql+psycopg", "postgresql+asyncpg", "sqlite", "sqlite+aiosqlite")
        if scheme not in allowed:
            raise ValueError("expected a URL such as postgresql://user:password@host/db?sslmode=require")
        return text

    @field_validator("qdrant_url", "openai_base_url", mode="before")
    @classmethod
    def _check_http_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not str(value).startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return str(value).rstrip("/")

    @field_validator("redis_url", mode="before")
    @classmethod
    def _check_redis_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not str(value).startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db, rediss://... or unix:///path/to/socket")
        return str(value)

    @field_validator("rate_limit_chat", "rate_limit_sign_in", "rate_limit_sign_up")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        # The limiter's own parser (`limits`), so a rate that starts up is a rate the limiter counts.
        try:
            single = len(limits.parse_many(value)) == 1
        except ValueError:
            single = False
        if not single:
            raise ValueError("expected one rate '<count>/<second|minute|hour|day>', e.g. 20/minute")
        return value

    @field_validator("openai_api_key", "qdrant_api_key", "admin_api_key", "better_auth_secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_cors(self) -> Settings:
        if "*" in self.cors_origins:
            raise ValueError("CORS_ORIGINS: '*' cannot be used because credentials are allowed; list exact origins")
        for origin in self.cors_origins:
            if not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS_ORIGINS: expected exact origins like https://example.com, got {origin!r}")
        return self

    # ---- derived values ---------------------------------------------------------------------
    @property
    def is_production(self) -> bool:
        """True when APP_ENV=production."""
        return self.app_env == "production"

    @property
    def effective_log_format(self) -> str:
        """JSON in production unless LOG_FORMAT says otherwise; console in development."""
        return self.log_format or ("json" if self.is_production else "console")

    @property
    def offline(self) -> bool:
        """No LLM configured: extractive answers, and the bundled local model embeds."""
        return self.openai_api_key is None

    @property
    def dense_dimensions(self) -> int:
        """The size of the stored dense vectors: EMBEDDING_DIMENSIONS online, the offline embedder's offline."""
        return OFFLINE_EMBEDDING_DIMENSIONS if self.offline else self.embedding_dimensions

    @property
    def auto_ingest_sample_docs(self) -> bool:
        """Ingest DOCS_DIR on first start: AUTO_INGEST, defaulting to on in development."""
        return (not self.is_production) if self.auto_ingest is None else self.auto_ingest

    @property
    def embedded_redis(self) -> bool:
        """True when the container's own Redis serves the queue and caches."""
        return self.redis_url is None

    @property
    def embedded_qdrant(self) -> bool:
        """True when Qdrant runs embedded (Qdrant Edge) inside DATA_DIR, owned by the `store` role's worker."""
        return self.qdrant_url is None

    @property
    def roles(self) -> frozenset[str]:
        """LECTERN_ROLES; unset or `all`: api, worker and watchdog, plus redis without REDIS_URL and store
        (the embedded Qdrant) without QDRANT_URL, i.e. the single container of today."""
        every = {"api", "worker", "watchdog"}
        every |= {"redis"} if self.embedded_redis else set()
        every |= {"store"} if self.embedded_qdrant else set()
        names = set((self.lectern_roles or "all").split(","))
        return frozenset(every | (names - {"all"}) if "all" in names else names)

    @property
    def owns_embedded_store(self) -> bool:
        """True when this container's worker process opens the embedded Qdrant folder and serves it."""
        return self.embedded_qdrant and "store" in self.roles

    @property
    def redis_socket_path(self) -> Path:
        """The embedded Redis unix socket."""
        return self.data_dir.resolve() / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        """REDIS_URL, or the embedded Redis socket."""
        return self.redis_url or f"unix://{self.redis_socket_path}"

    @property
    def qdrant_path(self) -> Path:
        """Folder of the embedded Qdrant store (the Edge shard lives in `edge/<collection>` inside)."""
        return self.data_dir.resolve() / "qdrant"

    @property
    def sqlalchemy_url(self) -> str:
        """Database URL for the async engine (psycopg or aiosqlite), sslmode and options kept."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'lectern.db'}"
        return normalise_database_url(self.database_url.get_secret_value())

    @property
    def uses_sqlite(self) -> bool:
        """True when the database is SQLite."""
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def allowed_origins(self) -> list[str]:
        """CORS origins plus https://$SPACE_HOST when Hugging Face sets it."""
        origins = list(self.cors_origins)
        if self.space_host:
            host = self.space_host.strip().rstrip("/")
            space_origin = host if host.startswith("https://") else f"https://{host}"
            if space_origin not in origins:
                origins.append(space_origin)
        return origins

    @property
    def effective_trusted_proxy_hops(self) -> int:
        """X-Forwarded-For entries appended by trusted proxies: TRUSTED_PROXY_HOPS, or 1 on Spaces, else 0."""
        if self.trusted_proxy_hops is not None:
            return self.trusted_proxy_hops
        return 1 if self.space_host else 0

    def secret_values(self) -> list[str]:
        """Every configured secret value (for log redaction); never logged itself."""
        values: list[str] = []
        for secret in (self.openai_api_key, self.qdrant_api_key, self.admin_api_key, self.better_auth_secret):
            if secret is not None and len(secret.get_secret_value()) >= 6:
                values.append(secret.get_secret_value())
        if self.database_url is not None:
            password = urlsplit(self.database_url.get_secret_value()).password
            if password and len(password) >= 4:
                values.append(password)
        return values

    def missing_production_variables(self) -> list[str]:
        """Names of the production-required variables that are unset (empty list outside production)."""
        if not self.is_production:
            return []
        return [env for field, env in PRODUCTION_REQUIRED.items() if getattr(self, field) is None]


def normalise_database_url(url: str) -> str:
    """Map postgres:// and postgresql:// onto the async psycopg driver; keep sslmode and other options."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
        scheme = "postgresql+psycopg"
    elif scheme == "sqlite":
        scheme = "sqlite+aiosqlite"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if scheme == "postgresql+psycopg":
        # asyncpg-style `ssl=require` is spelled `sslmode` by libpq.
        query = [("sslmode", v) if k == "ssl" else (k, v) for k, v in query]
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def redact_url(url: str) -> str:
    """A URL with its password replaced by '***', for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once and validate it, raising ConfigError with operator-facing text.

    The message names every missing production variable and every malformed one with the expected
    form; it never includes a value.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            loc = [str(part) for part in error["loc"] if isinstance(part, str)]
            field = loc[0] if loc else ""
            name = _env_name(field) if field in Settings.model_fields else (field.upper() or "configuration")
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {message}")
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems)) from None
    missing = settings.missing_production_variables()
    if missing:
        raise ConfigError(
            "APP_ENV=production but these required variables are not set: "
            + ", ".join(missing)
            + ". Add them as Secrets in the Space settings (see README, 'Deploy to Hugging Face')."
        )
    return settings


def generate_dev_secret() -> str:
    """A random secret for development cookies (scripts/start shares one across processes)."""
    return secrets.token_urlsafe(32)
