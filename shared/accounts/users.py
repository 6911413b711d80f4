"""Users and profiles: keyword-only service functions that take the database session.

`AuthUser` is the signed-in user as the rest of the service sees it (what `CurrentUser` and
`OptionalUser` in `api.deps` give routes): id, email, name, proficiency and the profile answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.platform.errors import Conflict
from shared.stores.db.models import User, UserProfile, utcnow

Proficiency = Literal["beginner", "intermediate", "pro"]
PROFICIENCIES: tuple[str, ...] = get_args(Proficiency)
PROFILE_FIELDS = ("technical_background", "hardware_access", "learning_goals")


def iso(value: datetime) -> str:
    """An ISO-8601 UTC timestamp with milliseconds and `Z` (what JavaScript's Date and better-auth emit)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """Inverse of `iso`."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class AuthUser:
    """The signed-in user (account fields plus profile answers); cheap to cache and to pass around."""

    id: str
    email: str
    name: str
    proficiency: str
    email_verified: bool
    created_at: datetime
    updated_at: datetime
    technical_background: str | None = None
    hardware_access: str | None = None
    learning_goals: str | None = None

    @classmethod
    def from_rows(cls, user: User, profile: UserProfile | None) -> AuthUser:
        """Build from the `users` row and the optional `user_profiles` row."""
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            proficiency=user.proficiency,
            email_verified=user.email_verified,
            created_at=user.created_at,
            updated_at=user.updated_at,
            technical_background=profile.technical_background if profile else None,
            hardware_access=profile.hardware_access if profile else None,
            learning_goals=profile.learning_goals if profile else None,
        )

    def to_api(self) -> dict[str, Any]:
        """API.md's user object U (plus `image: null`, which the better-auth client types expect)."""
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "proficiency": self.proficiency,
            "emailVerified": self.email_verified,
            "image": None,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "technical_background": self.technical_background,
            "hardware_access": self.hardware_access,
            "learning_goals": self.learning_goals,
        }

    def to_cache(self) -> dict[str, Any]:
        """JSON-safe form for the session cache."""
        data = asdict(self)
        data["created_at"] = iso(self.created_at)
        data["updated_at"] = iso(self.updated_at)
        return data

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> AuthUser:
        """Inverse of `to_cache`."""
        values = dict(data)
        values["created_at"] = parse_iso(values["created_at"])
        values["updated_at"] = parse_iso(values["updated_at"])
        return cls(**values)

    @property
    def profile(self) -> dict[str, str | None] | None:
        """The profile answers, or None when none was ever given."""
        values = {name: getattr(self, name) for name in PROFILE_FIELDS}
        return values if any(v is not None for v in values.values()) else None


def normalise_email(email: str) -> str:
    """Emails are compared and stored lower-cased and trimmed."""
    return email.strip().lower()


async def find_user_by_email(*, db: AsyncSession, email: str) -> User | None:
    """The user with this email (case-insensitive), or None."""
    result = await db.exec(select(User).where(User.email == normalise_email(email)))
    return result.first()


async def get_profile(*, db: AsyncSession, user_id: str) -> UserProfile | None:
    """The user's profile row, or None."""
    return await db.get(UserProfile, user_id)


async def create_user(*, db: AsyncSession, email: str, name: str, password_hash: str, proficiency: str = "pro") -> User:
    """Insert a user (not committed); raises Conflict USER_ALREADY_EXISTS when the email is taken."""
    user = User(email=normalise_email(email), name=name.strip(), password_hash=password_hash, proficiency=proficiency)
    db.add(user)
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise Conflict("An account with this email already exists.", code="USER_ALREADY_EXISTS") from None
    return user


async def update_profile(*, db: AsyncSession, user_id: str, changes: dict[str, Any]) -> UserProfile:
    """Apply the given profile fields (and `proficiency`, which lives on the user) and commit."""
    profile = await db.get(UserProfile, user_id)
    if profile is None:
        profile = UserProfile(user_id=user_id)
        db.add(profile)
    now = utcnow()
    for name in PROFILE_FIELDS:
        if name in changes:
            setattr(profile, name, changes[name])
    profile.updated_at = now
    user = await db.get(User, user_id)
    if user is not None:
        if changes.get("proficiency") in PROFICIENCIES:
            user.proficiency = changes["proficiency"]
        user.updated_at = now
        db.add(user)
    await db.commit()
    return profile
