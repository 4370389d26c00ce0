"""A hop between tiers as a channel: rate, fixed latency, additive Gaussian noise (SNR) and packet loss.

Two effects of a bad link, modelled separately:

* **Noise on what is sent** (:meth:`Channel.apply_noise`): additive white Gaussian noise on the values of the
  real tokens that travel (padding never travels, so it gets none). The SNR is per sample: the signal power of
  a sample is the mean square of its real-token values, and the noise variance is that power / 10^(SNR/10).
  :func:`send_hidden_states` adds it to the hidden states before they are encoded (fp32/fp16/int8), on every
  hop; the services and the offline channel experiment both call it, so they see the same channel.
* **Packet loss with retransmission** (:meth:`Channel.transmission`): a payload is cut into packets of
  `packet_bytes`; each packet is lost independently with probability `packet_loss` and resent, up to
  `max_retransmissions` times (None: until it gets through). Expected transmissions per packet are
  (1 - p^(R+1)) / (1 - p) (= 1 / (1 - p) without a cap), so air time, and with it the hop's energy/cost,
  grows with the loss. :meth:`Channel.simulate_transmission` draws one seeded outcome instead.

Time of one hop = latency_s + bytes put on the air * 8 / rate_bps. A lost packet costs its own air time
again (no extra timeout is modelled).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

SNR_RANGE_DB = (-20.0, 60.0)


class ChannelError(ValueError):
    """A channel setting out of range (rate, SNR, loss, packet size ...)."""


def _is_number(value) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return numeric and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TransmissionOutcome:
    """What sending one payload over the channel took (expected values, or one simulated draw)."""

    seconds: float  # latency + air time of every (re)transmitted packet
    transmissions: float  # packets put on the air, retransmissions included
    packets: int  # packets the payload needs
    bytes_on_air: float  # payload bytes times the retransmission factor
    delivered: float  # probability (expected) or 0/1 (simulated) that every packet got through


@dataclass(frozen=True)
class Channel:
    """One hop. `snr_db=None` is a noiseless link; `rate_bps` in bit/s; `latency_s` a fixed delay."""

    rate_bps: float
    latency_s: float = 0.0
    snr_db: float | None = None
    packet_loss: float = 0.0
    packet_bytes: int = 1500
    max_retransmissions: int | None = 8

    def __post_init__(self) -> None:
        if not _is_number(self.rate_bps) or self.rate_bps <= 0:
            raise ChannelError(f"channel rate_bps must be a finite number > 0 (bit/s), got {self.rate_bps!r}")
        if not _is_number(self.latency_s) or self.latency_s < 0:
            raise ChannelError(f"channel latency_s must be a finite number >= 0 (seconds), got {self.latency_s!r}")
        if self.snr_db is not None:
            low, high = SNR_RANGE_DB
            if not _is_number(self.snr_db) or not low <= self.snr_db <= high:
                raise ChannelError(
                    f"channel snr_db must be within [{low:g}, {high:g}] dB (or None for a noiseless link), "
                    f"got {self.snr_db!r}"
                )
        if not _is_number(self.packet_loss) or not 0.0 <= self.packet_loss < 1.0:
            raise ChannelError(f"channel packet_loss must be a probability in [0, 1), got {self.packet_loss!r}")
        if not _is_int(self.packet_bytes) or self.packet_bytes < 1:
            raise ChannelError(f"channel packet_bytes must be an integer >= 1, got {self.packet_bytes!r}")
        retx = self.max_retransmissions
        if retx is not None and (not _is_int(retx) or retx < 0):
            raise ChannelError(f"channel max_retransmissions must be an integer >= 0 or None, got {retx!r}")

    # ---- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Channel":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ChannelError(f"unknown channel field(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    # ---- noise -------------------------------------------------------------------------------------------
    @property
    def noiseless(self) -> bool:
        return self.snr_db is None

    def apply_noise(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`hidden` [batch, seq, dim] plus Gaussian noise at this channel's SNR on the real tokens only.

        Returns a new tensor (the input is never modified); a noiseless channel returns a copy.
        """
        return add_awgn(hidden, attention_mask, self.snr_db, generator)

    # ---- packets and time --------------------------------------------------------------------------------
    def packets(self, n_bytes: int) -> int:
        if n_bytes < 0:
            raise ChannelError(f"payload size must be >= 0 bytes, got {n_bytes}")
        return int(math.ceil(n_bytes / self.packet_bytes))

    def expected_transmissions_per_packet(self) -> float:
        p = float(self.packet_loss)
        if p == 0.0:
            return 1.0
        if self.max_retransmissions is None:
            return 1.0 / (1.0 - p)
        return (1.0 - p ** (self.max_retransmissions + 1)) / (1.0 - p)

    def delivery_probability(self, n_bytes: int) -> float:
        """Probability that every packet gets through within the retransmission cap."""
        if self.max_retransmissions is None or self.packet_loss == 0.0:
            return 1.0
        return float((1.0 - self.packet_loss ** (self.max_retransmissions + 1)) ** self.packets(n_bytes))

    def transmission_outcome(self, n_bytes: int) -> TransmissionOutcome:
        """Expected time and transmissions of one payload of `n_bytes`."""
        packets = self.packets(n_bytes)
        factor = self.expected_transmissions_per_packet()
        on_air = n_bytes * factor
        return TransmissionOutcome(
            seconds=self.latency_s + on_air * 8.0 / self.rate_bps,
            transmissions=packets * factor,
            packets=packets,
            bytes_on_air=on_air,
            delivered=self.delivery_probability(n_bytes),
        )

    def transmission(self, n_bytes: int) -> tuple[float, float]:
        """(expected seconds, expected packets put on the air) for a payload of `n_bytes`."""
        outcome = self.transmission_outcome(n_bytes)
        return outcome.seconds, outcome.transmissions

    def simulate_transmission(self, n_bytes: int, rng: np.random.Generator | int) -> TransmissionOutcome:
        """One seeded draw: every packet is retried until it gets through or the cap is reached."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        packets = self.packets(n_bytes)
        if packets == 0:
            return TransmissionOutcome(self.latency_s, 0.0, 0, 0.0, 1.0)
        # attempts until first success ~ geometric(1 - p); capped at R + 1 attempts
        if self.packet_loss > 0:
            attempts = rng.geometric(1.0 - self.packet_loss, size=packets)
        else:
            attempts = np.ones(packets, dtype=np.int64)
        delivered = 1.0
        if self.max_retransmissions is not None:
            cap = self.max_retransmissions + 1
            delivered = float((attempts <= cap).all())
            attempts = np.minimum(attempts, cap)
        sizes = np.full(packets, self.packet_bytes, dtype=np.float64)
        sizes[-1] = n_bytes - self.packet_bytes * (packets - 1)
        on_air = float((attempts * sizes).sum())
        return TransmissionOutcome(
            seconds=self.latency_s + on_air * 8.0 / self.rate_bps,
            transmissions=float(attempts.sum()),
            packets=packets,
            bytes_on_air=on_air,
            delivered=delivered,
        )

    def hop_cost(self, n_bytes: int, fixed: float = 0.0, cost_per_second: float = 1.0) -> float:
        """Cost units of one hop on this channel: a fixed part plus `cost_per_second` times its expected time
        (the same shape as :meth:`tiers.CostModel.hop_cost`, with retransmissions and latency counted)."""
        return float(fixed + cost_per_second * self.transmission_outcome(n_bytes).seconds)


# ---- noise helpers (usable without a Channel) -----------------------------------------------------------------
def _check_snr(snr_db: float | None) -> None:
    if snr_db is None:
        return
    low, high = SNR_RANGE_DB
    if not _is_number(snr_db) or not low <= snr_db <= high:
        raise ChannelError(f"SNR must be within [{low:g}, {high:g}] dB (or None for no noise), got {snr_db!r}")


def _real_token_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if hidden.dim() != 3:
        raise ChannelError(f"expected hidden states [batch, seq, dim], got shape {tuple(hidden.shape)}")
    if attention_mask is None:
        return torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ChannelError(f"attention mask {tuple(attention_mask.shape)} does not match hidden {tuple(hidden.shape)}")
    return attention_mask.to(device=hidden.device, dtype=hidden.dtype)


def signal_power(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean square of each sample's real-token values, [batch]."""
    mask = _real_token_mask(hidden, attention_mask)
    squares = (hidden.float() ** 2 * mask.float().unsqueeze(-1)).sum(dim=(1, 2))
    counts = (mask.float().sum(dim=1) * hidden.shape[2]).clamp_min(1.0)
    return squares / counts


def add_awgn(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    snr_db: float | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Additive white Gaussian noise at `snr_db` (per-sample signal power over real tokens); padding untouched."""
    _check_snr(snr_db)
    if snr_db is None:
        return hidden.clone()
    mask = _real_token_mask(hidden, attention_mask)
    power = signal_power(hidden, attention_mask)  # [batch]
    std = torch.sqrt(power / (10.0 ** (snr_db / 10.0))).to(hidden.dtype)
    noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32, device=hidden.device).to(hidden.dtype)
    return hidden + noise * std.view(-1, 1, 1) * mask.unsqueeze(-1)


def measured_snr_db(clean: torch.Tensor, noisy: torch.Tensor, attention_mask: torch.Tensor | None = None) -> float:
    """10 log10(signal power / noise power) over all real tokens of a batch (pooled)."""
    mask = _real_token_mask(clean, attention_mask).float().unsqueeze(-1)
    signal = float((clean.float() ** 2 * mask).sum())
    noise = float(((noisy.float() - clean.float()) ** 2 * mask).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise)


def send_hidden_states(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    next_layer: int,
    encoding: str = "fp32",
    snr_db: float | None = None,
    generator: torch.Generator | None = None,
) -> bytes:
    """What leaves a tier over a (possibly noisy) link: AWGN at `snr_db` on the real tokens' values, then the
    handoff codec. The services call this on every hop and the channel experiment on every hop it simulates,
    so both put the same noise in the same place (before encoding: quantisation acts on the noisy values)."""
    from .codec import encode_handoff

    noisy = hidden if snr_db is None else add_awgn(hidden, attention_mask, snr_db, generator)
    return encode_handoff(noisy, attention_mask, next_layer, encoding)
