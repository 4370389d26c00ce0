"""The mobile tier on a device: an exported folder (`dimee export RUN --tier mobile`) run with onnxruntime.

No torch and no transformers: the tokenizer is `tokenizers` reading tokenizer.json, the model is mobile.onnx
in ONNX Runtime, and everything else is this project's torch-free code: the policy and its decision as the
served mobile tier makes it (`services.policy.load_policy`, `policy_actions`, driven over the layers by the
segment driver `tiers.run_segment`), and the one codec (`tiers.encode_hidden_message`,
`tiers.encode_token_message`) with the shared handoff token for what goes on to a real edge or cloud service
(`services.handoff.post_handoff`).

What differs from the served mobile tier: the device runs its m layers in one ONNX call, so a sample the policy
answers at exit j < m or sends on as token ids still had all m layers computed (its answer and route are the
same; the layers charged are the policy's). Expert exits and the simulated channel are not exported.

    client = MobileClient("device/", edge_url="http://edge:8701", cloud_url="http://cloud:8702", token=TOKEN)
    answers = client.classify(["a gripping, beautifully shot film"])   # services.schemas.Answer, route from mobile on

`python -m services.device DIR TEXT... [--edge-url URL] [--cloud-url URL]` does the same from a shell (the token
comes from DIMEE_HANDOFF_TOKEN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from tiers.codec import (
    CONTENT_TYPE,
    MAX_BUDGET_MS,
    TOKENS_CONTENT_TYPE,
    HandoffMeta,
    encode_hidden_message,
    encode_token_message,
    handoff_group_size,
    hop_payload_size,
)
from tiers.plan import TIERS
from tiers.routes import CONTINUE, handoff_target, run_segment
from tiers.run import read_run_info
from tiers.text import check_lengths, check_texts

from .handoff import HandoffFailed, make_client, post_handoff
from .policy import ThresholdPolicy, exit_answer, load_policy, policy_actions, read_temperatures, wants_features
from .schemas import Answer
from .settings import TierSettings

log = logging.getLogger("services.device")

DEVICE_FILE = "device.json"  # tiers.export.DEVICE_FILE (that module needs torch)
TOKENIZER_FILE = "tokenizer.json"
#: Share of the request's time the device waits for the next tier (as a served tier, services.relay.WAIT_SHARE).
WAIT_SHARE = 0.9
#: The receiving tier's default limits (services.settings.TierSettings: max_texts, max_meta_bytes).
MAX_HANDOFF_SAMPLES = TierSettings.model_fields["max_texts"].default
MAX_META_BYTES = TierSettings.model_fields["max_meta_bytes"].default


class DeviceFolderError(ValueError):
    """A folder that is not an exported device folder, or one this client cannot run."""


class MobileClient:
    """The mobile tier of an exported folder: tokenise, run mobile.onnx, decide with the run's policy, answer here
    or hand on. `edge_url` / `cloud_url`: the real services the policy's handoffs go to (None: answered here,
    degraded, as a served mobile tier without a next tier); `token`: their shared handoff token."""

    def __init__(
        self,
        folder: str | Path,
        edge_url: str | None = None,
        cloud_url: str | None = None,
        token: str | None = None,
        threads: int = 1,
        policy: str = "auto",
        threshold: float = 0.9,
        timeout_s: float = 10.0,
        encoding: str = "fp32",
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        spec_path = self.folder / DEVICE_FILE
        if not spec_path.is_file():
            raise DeviceFolderError(f"{self.folder} is not an exported device folder (no {DEVICE_FILE}); run `dimee export`")
        try:
            self.spec = json.loads(spec_path.read_text())
            self.model_file = self.folder / str(self.spec["model_file"])
            self.inputs = [str(name) for name in self.spec["inputs"]]
            self.hidden_size = int(self.spec["hidden_size"])
            self.vocab_size = int(self.spec["vocab_size"])
            self.pad_id = int(self.spec["pad_token_id"])
            self.max_tokens = int(self.spec["max_tokens"])
        except (ValueError, KeyError, TypeError) as err:
            raise DeviceFolderError(f"{spec_path} is damaged ({err}); export the folder again") from err
        self.info = read_run_info(self.folder)
        self.plan = self.info.plan
        self.mobile_end = self.plan.mobile_end
        if int(self.spec.get("mobile_end", -1)) != self.mobile_end:
            raise DeviceFolderError(f"{spec_path} was exported for m={self.spec.get('mobile_end')}, run.json says {self.mobile_end}")
        self.temperatures = read_temperatures(self.folder, self.plan.num_layers)
        self.policy, self.policy_name = load_policy(self.folder, self.plan, policy, threshold, self.temperatures)
        self.fallback_policy = ThresholdPolicy(self.plan, threshold, self.temperatures)
        self.policy_features = wants_features(self.policy, self.hidden_size)
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        self.tokenizer.no_truncation()  # lengths are checked against max_tokens, never cut
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
        self.urls = {"edge": edge_url, "cloud": cloud_url}
        self.token = token or ""
        self.timeout_s = float(timeout_s)
        self.encoding = encoding
        self.policy_errors = 0

    # ---- the pieces ----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids with special tokens and their type ids, per text (no padding), as the served mobile tier."""
        check_texts(texts, pairs)
        batch = list(texts) if pairs is None else list(zip(texts, pairs))
        encoded = self.tokenizer.encode_batch(batch, add_special_tokens=True)
        check_lengths([len(e.ids) for e in encoded], self.max_tokens)
        return [list(e.ids) for e in encoded], [list(e.type_ids) for e in encoded]

    def run_model(self, ids: list[list[int]], types: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The mobile part on a right-padded batch: exit logits [n, m, C], hidden after m [n, T, H], the
        embedding feature [n, H] and the mask [n, T]."""
        width = max(len(seq) for seq in ids)
        feeds = {
            "input_ids": np.full((len(ids), width), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(ids), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(ids), width), dtype=np.int64),
        }
        for row, (seq, kinds) in enumerate(zip(ids, types)):
            feeds["input_ids"][row, : len(seq)] = seq
            feeds["attention_mask"][row, : len(seq)] = 1
            feeds["token_type_ids"][row, : len(kinds)] = kinds
        logits, hidden, feature = self.session.run(None, {name: feeds[name] for name in self.inputs})
        return logits, hidden, feature, feeds["attention_mask"]

    def decide(self, logits: np.ndarray, feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(action, depth) per sample: the step protocol over mobile's depths 0..m, as the served mobile tier
        asks it (`tiers.run_segment`; every exit is already computed, so advancing runs nothing)."""
        features = feature.astype(np.float64) if self.policy_features else None

        def failed(_err: Exception) -> None:
            self.policy_errors += 1
            log.exception("policy %s failed on the device; using the built-in rule", self.policy_name)

        def step(rows: np.ndarray, depth: int) -> np.ndarray:
            feats = None if features is None else features[rows]
            return policy_actions(
                self.policy, self.fallback_policy, self.plan, "mobile", logits[rows, :depth], depth, feats, failed
            )

        return run_segment(self.plan, "mobile", np.zeros(logits.shape[0], dtype=np.int64), step, lambda rows, k: None)

    def answer(self, row_logits: np.ndarray, exit_index: int, depth: int, reason: str | None = None, **extra) -> Answer:
        """Mobile's answer at `exit_index` from one sample's logits of exits 1..m (the served tiers' builder)."""
        return exit_answer(
            row_logits, exit_index, "mobile", ["mobile@0"], depth, self.info.label_names, self.temperatures, reason,
            **extra,
        )  # fmt: skip

    # ---- one request ---------------------------------------------------------------------------------------
    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Answer]:
        """Answers in order: answered here, or by the tier the policy sent the sample to (route from mobile on)."""
        start = time.perf_counter()
        ids, types = self.tokenize(texts, pairs)
        logits, hidden, feature, mask = self.run_model(ids, types)
        actions, depths = self.decide(logits, feature)
        local_ms = (time.perf_counter() - start) * 1000
        answers: list[Answer | None] = [None] * len(ids)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, (action, depth) in enumerate(zip(actions.tolist(), depths.tolist())):
            if action > 0:
                answers[i] = self.answer(logits[i], action, depth, wall_ms={"mobile": local_ms})
            elif action != CONTINUE:
                groups.setdefault((TIERS[handoff_target(action)], depth), []).append(i)
        if groups:
            width = int(feature.shape[1]) if self.policy_features and feature is not None else 0
            jobs = []
            for (target, boundary), members in sorted(groups.items()):
                size = handoff_group_size(MAX_META_BYTES, MAX_HANDOFF_SAMPLES, boundary, int(self.info.num_labels), width)
                jobs += [(target, boundary, members[first : first + size]) for first in range(0, len(members), size)]
            request_id = uuid.uuid4().hex
            deadline = start + self.timeout_s
            sent = asyncio.run(self._send_all(jobs, ids, types, logits, hidden, feature, mask, request_id, deadline))
            for (target, boundary, members), (outcome, rtt_ms) in zip(jobs, sent):
                for i in members:
                    answers[i] = self._relayed(i, target, boundary, outcome, rtt_ms, logits, ids, local_ms)
        return [answer for answer in answers if answer is not None]

    def _relayed(self, i, target, boundary, outcome, rtt_ms, logits, ids, local_ms) -> Answer:
        """Sample i's answer after its handoff: the next tier's (route prefixed with mobile), or, if the handoff
        failed, mobile's own deepest exit m, degraded with the failure's code."""
        hop = f"mobile_{target}"
        if isinstance(outcome, HandoffFailed):
            return self.answer(logits[i], self.mobile_end, self.mobile_end, outcome.category,
                               wall_ms={"mobile": local_ms, hop: rtt_ms})  # fmt: skip
        answer = outcome[i]
        size = hop_payload_size([len(ids[i])], boundary, self.hidden_size, self.encoding)
        return answer.model_copy(
            update={
                "route": ["mobile@0", *answer.route],
                "bytes_per_hop": {hop: size, **answer.bytes_per_hop},
                "wall_ms": {"mobile": local_ms, hop: rtt_ms, **answer.wall_ms},
            }
        )

    async def _send_all(self, jobs, ids, types, logits, hidden, feature, mask, request_id, deadline):
        client = make_client(self.timeout_s, min(5.0, self.timeout_s))
        try:
            return await asyncio.gather(
                *(self._send(client, t, b, m, ids, types, logits, hidden, feature, mask, request_id, deadline) for t, b, m in jobs)
            )
        finally:
            await client.aclose()

    async def _send(self, client, target, boundary, members, ids, types, logits, hidden, feature, mask, request_id, deadline):
        """One handoff group; returns ({sample: answer}, hop ms: round trip less the next tiers' own time) or
        (HandoffFailed, ms spent)."""
        sent = time.perf_counter()
        url = self.urls.get(target)
        wait_s = (deadline - sent) * WAIT_SHARE
        try:
            if not url:
                raise HandoffFailed("next_tier_not_configured", f"no URL for the {target} tier on this device")
            if wait_s <= 0.02:
                raise HandoffFailed("deadline_exceeded", "request deadline reached before the handoff")
            rows = np.asarray(members, dtype=np.int64)
            prior = logits[rows, :boundary].astype(np.float32)
            meta = HandoffMeta.build(
                prior, budget_ms=min(wait_s * WAIT_SHARE * 1000, MAX_BUDGET_MS), force_tier=None,
                features=feature[rows] if self.policy_features else None,
            )  # fmt: skip
            if boundary == 0:
                body = encode_token_message([ids[i] for i in members], [types[i] for i in members], self.vocab_size, meta)
                content_type = TOKENS_CONTENT_TYPE
            else:
                body = encode_hidden_message(hidden[rows], mask[rows], boundary + 1, meta, self.encoding)
                content_type = CONTENT_TYPE
            response, rtt_ms = await post_handoff(
                client, url, self.token, request_id, body, wait_s, len(members), content_type=content_type
            )
        except HandoffFailed as failure:
            log.warning("%d sample(s) answered on the device, degraded (%s): %s", len(members), failure.category, failure.detail)
            return failure, (time.perf_counter() - sent) * 1000
        return dict(zip(members, response.answers)), max(0.0, rtt_ms - response.server_ms)  # the hop, as relay counts it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.device", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder written by `dimee export RUN --tier mobile --format onnx`")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--pair", action="append", default=None, help="second text of a pair task (one per text)")
    parser.add_argument("--edge-url", default=os.environ.get("DIMEE_NEXT_URL"))
    parser.add_argument("--cloud-url", default=os.environ.get("DIMEE_CLOUD_URL"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        client = MobileClient(
            args.folder, args.edge_url, args.cloud_url, os.environ.get("DIMEE_HANDOFF_TOKEN"), args.threads,
            timeout_s=args.timeout_s,
        )  # fmt: skip
        for answer in client.classify(args.texts, args.pair):
            print(answer.model_dump_json(exclude_none=True))
    except ValueError as err:  # DeviceFolderError, TextInputError, PolicyLoadError, CheckpointError
        print(f"services.device: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
