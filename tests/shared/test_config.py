"""Settings: aliases, URL normalisation, validation messages, production requirements, secret hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.platform.config import DEFAULT_CORS_ORIGINS, ConfigError, Settings, load_settings, normalise_database_url

NEON = "postgresql://neon_owner:npg_s3cretPw@ep-cool-moon-123456.eu-central-1.aws.neon.tech/neondb?sslmode=require"
ENV_NAMES = (
    "APP_ENV",
    "PORT",
    "DATA_DIR",
    "DATABASE_URL",
    "NEON_DATABASE_URL",
    "NEON_API_KEY",
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_CHAT_MODEL",
    "OPENAI_MODEL",
    "REDIS_URL",
    "CORS_ORIGINS",
    "CORS_ALLOWED_ORIGINS",
    "CORS_ORIGIN_REGEX",
    "SPACE_HOST",
    "ADMIN_API_KEY",
    "BETTER_AUTH_SECRET",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "WEB_CONCURRENCY",
    "EMBEDDING_DIMENSIONS",
    "RATE_LIMIT_CHAT",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No Lectern variable in the environment and a cwd without .env."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def make(**values: object) -> Settings:
    """Settings from explicit values only (no environment file)."""
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_defaults_are_embedded_mode(clean_env: pytest.MonkeyPatch) -> None:
    """Nothing set: development, port 7860, 2 workers, SQLite, local Qdrant, embedded Redis, offline."""
    settings = load_settings()
    assert settings.app_env == "development"
    assert settings.port == 7860
    assert settings.web_concurrency == 2
    assert settings.uses_sqlite
    assert settings.sqlalchemy_url.startswith("sqlite+aiosqlite:///")
    assert settings.embedded_qdrant
    assert settings.embedded_redis
    assert settings.effective_redis_url.startswith("unix://")
    assert settings.offline
    assert settings.effective_log_format == "console"
    assert settings.allowed_origins == list(DEFAULT_CORS_ORIGINS)
    assert settings.qdrant_collection == "textbook"
    assert settings.openai_chat_model == "gpt-4o-mini"
    assert settings.embedding_dimensions == 1536


@pytest.mark.parametrize("alias", ["DATABASE_URL", "NEON_DATABASE_URL", "NEON_API_KEY"])
def test_database_url_aliases(clean_env: pytest.MonkeyPatch, alias: str) -> None:
    """DATABASE_URL, NEON_DATABASE_URL and NEON_API_KEY all set the database."""
    clean_env.setenv(alias, NEON)
    settings = load_settings()
    assert not settings.uses_sqlite
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg://")


def test_openai_model_and_cors_aliases(clean_env: pytest.MonkeyPatch) -> None:
    """OPENAI_MODEL sets the chat model; CORS_ALLOWED_ORIGINS replaces the origin list."""
    clean_env.setenv("OPENAI_MODEL", "gpt-4.1-mini")
    clean_env.setenv("CORS_ALLOWED_ORIGINS", "https://a.example.com, https://b.example.com/")
    settings = load_settings()
    assert settings.openai_chat_model == "gpt-4.1-mini"
    assert settings.cors_origins == ["https://a.example.com", "https://b.example.com"]


@pytest.mark.parametrize(
    ("given", "scheme"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://"),
        ("postgresql://u:p@h/db", "postgresql+psycopg://"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+psycopg://"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite://"),
    ],
)
def test_database_url_normalised_for_async_driver(given: str, scheme: str) -> None:
    """postgres:// and friends map onto the async psycopg driver; sqlite onto aiosqlite."""
    assert normalise_database_url(given).startswith(scheme)


def test_neon_sslmode_and_options_kept() -> None:
    """Neon's sslmode=require (and other options) survive; asyncpg's ssl= is spelled sslmode."""
    url = make(database_url=NEON.replace("postgresql://", "postgres://") + "&channel_binding=require").sqlalchemy_url
    assert url.startswith("postgresql+psycopg://neon_owner:npg_s3cretPw@ep-cool-moon-123456")
    assert "sslmode=require" in url
    assert "channel_binding=require" in url
    assert "sslmode=require" in normalise_database_url("postgresql+asyncpg://u:p@h/db?ssl=require")


def test_star_cors_origin_refused(clean_env: pytest.MonkeyPatch) -> None:
    """'*' cannot be combined with credentials: a clear error naming CORS_ORIGINS."""
    clean_env.setenv("CORS_ORIGINS", "*")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "CORS_ORIGINS" in str(info.value)
    assert "exact origins" in str(info.value)


def test_space_host_is_an_allowed_origin() -> None:
    """SPACE_HOST (set by Hugging Face) adds https://$SPACE_HOST to the allowed origins."""
    settings = make(space_host="someone-lectern.hf.space")
    assert "https://someone-lectern.hf.space" in settings.allowed_origins
    assert set(DEFAULT_CORS_ORIGINS) <= set(settings.allowed_origins)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://u:hunter2pass@db.example.com/x", "postgresql://"),
        ("QDRANT_URL", "qdrant.example.com:6333", "http:// or https://"),
        ("REDIS_URL", "localhost:6379", "redis://"),
        ("RATE_LIMIT_CHAT", "twenty per minute", "20/minute"),
        ("PORT", "http", "integer"),
        ("APP_ENV", "staging", "development"),
        ("WEB_CONCURRENCY", "0", "greater than or equal to 1"),
    ],
)
def test_malformed_value_names_variable_and_form(
    clean_env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    """A malformed value: the message names the variable and the expected form, never the value."""
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert name in message
    assert expected in message
    if len(value) > 4:
        assert value not in message


def test_production_names_every_missing_variable(clean_env: pytest.MonkeyPatch) -> None:
    """APP_ENV=production with nothing set: one error naming all five required variables."""
    clean_env.setenv("APP_ENV", "production")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    for name in ("DATABASE_URL", "QDRANT_URL", "OPENAI_API_KEY", "ADMIN_API_KEY", "BETTER_AUTH_SECRET"):
        assert name in message


def test_production_partial_secrets_never_echoed(clean_env: pytest.MonkeyPatch) -> None:
    """Set secrets are neither reported missing nor shown; only the missing names appear."""
    clean_env.setenv("APP_ENV", "Production")
    clean_env.setenv("OPENAI_API_KEY", "sk-unit-marker-111")
    clean_env.setenv("ADMIN_API_KEY", "admin-unit-marker-222")
    clean_env.setenv("NEON_DATABASE_URL", NEON)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "QDRANT_URL" in message
    assert "BETTER_AUTH_SECRET" in message
    missing_part = message.split("not set:", 1)[1]
    assert "OPENAI_API_KEY" not in missing_part
    assert "DATABASE_URL" not in missing_part
    for value in ("sk-unit-marker-111", "admin-unit-marker-222", "npg_s3cretPw"):
        assert value not in message


def test_production_complete_loads(clean_env: pytest.MonkeyPatch) -> None:
    """All five set: production loads, JSON logs by default."""
    for name, value in {
        "APP_ENV": "production",
        "DATABASE_URL": NEON,
        "QDRANT_URL": "https://abc.eu-central.aws.cloud.qdrant.io",
        "OPENAI_API_KEY": "sk-test-abcdef",
        "ADMIN_API_KEY": "admin-abcdef",
        "BETTER_AUTH_SECRET": "x" * 32,
    }.items():
        clean_env.setenv(name, value)
    settings = load_settings()
    assert settings.is_production
    assert settings.effective_log_format == "json"
    assert not settings.offline


def test_dotenv_is_optional_but_used(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No .env: defaults. A .env in the working directory: its values, overridden by the environment."""
    assert load_settings().qdrant_collection == "textbook"
    (tmp_path / ".env").write_text("QDRANT_COLLECTION=from_dotenv\nRATE_LIMIT_CHAT=5/minute\n", encoding="utf-8")
    assert load_settings().qdrant_collection == "from_dotenv"
    clean_env.setenv("QDRANT_COLLECTION", "from_env")
    settings = load_settings()
    assert settings.qdrant_collection == "from_env"
    assert settings.rate_limit_chat == "5/minute"


def test_repr_and_dump_hide_secrets() -> None:
    """repr(), str() and model_dump() never show a secret value."""
    settings = make(
        database_url=NEON,
        openai_api_key="sk-repr-marker-333",
        qdrant_api_key="qdrant-repr-marker",
        admin_api_key="admin-repr-marker",
        better_auth_secret="auth-repr-marker",
    )
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    for value in ("npg_s3cretPw", "sk-repr-marker-333", "qdrant-repr-marker", "admin-repr-marker", "auth-repr-marker"):
        assert value not in shown
    assert "npg_s3cretPw" in settings.secret_values()
    assert "sk-repr-marker-333" in settings.secret_values()


def test_empty_strings_mean_unset() -> None:
    """An empty secret or URL (a blank Space variable) counts as not set."""
    settings = make(openai_api_key="", database_url="", qdrant_url="", redis_url="")
    assert settings.offline
    assert settings.uses_sqlite
    assert settings.embedded_qdrant
    assert settings.embedded_redis


def test_data_dir_paths(tmp_path: Path) -> None:
    """SQLite, Qdrant local files and the Redis socket all live in DATA_DIR."""
    settings = make(data_dir=tmp_path / "d")
    root = (tmp_path / "d").resolve()
    assert settings.sqlalchemy_url == f"sqlite+aiosqlite:///{root / 'lectern.db'}"
    assert settings.qdrant_path == root / "qdrant"
    assert settings.redis_socket_path == root / "redis.sock"
