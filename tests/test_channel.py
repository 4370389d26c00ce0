"""The link as a channel: noise level, padding, determinism, packet loss, and the transmission-decision rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clustering import PolicyError
from clustering.transmission import (
    ConfidenceTD,
    DimeeTD,
    LogisticTD,
    SNRShiftedTD,
    evaluate_td,
    local_confidence,
    td_reward,
    transmission_rule_from_dict,
)
from tiers import decode_handoff, encode_handoff
from tiers.channel import Channel, ChannelError, add_awgn, measured_snr_db, signal_power


def _batch(seed: int = 0, batch: int = 8, seq: int = 64, dim: int = 384):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn((batch, seq, dim), generator=g) * 2.0 + 0.5
    lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    hidden = hidden * mask.unsqueeze(-1)  # zero padding, as a decoded handoff has
    return hidden, mask


# ---- noise ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 30.0])
def test_measured_snr_matches_setting(snr):
    hidden, mask = _batch()
    noisy = Channel(1e6, snr_db=snr).apply_noise(hidden, mask, torch.Generator().manual_seed(1))
    assert abs(measured_snr_db(hidden, noisy, mask) - snr) < 0.2


def test_snr_is_per_sample_power():
    hidden, mask = _batch(batch=2, seq=256)
    hidden[1] *= 100.0  # a loud sample and a quiet one each get their own noise level
    noisy = add_awgn(hidden, mask, 10.0, torch.Generator().manual_seed(0))
    for i in range(2):
        assert abs(measured_snr_db(hidden[i : i + 1], noisy[i : i + 1], mask[i : i + 1]) - 10.0) < 0.2
    assert torch.allclose(signal_power(hidden[:1], mask[:1]), (hidden[0][mask[0].bool()] ** 2).mean())


def test_noise_is_zero_on_padding_and_input_untouched():
    hidden, mask = _batch()
    before = hidden.clone()
    noisy = add_awgn(hidden, mask, 0.0, torch.Generator().manual_seed(3))
    pad = ~mask.bool()
    assert pad.any()
    assert torch.equal(noisy[pad], hidden[pad])
    assert (noisy[mask.bool()] != hidden[mask.bool()]).float().mean() > 0.99
    assert torch.equal(hidden, before)


def test_noise_is_deterministic_with_a_seed():
    hidden, mask = _batch()
    channel = Channel(1e6, snr_db=5.0)
    a = channel.apply_noise(hidden, mask, torch.Generator().manual_seed(7))
    b = channel.apply_noise(hidden, mask, torch.Generator().manual_seed(7))
    c = channel.apply_noise(hidden, mask, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_noiseless_channel_returns_a_copy():
    hidden, mask = _batch()
    out = Channel(1e6).apply_noise(hidden, mask)
    assert torch.equal(out, hidden) and out is not hidden
    assert math.isinf(measured_snr_db(hidden, out, mask))


def test_noise_on_decoded_handoff_keeps_format():
    hidden, mask = _batch(batch=3, seq=10, dim=16)
    for encoding in ("fp32", "fp16", "int8"):
        received = decode_handoff(encode_handoff(hidden, mask, 3, encoding), 16)
        noisy = add_awgn(received.hidden, received.attention_mask, 20.0, torch.Generator().manual_seed(0))
        assert noisy.shape == received.hidden.shape
        pad = ~received.attention_mask.bool()
        assert torch.equal(noisy[pad], torch.zeros_like(noisy[pad]))


# ---- validation -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate_bps": 0}, "rate_bps"),
        ({"rate_bps": -5.0}, "rate_bps"),
        ({"rate_bps": float("inf")}, "rate_bps"),
        ({"rate_bps": 1e6, "snr_db": 61.0}, "snr_db"),
        ({"rate_bps": 1e6, "snr_db": -21.0}, "snr_db"),
        ({"rate_bps": 1e6, "snr_db": float("nan")}, "snr_db"),
        ({"rate_bps": 1e6, "packet_loss": 1.0}, "packet_loss"),
        ({"rate_bps": 1e6, "packet_loss": -0.1}, "packet_loss"),
        ({"rate_bps": 1e6, "latency_s": -1.0}, "latency_s"),
        ({"rate_bps": 1e6, "packet_bytes": 0}, "packet_bytes"),
        ({"rate_bps": 1e6, "max_retransmissions": -1}, "max_retransmissions"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ChannelError, match=match):
        Channel(**kwargs)


def test_channel_errors_are_value_errors_and_dict_round_trip():
    channel = Channel(2e6, 0.01, 12.0, 0.1, 1000, 3)
    assert Channel.from_dict(channel.to_dict()) == channel
    with pytest.raises(ValueError, match="unknown channel field"):
        Channel.from_dict({"rate_bps": 1.0, "snr": 3})
    with pytest.raises(ChannelError, match="SNR"):
        add_awgn(torch.zeros(1, 2, 3), None, 100.0)
    with pytest.raises(ChannelError, match="attention mask"):
        add_awgn(torch.zeros(1, 2, 3), torch.ones(1, 3), 10.0)


# ---- packet loss and time -------------------------------------------------------------------------------------
def test_lossless_transmission_time():
    channel = Channel(rate_bps=8e6, latency_s=0.01, packet_bytes=1000)
    seconds, transmissions = channel.transmission(2500)
    assert transmissions == 3
    assert seconds == pytest.approx(0.01 + 2500 * 8 / 8e6)


def test_loss_increases_time_and_transmissions():
    uncapped = Channel(rate_bps=1e6, packet_loss=0.5, max_retransmissions=None, packet_bytes=100)
    seconds, transmissions = uncapped.transmission(1000)
    assert transmissions == pytest.approx(20.0)  # 10 packets / (1 - 0.5)
    assert seconds == pytest.approx(2 * 1000 * 8 / 1e6)
    capped = Channel(rate_bps=1e6, packet_loss=0.5, max_retransmissions=1, packet_bytes=100)
    assert capped.transmission(1000)[1] == pytest.approx(10 * 1.5)  # 1 + p attempts per packet
    assert capped.delivery_probability(1000) == pytest.approx(0.75**10)
    previous = (0.0, 0.0)
    for loss in (0.0, 0.1, 0.3, 0.6):
        now = Channel(1e6, packet_loss=loss).transmission(50_000)
        assert now[0] > previous[0] and now[1] > previous[1]
        previous = now
    assert Channel(1e6, packet_loss=0.2).hop_cost(50_000, fixed=0.1) > Channel(1e6).hop_cost(50_000, fixed=0.1)


def test_simulated_transmissions_match_expectation_and_are_seeded():
    channel = Channel(rate_bps=1e6, packet_loss=0.3, max_retransmissions=None, packet_bytes=100)
    a = channel.simulate_transmission(100_000, 5)
    assert a == channel.simulate_transmission(100_000, 5)
    expected = channel.transmission_outcome(100_000)
    assert a.transmissions == pytest.approx(expected.transmissions, rel=0.05)
    assert a.seconds == pytest.approx(expected.seconds, rel=0.05)
    assert a.delivered == 1.0
    capped = Channel(rate_bps=1e6, packet_loss=0.9, max_retransmissions=0, packet_bytes=100)
    draw = capped.simulate_transmission(10_000, 0)
    assert draw.transmissions == 100 and draw.delivered == 0.0


# ---- transmission-decision rules ------------------------------------------------------------------------------
def _td_data(n: int = 2000, seed: int = 0):
    """Two mobile exits; the local answer (exit 2) is right when confident, a coin flip otherwise. The remote
    answer is always right at SNR >= 10 dB and right 20% of the time below."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, n)
    labels = rng.integers(0, 2, n)
    local_right = np.where(conf > 0.8, True, rng.random(n) < 0.5)
    pred = np.where(local_right, labels, 1 - labels)
    p = np.where(pred == 1, conf, 1 - conf)
    last = np.stack([np.log(1 - p), np.log(p)], axis=1)
    logits = np.stack([last * 0.5, last], axis=1)  # [n, 2 exits, 2 classes]
    snrs = np.array([-5.0, 0.0, 20.0, 30.0])
    stacked_logits = np.concatenate([logits] * len(snrs))
    stacked_snr = np.repeat(snrs, n)
    stacked_labels = np.concatenate([labels] * len(snrs))
    remote = np.where(stacked_snr >= 10, True, rng.random(len(stacked_snr)) < 0.2)
    local = np.concatenate([local_right] * len(snrs))
    return logits, labels, local_right, stacked_logits, stacked_snr, stacked_labels, remote, local


def test_confidence_threshold_fits_the_break_even_point():
    logits, labels, *_ = _td_data()
    remote = np.ones(len(labels), bool)  # a perfect remote: transmit every sample the local answer may get wrong
    rule = ConfidenceTD().fit(logits, 30.0, labels, remote)
    assert 0.78 <= rule.threshold_ <= 0.82
    conf = local_confidence(logits)
    assert np.array_equal(rule.predict(logits, 30.0), conf < rule.threshold_)
    fixed = ConfidenceTD(threshold=0.6).fit(logits, 30.0, labels, remote)
    assert fixed.threshold_ == 0.6


def test_snr_shifted_threshold_stops_transmitting_on_a_bad_link():
    logits, labels, _, x, snr, y, remote, local = _td_data()
    fixed = ConfidenceTD().fit(x, snr, y, remote)
    shifted = SNRShiftedTD(snr_ref=20.0, snr_span=20.0).fit(x, snr, y, remote)
    assert shifted.slope_ < 0
    assert td_reward(shifted.predict(x, snr), local, remote, 0.0) > td_reward(fixed.predict(x, snr), local, remote, 0.0)
    assert shifted.predict(logits, -5.0).mean() < 0.05
    assert shifted.predict(logits, 30.0).mean() > 0.5
    assert shifted.thresholds([30.0, -5.0])[0] > shifted.thresholds([30.0, -5.0])[1]


def test_logistic_rule_uses_snr():
    logits, labels, _, x, snr, y, remote, local = _td_data()
    rule = LogisticTD().fit(x, snr, y, remote)
    low_conf = local_confidence(logits) < 0.7
    assert rule.predict(logits, 30.0)[low_conf].mean() > 0.9
    assert rule.predict(logits, -5.0).mean() < 0.1
    fixed = ConfidenceTD().fit(x, snr, y, remote)
    assert td_reward(rule.predict(x, snr), local, remote, 0.0) > td_reward(fixed.predict(x, snr), local, remote, 0.0)
    # a cost per transmission makes it transmit less
    costly = LogisticTD(cost_weight=0.3).fit(x, snr, y, remote)
    assert costly.predict(logits, 30.0).mean() < rule.predict(logits, 30.0).mean()


def test_dimee_rule_fits_one_stage_per_channel_state():
    logits, labels, _, x, snr, y, remote, local = _td_data()
    rule = DimeeTD().fit(x, snr, y, remote)
    assert rule.snrs_.tolist() == [-5.0, 0.0, 20.0, 30.0] and len(rule.stages_) == 4
    low_conf = local_confidence(logits) < 0.7
    assert rule.predict(logits, 30.0)[low_conf].mean() > 0.9  # a good link: transmit the doubtful ones
    assert rule.predict(logits, -5.0).mean() < 0.1  # a bad link: keep everything
    assert rule.predict(logits, 25.0).tolist() == rule.predict(logits, 30.0).tolist()  # nearest fitted state
    fixed = ConfidenceTD().fit(x, snr, y, remote)
    assert td_reward(rule.predict(x, snr), local, remote, 0.0) > td_reward(fixed.predict(x, snr), local, remote, 0.0)
    costly = DimeeTD(cost_weight=0.3).fit(x, snr, y, remote)  # transmit: 0.7; local: 1 if sure, 0.5 if not
    assert costly.predict(logits, 30.0)[local_confidence(logits) > 0.85].mean() < 0.1
    assert costly.predict(logits, 30.0)[low_conf].mean() > 0.9


@pytest.mark.parametrize(
    "make", [lambda: ConfidenceTD(), lambda: SNRShiftedTD(), lambda: LogisticTD(), lambda: DimeeTD(k_grid=(1, 2, 3))]
)
def test_rules_round_trip_and_decide(make):
    logits, labels, _, x, snr, y, remote, _ = _td_data(n=400)
    rule = make().fit(x, snr, y, remote)
    import json

    again = transmission_rule_from_dict(json.loads(json.dumps(rule.to_dict())))
    per_sample_snr = np.linspace(-5, 30, len(labels))
    assert np.array_equal(again.predict(logits, per_sample_snr), rule.predict(logits, per_sample_snr))
    exits = rule.decide(logits, per_sample_snr)
    assert set(np.unique(exits)) <= {0, 2}
    assert np.array_equal(exits == 0, rule.predict(logits, per_sample_snr))


def test_rule_errors():
    logits, labels, *_ = _td_data(n=50)
    with pytest.raises(PolicyError, match="not fitted"):
        ConfidenceTD().predict(logits, 10.0)
    rule = ConfidenceTD().fit(logits, 10.0, labels, np.ones(50, bool))
    with pytest.raises(PolicyError, match="snr"):
        rule.predict(logits, np.zeros(3))
    with pytest.raises(PolicyError, match="mobile exits"):
        rule.predict(logits[:, :1], 10.0)
    with pytest.raises(PolicyError, match="local"):
        ConfidenceTD(local="middle").fit(logits, 10.0, labels, np.ones(50, bool))
    with pytest.raises(PolicyError, match="unknown transmission rule"):
        transmission_rule_from_dict({"rule": "Nope"})


def test_evaluate_td_counts_bytes_only_when_sent():
    out = evaluate_td(np.array([True, False]), np.array([True, True]), np.array([False, True]), np.array([100, 300]))
    assert out == {"accuracy": 0.5, "offload_rate": 0.5, "bytes_per_sample": 50.0}


def test_send_hidden_states_noises_before_encoding():
    """The one function the services and the channel experiment call: noise first, then the codec."""
    from tiers import decode_handoff
    from tiers.channel import add_awgn, send_hidden_states

    hidden = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    body = send_hidden_states(hidden, mask, 3, "int8", snr_db=5.0, generator=torch.Generator().manual_seed(1))
    noisy = add_awgn(hidden, mask, 5.0, torch.Generator().manual_seed(1))
    received = decode_handoff(body, 8).hidden
    scale = noisy.abs().amax(dim=2, keepdim=True) / 127.0  # int8: one scale per token, error <= scale / 2
    assert ((received - noisy).abs() <= scale / 2 + 1e-6)[mask.bool()].all()
    assert ((received - hidden).abs().max() > 0.05)  # the noise arrived
    assert send_hidden_states(hidden, mask, 3, "fp32") == send_hidden_states(hidden, mask, 3, "fp32", snr_db=None)
