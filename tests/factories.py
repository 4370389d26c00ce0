"""Builders of small, real artefacts for tests: a tiny tokenizer and a tiny run folder (random weights)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path

import torch

from tests.conftest import tiny_bert_config
from tiers import CostModel, EarlyExitModel, ExitConfig, RunInfo, TierPlan, write_run_info

WORDS = (
    "the a an film movie plot story acting good bad great awful boring fun funny sad dull brilliant "
    "not very quite really is was it this that and but of to in on with i you we they love hate like "
    "cast jokes scene ending script director music , . ! ?"
).split()


def tiny_tokenizer(extra_words=()):
    """A WordPiece BERT tokenizer over a few dozen words (and `extra_words`), built offline."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys([*WORDS, *extra_words])]
    return BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True, model_max_length=64)


def tiny_run_folder(folder: Path, num_layers: int = 6, num_labels: int = 2, plan: tuple[int, int] = (2, 4)) -> Path:
    """A run folder the services and the evaluation can load: random-init encoder, tokenizer, run.json."""
    tokenizer = tiny_tokenizer()
    config = tiny_bert_config(num_layers=num_layers, vocab=len(tokenizer))
    torch.manual_seed(0)
    model = EarlyExitModel.from_config(config, ExitConfig(num_labels=num_labels)).eval()
    model.save_pretrained(folder, tokenizer=tokenizer)
    info = RunInfo(
        task="sst2",
        text_fields=["sentence"],
        label_names=["negative", "positive"][:num_labels] if num_labels > 1 else ["score"],
        num_labels=num_labels,
        max_length=64,
        plan=TierPlan(*plan, num_layers),
        cost_model=CostModel(),
        base_model="tiny-random-bert",
    )
    write_run_info(folder, info)
    return folder


def add_perturbed_experts(folder: Path, types: list[str], exits: list[int], seed: int = 1):
    """Expert heads on `exits` of a tiny run, copied from the standard heads and then perturbed (so that a test
    can tell them apart), saved in the run folder; returns the ExpertExits in eval mode."""
    from glue_eval.experts import standard_heads
    from tiers.experts import ExpertExits, ExpertInfo, save_experts

    heads, exit_config = standard_heads(folder, exits)
    experts = ExpertExits.from_standard(heads, exit_config, ExpertInfo(types, exits, [0.05, 0.5]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in experts.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    save_experts(folder, experts)
    return experts.eval()


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the fake next tiers the service tests start: JSON replies, no request log."""

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` in a Prometheus text exposition whose labels include `labels` (any label
    order: prometheus_client writes them sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == str(v) for k, v in labels.items())
    )
