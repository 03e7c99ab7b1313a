"""One `Settings` from the environment and `.env`; nothing else in the project reads os.environ."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["fal", "pixazo", "wavespeed", "preview"]
KNOWN_PROVIDERS: tuple[ProviderName, ...] = ("fal", "pixazo", "wavespeed", "preview")


class Settings(BaseSettings):
    """Every setting the bot reads. `.env.example` documents each one."""

    # Empty values count as unset, so a copy of .env.example with blanks left in means "the default".
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # Storage
    database_url: str = "sqlite:///data/animabot.db"
    data_dir: Path = Path("data")

    # Front-ends
    discord_token: SecretStr | None = None
    discord_api_base_url: str | None = None
    discord_gateway_url: str | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str | None = None
    telegram_file_base_url: str | None = None

    # Providers, tried in this order; empty means "every provider with a key, else preview"
    providers: Annotated[list[ProviderName], NoDecode] = Field(default_factory=list)
    fal_key: SecretStr | None = None
    fal_base_url: str = "https://queue.fal.run"
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    pixazo_api_key: SecretStr | None = None
    pixazo_base_url: str = "https://gateway.pixazo.ai"
    wavespeed_api_key: SecretStr | None = None
    wavespeed_base_url: str = "https://api.wavespeed.ai"
    preview_queue_seconds: float = Field(default=1.5, ge=0, le=60)

    # Web server: provider webhooks, hosted input images, health
    public_base_url: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=0, le=65535)

    # Credits: 1 credit = $0.05 at the default prices
    starting_credits: int = Field(default=20, ge=0)
    cost_i2v_512p: int = Field(default=4, ge=0)
    cost_i2v_1024p: int = Field(default=12, ge=0)
    cost_t2v_5s: int = Field(default=1, ge=0)
    cost_t2v_10s: int = Field(default=2, ge=0)
    daily_budget_usd: float = Field(default=0.0, ge=0)  # 0 = no cap

    # Limits
    job_deadline_seconds: int = Field(default=1200, ge=10)
    max_prompt_chars: int = Field(default=2000, ge=1)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_video_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def provider_order(self) -> list[ProviderName]:
        """Providers in failover order, as configured or as implied by the keys present."""
        if self.providers:
            return list(dict.fromkeys(self.providers))
        keyed: list[ProviderName] = []
        if self.fal_key:
            keyed.append("fal")
        if self.pixazo_api_key:
            keyed.append("pixazo")
        if self.wavespeed_api_key:
            keyed.append("wavespeed")
        return keyed or ["preview"]

    def problems(self) -> list[str]:
        """Configuration mistakes, one sentence each; empty when the bot can start."""
        found: list[str] = []
        keys = {"fal": self.fal_key, "pixazo": self.pixazo_api_key, "wavespeed": self.wavespeed_api_key}
        env = {"fal": "FAL_KEY", "pixazo": "PIXAZO_API_KEY", "wavespeed": "WAVESPEED_API_KEY"}
        for name in self.provider_order():
            if name != "preview" and not keys[name]:
                found.append(f"PROVIDERS lists {name} but {env[name]} is not set.")
        if self.public_base_url and not self.public_base_url.startswith(("http://", "https://")):
            found.append("PUBLIC_BASE_URL must start with http:// or https://.")
        if not self.database_url.startswith(("sqlite:///", "postgresql://")):
            found.append("DATABASE_URL must look like sqlite:///data/animabot.db or sqlite:////abs/path.db.")
        elif self.database_url.startswith("postgresql://"):
            found.append("DATABASE_URL: PostgreSQL is not supported yet; use sqlite:///path.")
        return found

    def notes(self) -> list[str]:
        """Things worth saying at start that are not mistakes."""
        notes: list[str] = []
        order = self.provider_order()
        if order == ["preview"]:
            notes.append("No provider key set: using the offline preview provider (renders a local zoom clip).")
        if "preview" in order and len(order) > 1:
            notes.append(
                "PROVIDERS mixes preview with real providers: members may be charged for an offline preview clip "
                "when the others fail."
            )
        if "pixazo" in order and not self.public_base_url:
            notes.append(
                "Pixazo needs a public image URL: without PUBLIC_BASE_URL it only takes images that already "
                "have one (Discord attachments)."
            )
        return notes


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per bad setting, naming the environment variable, never echoing its value."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        name = str(loc[0]).upper() if loc else "settings"
        if len(loc) > 1 and isinstance(loc[1], int):
            name += f" (entry {loc[1] + 1})"
        lines.append(f"{name}: {err['msg']}.")
    return lines
