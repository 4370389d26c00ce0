"""Settings of one tier service, read from DIMEE_* environment variables (or passed in directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tiers import ENCODINGS

TierName = Literal["mobile", "edge", "cloud"]
Encoding = Literal["fp32", "fp16", "int8"]

#: Default port of each tier when none is given (loopback only unless `host` says otherwise).
DEFAULT_PORTS: dict[str, int] = {"mobile": 8700, "edge": 8701, "cloud": 8702}
MIN_TOKEN_CHARS = 16


class TierSettings(BaseSettings):
    """Everything one tier process needs; every field can be set as DIMEE_<FIELD> in the environment.

    The handoff token is a shared secret between the tiers: edge and cloud refuse handoffs without it,
    and mobile (and edge, towards cloud) sends it. Generate one with
    `python -c "import secrets; print(secrets.token_urlsafe(32))"`.
    """

    model_config = SettingsConfigDict(env_prefix="DIMEE_", extra="ignore", validate_default=True)

    run_dir: Path = Field(description="run folder (encoder, exits, run.json, optional policy.json)")
    tier: TierName = Field(description="which tier this process serves")
    plan: str | None = Field(default=None, description="tier plan override 'm,e'; default: run.json's plan")
    next_url: str | None = Field(
        default=None, description="base URL of the next tier (edge's for mobile, cloud's for edge)"
    )
    cloud_url: str | None = Field(
        default=None,
        description="mobile: base URL of the cloud tier, for the direct routes mobile -> cloud (token ids or "
        "hidden states); edge reaches cloud through next_url",
    )
    host: str = Field(default="127.0.0.1", description="address to bind; loopback unless you mean otherwise")
    port: int | None = Field(default=None, ge=0, le=65535, description="port; default 8700/8701/8702 by tier")
    handoff_token: SecretStr | None = Field(default=None, description="shared secret for /v1/handoff")

    request_timeout_s: float = Field(default=10.0, gt=0, description="deadline of one request, all hops included")
    connect_timeout_s: float = Field(default=2.0, gt=0, description="TCP connect timeout towards the next tier")
    readiness_timeout_s: float = Field(default=1.0, gt=0, description="timeout of the next tier's /healthz probe")

    max_text_chars: int = Field(default=20_000, ge=1, description="longest text accepted, in characters")
    max_tokens: int | None = Field(
        default=None, ge=2, description="longest input in tokens; default run.json max_length"
    )
    max_texts: int = Field(default=64, ge=1, description="most samples in one request (and in one handoff body)")

    handoff_encoding: Encoding = Field(default="fp32", description="encoding of hidden states this tier sends")
    accepted_encodings: Annotated[tuple[Encoding, ...], NoDecode] = Field(
        default=("fp32", "fp16", "int8"), description="encodings this tier accepts (comma-separated in the env)"
    )

    channel_snr_db: float | None = Field(
        default=None, ge=-20, le=60,
        description="simulated link: Gaussian noise at this SNR (dB) on the hidden states sent; unset = none",
    )
    channel_packet_loss: float = Field(
        default=0.0, ge=0, lt=1, description="simulated link: packet loss probability (needs channel_rate_bps)"
    )
    channel_rate_bps: float | None = Field(
        default=None, gt=0, description="simulated link rate (bit/s): the handoff waits for its simulated air time"
    )
    channel_latency_s: float = Field(default=0.0, ge=0, description="simulated link: fixed latency per handoff")
    channel_packet_bytes: int = Field(default=1500, ge=1, description="simulated link: packet size in bytes")
    channel_max_retransmissions: int = Field(default=8, ge=0, description="simulated link: resends per packet")
    channel_seed: int = Field(default=0, description="seed of the simulated link's noise and packet losses")

    batch_window_ms: float = Field(default=5.0, ge=0, description="how long a forward pass waits for company")
    max_batch_size: int = Field(default=32, ge=1, description="most samples in one forward pass")
    inline_forward_max: int = Field(
        default=1,
        ge=0,
        description="a request of at most this many samples that finds the tier idle (no other request, nothing "
        "queued, no forward pass running, none for inline_idle_ms before) runs its forward pass on the event loop, "
        "without the batch window and the worker thread's two hand-offs; 0 = always through the batcher's thread",
    )
    inline_idle_ms: float = Field(
        default=2.0, ge=0, description="how long a tier must have been idle for inline_forward_max to apply"
    )

    max_body_bytes: int = Field(default=32 * 2**20, ge=1024, description="largest handoff body accepted")
    max_json_bytes: int = Field(default=2**20, ge=1024, description="largest JSON body accepted by /v1/classify")
    max_meta_bytes: int = Field(default=64 * 1024, ge=1024, description="largest metadata section of a handoff body accepted")

    policy: Literal["auto", "threshold"] = Field(
        default="auto", description="auto: <run>/policy.json via clustering when present; threshold: built-in rule"
    )
    experts: bool = Field(
        default=False,
        description="expert exits for distorted text: mobile detects each text's distortion type "
        "(<run>/experts/detector.json) and mobile and edge answer with that type's expert heads; cloud ignores it",
    )
    threshold: float = Field(default=0.9, ge=0, le=1, description="built-in rule: answer if max prob >= this")
    torch_threads: int = Field(default=1, ge=1, description="intra-op threads of the forward pass (set by serve_tier)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(
        default=False,
        description="uvicorn's access log line per request (off: each tier already logs one line per request with "
        "its request id and route, and counts requests in /metrics; the access log costs ~0.3 ms per request)",
    )
    parent_pid: int | None = Field(
        default=None, ge=1,
        description="stop serving once this process is no longer the tier's parent (start_all sets it, so tiers "
        "never outlive `dimee serve-all`, even when it is killed)",
    )  # fmt: skip

    @field_validator("accepted_encodings", mode="before")
    @classmethod
    def _split_encodings(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("accepted_encodings")
    @classmethod
    def _known_encodings(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"accept at least one handoff encoding of {', '.join(ENCODINGS)}")
        return tuple(dict.fromkeys(value))

    @field_validator("next_url", "cloud_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"tier URLs must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tier_requirements(self) -> "TierSettings":
        token = self.handoff_token.get_secret_value() if self.handoff_token else ""
        needs_token = self.tier in ("edge", "cloud") or self.next_url is not None or self.cloud_url is not None
        if needs_token and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"the {self.tier} tier needs DIMEE_HANDOFF_TOKEN (at least {MIN_TOKEN_CHARS} characters, the same on "
                'every tier); generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if self.tier == "cloud" and (self.next_url is not None or self.cloud_url is not None):
            raise ValueError("the cloud tier is the last one; it takes no next_url or cloud_url")
        if self.tier == "edge" and self.cloud_url is not None and self.next_url not in (None, self.cloud_url):
            raise ValueError("edge's next tier is cloud: give its URL once, as next_url (cloud_url differs from it)")
        return self

    @model_validator(mode="after")
    def _channel_requirements(self) -> "TierSettings":
        if self.channel_packet_loss > 0 and self.channel_rate_bps is None:
            raise ValueError("DIMEE_CHANNEL_PACKET_LOSS needs DIMEE_CHANNEL_RATE_BPS (retransmissions cost air time)")
        return self

    @property
    def bind_port(self) -> int:
        return DEFAULT_PORTS[self.tier] if self.port is None else self.port

    def url_for(self, target: str) -> str | None:
        """Base URL this tier sends samples to `target` ('edge' or 'cloud') at, or None if not configured."""
        if self.tier == "mobile":
            return self.next_url if target == "edge" else self.cloud_url if target == "cloud" else None
        if self.tier == "edge" and target == "cloud":
            return self.next_url or self.cloud_url
        return None

    @property
    def token(self) -> str:
        return self.handoff_token.get_secret_value() if self.handoff_token else ""
