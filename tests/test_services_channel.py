"""The services' simulated link: DIMEE_CHANNEL_* settings, noise on the hidden states a tier sends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services import TierSettings
from services.tier import TierService
from tests.factories import tiny_run_folder
from tiers import decode_handoff
from tiers.channel import measured_snr_db

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_folder(tmp_path_factory.mktemp("run"))


def _states(seed=0, hidden=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, hidden), generator=g) for n in (200, 150, 90)]


def test_channel_settings_from_environment(run_dir, monkeypatch):
    monkeypatch.setenv("DIMEE_RUN_DIR", str(run_dir))
    monkeypatch.setenv("DIMEE_TIER", "mobile")
    monkeypatch.setenv("DIMEE_CHANNEL_SNR_DB", "5")
    monkeypatch.setenv("DIMEE_CHANNEL_RATE_BPS", "1e6")
    monkeypatch.setenv("DIMEE_CHANNEL_PACKET_LOSS", "0.1")
    monkeypatch.setenv("DIMEE_CHANNEL_SEED", "3")
    settings = TierSettings()
    assert settings.channel_snr_db == 5.0 and settings.channel_packet_loss == 0.1 and settings.channel_seed == 3
    service = TierService(settings)
    assert service.channel is not None and service.channel.snr_db == 5.0 and service.channel.rate_bps == 1e6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channel_snr_db": 61}, "channel_snr_db"),
        ({"channel_snr_db": -30}, "channel_snr_db"),
        ({"channel_packet_loss": 1.0}, "channel_packet_loss"),
        ({"channel_rate_bps": 0}, "channel_rate_bps"),
        ({"channel_packet_loss": 0.1}, "DIMEE_CHANNEL_RATE_BPS"),
    ],
)
def test_bad_channel_settings_are_refused(run_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TierSettings(run_dir=run_dir, tier="mobile", **kwargs)


def test_noise_is_applied_to_what_leaves_the_tier(run_dir):
    clean = TierService(TierSettings(run_dir=run_dir, tier="mobile"))
    assert clean.channel is None
    noisy = TierService(TierSettings(run_dir=run_dir, tier="mobile", channel_snr_db=10.0, channel_seed=1))
    states = _states()
    sent_clean = decode_handoff(clean._encode(states, "fp32"), 32)
    sent_noisy = decode_handoff(noisy._encode(states, "fp32"), 32)
    assert torch.equal(sent_noisy.attention_mask, sent_clean.attention_mask)
    assert abs(measured_snr_db(sent_clean.hidden, sent_noisy.hidden, sent_clean.attention_mask) - 10.0) < 0.3
    pad = ~sent_clean.attention_mask.bool()
    assert torch.equal(sent_noisy.hidden[pad], torch.zeros_like(sent_noisy.hidden[pad]))
    # same seed, same sequence of handoffs -> the same noise
    first = TierService(TierSettings(run_dir=run_dir, tier="mobile", channel_snr_db=10.0, channel_seed=1))
    assert first._encode(states, "fp32") == TierService(
        TierSettings(run_dir=run_dir, tier="mobile", channel_snr_db=10.0, channel_seed=1)
    )._encode(states, "fp32")


def test_lossy_link_beyond_retransmissions_degrades_to_a_local_answer(run_dir):
    """Every packet lost and no retransmission: the handoff never reaches the (unreachable) next tier; the
    samples are answered at mobile, degraded, with the channel named as the reason."""
    from fastapi.testclient import TestClient

    from services import create_app

    settings = TierSettings(
        run_dir=run_dir, tier="mobile", next_url="http://127.0.0.1:9", handoff_token=TOKEN,
        channel_rate_bps=1e9, channel_packet_loss=0.999999, channel_max_retransmissions=0, channel_seed=0,
        request_timeout_s=5.0,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/classify", json={"texts": ["good", "bad film"], "force_tier": "edge"})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert all(p["degraded"] and p["tier"] == "mobile" for p in predictions)
    assert predictions[0]["degraded_reason"] == "link_lost"
