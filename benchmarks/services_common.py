"""Scaffolding shared by the services benchmarks (`services_bench.py`, `load_test.py`): the same sliced model in
this process (the baseline), text loading, percentiles, the concurrent client, /metrics readers."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from transformers import AutoTokenizer

from services.policy import load_policy, read_temperatures, softmax, wants_features
from tiers import TIERS, decode_tokens, encode_tokens, load_tier_part, read_run_info, run_routed, tokenize_for_inference

REPO = Path(__file__).resolve().parent.parent
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}
HOPS = ("mobile_edge", "mobile_cloud", "edge_cloud")
SST2_VALIDATION = Path("/work/shared/glue/sst2/validation.jsonl")


def command_line() -> str:
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(str(REPO)) else sys.executable
    script = os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else sys.argv[0]
    return "HF_HUB_OFFLINE=1 " + shlex.join([exe, script, *sys.argv[1:]])


def read_sentences(path: Path, n: int) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                texts.append(json.loads(line)["sentence"])
            if len(texts) >= n:
                break
    return texts


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "mean": float(np.mean(values))}


# ---- the same sliced model, in this process ------------------------------------------------------------------
class InProcess:
    """The three parts loaded with load_tier_part, chained through the codec as the services chain them."""

    def __init__(self, run_dir: Path, policy: str = "auto", threshold: float = 0.9) -> None:
        """`policy`/`threshold` as the services' DIMEE_POLICY/DIMEE_THRESHOLD ('threshold' at 1: the linear route,
        every sample through all three tiers)."""
        self.info = read_run_info(run_dir)
        self.plan = self.info.plan
        self.parts = {tier: load_tier_part(run_dir, self.plan, tier) for tier in TIERS}
        self.hidden = self.parts["mobile"].hidden_size
        self.tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
        self.tokenizer.model_max_length = 10**9
        self.max_tokens = self.info.max_length
        temperatures = read_temperatures(run_dir, self.plan.num_layers)
        self.temperatures = temperatures
        self.policy, self.policy_name = load_policy(run_dir, self.plan, policy, threshold, temperatures)
        self.vocab = int(self.parts["mobile"].config.vocab_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def _tokens(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False)
        return encoded["input_ids"], encoded.get("token_type_ids")

    def forced(self, texts: list[str], tier: str, encoding: str = "fp32") -> np.ndarray:
        """Labels of `texts` answered at `tier`'s last exit by the route the services force: mobile 1..m on
        mobile; edge / cloud get the token ids straight away (through the token codec) and run 1..their end."""
        batch = tokenize_for_inference(self.tokenizer, texts, None, self.max_tokens)
        part = self.parts[tier]
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        with torch.no_grad():
            if tier != "mobile":
                input_ids, type_ids = self._tokens(texts)
                sent = decode_tokens(encode_tokens(input_ids, type_ids, self.vocab), self.vocab)
                width = max(len(seq) for seq in sent.input_ids)
                ids = torch.zeros((len(texts), width), dtype=torch.long)
                mask = torch.zeros((len(texts), width), dtype=torch.long)
                types = torch.zeros((len(texts), width), dtype=torch.long)
                for row, (seq, kinds) in enumerate(zip(sent.input_ids, sent.token_type_ids)):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    types[row, : len(seq)] = torch.tensor(kinds)
                    mask[row, : len(seq)] = 1
            out = part.run_from_ids(ids, mask, types)
        return self._labels(out.exit_logits[:, -1], out.first_exit + out.exit_logits.shape[1] - 1)

    def routed(self, texts: list[str], encoding: str = "fp32") -> tuple[np.ndarray, list[str]]:
        """Labels and answering tier of `texts` with the run's policy, by `tiers.run_routed` (early exit inside
        each tier, survivors re-padded, the routes the services take)."""
        input_ids, type_ids = self._tokens(texts)
        features = wants_features(self.policy, self.hidden)

        def decide(seen, tier, depth, feats):
            return self.policy.step(seen, tier, depth, feats if features else None)

        answers = run_routed(self.parts, decide, input_ids, type_ids, self.pad_id)
        labels = np.array([int(self._labels(torch.from_numpy(a.logits[None, :]), a.exit)[0]) for a in answers])
        return labels, [a.tier for a in answers]

    def _labels(self, logits: torch.Tensor, exit_index: int) -> np.ndarray:
        temperature = 1.0 if self.temperatures is None else float(self.temperatures[exit_index - 1])
        return softmax(logits.float().numpy(), temperature).argmax(axis=-1)


# ---- helpers on the services -----------------------------------------------------------------------------------
def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` whose labels include `labels` (Prometheus text format, any label order)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == str(v) for k, v in labels.items())
    )


def batch_stats(client: httpx.Client, urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Per tier: (forward passes, samples) so far, from dimee_forward_batch_size."""
    stats = {}
    for tier, url in urls.items():
        text = client.get(f"{url}/metrics").text
        stats[tier] = (
            metric_sum(text, "dimee_forward_batch_size_count"),
            metric_sum(text, "dimee_forward_batch_size_sum"),
        )
    return stats


def mean_batch(before: dict, after: dict) -> dict[str, float | None]:
    out = {}
    for tier in after:
        passes = after[tier][0] - before[tier][0]
        samples = after[tier][1] - before[tier][1]
        out[tier] = round(samples / passes, 2) if passes else None
    return out


class FastClient:
    """A sequential JSON client on aiohttp (its own event loop): the benchmark's user. httpx costs ~1 ms more CPU
    per request, which on a 2-core machine is taken from the services being measured."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        import aiohttp

        self._loop = asyncio.new_event_loop()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = self._loop.run_until_complete(self._open())

    async def _open(self):
        import aiohttp

        return aiohttp.ClientSession(timeout=self._timeout, trust_env=False)

    async def _post(self, url: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        async with self._session.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.read()

    def post_json(self, url: str, body: dict) -> dict:
        status, content = self._loop.run_until_complete(self._post(url, body))
        if status != 200:
            raise RuntimeError(f"POST {url} answered {status}: {content[:300]!r}")
        return json.loads(content)

    def close(self) -> None:
        self._loop.run_until_complete(self._session.close())
        self._loop.close()

    def __enter__(self) -> "FastClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def classify_sync(client: FastClient, url: str, text: str, force: str | None) -> dict:
    body: dict = {"texts": [text]}
    if force is not None:
        body["force_tier"] = force
    return client.post_json(f"{url}/v1/classify", body)


async def run_concurrent(
    url: str,
    texts: list[str],
    force: str | None,
    concurrency: int,
    timeout_s: float,
    phase_s: float,
    on_sent=None,
) -> dict:
    """Send one request per text from `concurrency` workers (aiohttp); every outcome is recorded (none dropped)."""
    results: list[dict | None] = [None] * len(texts)
    next_index = 0
    sent = 0
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as client:

        async def worker() -> None:
            nonlocal next_index, sent
            while next_index < len(texts):
                i = next_index
                next_index += 1
                body: dict = {"texts": [texts[i]]}
                if force is not None:
                    body["force_tier"] = force
                sent += 1
                if on_sent is not None:
                    on_sent(sent)
                t0 = time.perf_counter()
                try:
                    async with client.post(f"{url}/v1/classify", json=body) as response:
                        content = await response.read()
                    record = {"status": response.status, "ms": (time.perf_counter() - t0) * 1000}
                    if response.status == 200:
                        record["prediction"] = json.loads(content)["predictions"][0]
                except Exception as err:  # noqa: BLE001 - counted as lost
                    record = {"status": None, "error": f"{type(err).__name__}: {err}"[:200]}
                record["sent_index"] = i
                results[i] = record

        start = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), phase_s)
        except asyncio.TimeoutError:
            print(f"  phase time limit ({phase_s:.0f} s) reached; unfinished requests count as lost", flush=True)
        elapsed = time.perf_counter() - start
    return {"results": results, "elapsed_s": elapsed}


def tier_counts(tiers: list[str]) -> dict[str, int]:
    return {tier: tiers.count(tier) for tier in TIERS}
