"""Expert exits for distorted inputs (DESIGN.md section 7, issue 6): per distortion type, a second set of exit
heads on the mobile and edge layers, trained on distorted text while the shared encoder stays as it is.

An expert head has the architecture of the standard exit head (``ExitHead``: pool, dense + tanh, dropout,
classifier); only the heads change, so switching experts on never changes the hidden states a tier hands on.

Run folder layout (beside the standard heads; safetensors and JSON only, no pickle)::

    <run>/experts/experts.json        types, exits, training severities and settings, format version
    <run>/experts/heads.safetensors   "<type>.<exit>.<param>" (exit 1-based), e.g. "keyboard.2.dense.weight"
    <run>/experts/detector.json       the fitted distortion detector (clustering.detector), optional

The switch: ``with_experts(parts, experts, distortion)`` gives tier parts whose exits are the experts of one
distortion type (cloud and any exit without an expert keep the standard heads; ``None`` or ``"clean"`` gives
the standard parts back), ready for ``run_three_tiers``. ``run_part(part, hidden, mask, experts,
distortions)`` runs one tier on a batch whose samples may each name a different type (what a service does
after the detector), running the layers once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .model import (
    CheckpointError,
    ExitConfig,
    ExitHead,
    pool_hidden,
    read_encoder_config,
    read_exit_config,
)
from .slicing import TierOutput, TierPart

EXPERTS_DIR = "experts"
EXPERTS_FILE = "experts.json"
EXPERT_WEIGHTS_FILE = "heads.safetensors"
DETECTOR_FILE = "detector.json"
CLEAN = "clean"
EXPERTS_FORMAT_VERSION = 1


class ExpertError(CheckpointError):
    """Experts requested where there are none, for an unknown type, or a damaged experts folder."""


@dataclass
class ExpertInfo:
    """What the experts are: distortion types, the exits that have experts (1-based), how they were trained."""

    types: list[str]
    exits: list[int]
    train_severity: list[float] = field(default_factory=list)  # [low, high] of the training mix
    training: dict = field(default_factory=dict)
    format_version: int = EXPERTS_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.types:
            raise ExpertError("an expert set needs at least one distortion type")
        if CLEAN in self.types:
            raise ExpertError(f"{CLEAN!r} names the standard heads; it cannot be an expert type")
        if len(set(self.types)) != len(self.types):
            raise ExpertError(f"expert types must be distinct, got {self.types}")
        if any(int(i) < 1 for i in self.exits) or sorted(set(self.exits)) != list(self.exits):
            raise ExpertError(f"expert exits must be distinct, sorted, 1-based, got {self.exits}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExpertInfo":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ExpertExits(nn.Module):
    """Expert heads keyed by distortion type and 1-based exit index."""

    def __init__(self, hidden_size: int, exit_config: ExitConfig, info: ExpertInfo) -> None:
        super().__init__()
        self.info = info
        self.exit_config = exit_config
        self.hidden_size = int(hidden_size)
        self.heads = nn.ModuleDict(
            {t: nn.ModuleDict({str(i): ExitHead(hidden_size, exit_config) for i in info.exits}) for t in info.types}
        )

    @property
    def types(self) -> list[str]:
        return list(self.info.types)

    @property
    def exits(self) -> list[int]:
        return list(self.info.exits)

    @classmethod
    def from_standard(
        cls, standard_exits: Sequence[ExitHead], exit_config: ExitConfig, info: ExpertInfo
    ) -> "ExpertExits":
        """Experts initialised as copies of the standard heads (`standard_exits[i - 1]` is exit i)."""
        if info.exits and max(info.exits) > len(standard_exits):
            raise ExpertError(f"expert exits {info.exits} exceed the model's {len(standard_exits)} exits")
        hidden = standard_exits[0].dense.in_features
        experts = cls(hidden, exit_config, info)
        for t in info.types:
            for i in info.exits:
                experts.heads[t][str(i)].load_state_dict(standard_exits[i - 1].state_dict())
        return experts

    def check_type(self, distortion: str) -> str:
        if distortion not in self.heads:
            raise ExpertError(f"no expert exits for distortion {distortion!r}; this run has: {', '.join(self.types)}")
        return distortion

    def head(self, distortion: str, exit_index: int) -> ExitHead | None:
        """The expert head of `distortion` at 1-based `exit_index`, or None if that exit has no expert."""
        heads = self.heads[self.check_type(distortion)]
        return heads[str(exit_index)] if str(exit_index) in heads else None

    def exits_for(self, distortion: str | None, standard: nn.ModuleList, first_exit: int) -> nn.ModuleList:
        """The heads a part with `standard` exits (first one = exit `first_exit`) uses for `distortion`."""
        if distortion is None or distortion == CLEAN:
            return standard
        self.check_type(distortion)
        picked = []
        for k, std in enumerate(standard):
            expert = self.head(distortion, first_exit + k)
            picked.append(std if expert is None else expert)
        return nn.ModuleList(picked)

    @torch.no_grad()
    def logits_from_pooled(self, distortion: str, exit_index: int, pooled: torch.Tensor) -> torch.Tensor:
        """Expert logits from an already pooled state [n, hidden] (eval mode: dropout off)."""
        head = self.head(distortion, exit_index)
        if head is None:
            raise ExpertError(f"exit {exit_index} has no expert (expert exits: {self.exits})")
        return head.classifier(torch.tanh(head.dense(pooled)))


# ---- persistence ------------------------------------------------------------------------------------------
def experts_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EXPERTS_DIR


def has_experts(run_dir: str | Path) -> bool:
    folder = experts_dir(run_dir)
    return (folder / EXPERTS_FILE).is_file() and (folder / EXPERT_WEIGHTS_FILE).is_file()


def save_experts(run_dir: str | Path, experts: ExpertExits) -> Path:
    folder = experts_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        f"{t}.{i}.{name}": value.detach().contiguous().cpu()
        for t in experts.types
        for i in experts.exits
        for name, value in experts.heads[t][str(i)].state_dict().items()
    }
    save_file(state, str(folder / EXPERT_WEIGHTS_FILE))
    (folder / EXPERTS_FILE).write_text(json.dumps(experts.info.to_dict(), indent=2))
    return folder


def read_expert_info(run_dir: str | Path) -> ExpertInfo:
    folder = experts_dir(run_dir)
    if not has_experts(run_dir):
        raise ExpertError(
            f"{run_dir} has no expert exits (no {EXPERTS_DIR}/{EXPERTS_FILE} and {EXPERTS_DIR}/{EXPERT_WEIGHTS_FILE}); "
            "train them with `dimee experts train RUN_DIR`, or run without experts"
        )
    try:
        return ExpertInfo.from_dict(json.loads((folder / EXPERTS_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise ExpertError(f"{folder / EXPERTS_FILE} is damaged ({err}); retrain the experts") from err


def load_experts(
    run_dir: str | Path, exits: Iterable[int] | None = None, types: Sequence[str] | None = None
) -> ExpertExits:
    """Load a run's experts; `exits` / `types` restrict what is read (a tier reads only its own exits; a tier
    holding none of the expert exits, as cloud, gets an empty set that still knows the type names)."""
    info = read_expert_info(run_dir)
    exit_config = read_exit_config(run_dir)
    hidden = int(read_encoder_config(run_dir).hidden_size)
    wanted_types = list(info.types) if types is None else list(types)
    unknown = [t for t in wanted_types if t not in info.types]
    if unknown:
        raise ExpertError(f"no expert exits for distortion(s) {unknown}; this run has: {', '.join(info.types)}")
    wanted_exits = list(info.exits) if exits is None else sorted(set(info.exits) & {int(i) for i in exits})
    experts = ExpertExits(hidden, exit_config, ExpertInfo(wanted_types, wanted_exits, info.train_severity, info.training))
    path = experts_dir(run_dir) / EXPERT_WEIGHTS_FILE
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        for t in wanted_types:
            for i in wanted_exits:
                head = experts.heads[t][str(i)]
                names = {f"{t}.{i}.{name}": name for name in head.state_dict()}
                missing = [n for n in names if n not in keys]
                if missing:
                    raise ExpertError(f"{path} lacks {missing[:2]}...; it does not match {EXPERTS_FILE}")
                head.load_state_dict({short: handle.get_tensor(full) for full, short in names.items()})
    return experts.eval()


# ---- the switch in the tier pipeline --------------------------------------------------------------------
def part_with_experts(part: TierPart, experts: ExpertExits | None, distortion: str | None) -> TierPart:
    """`part` with its exits switched to the experts of `distortion` (layers and embeddings shared, no copy).

    None or "clean" gives `part` itself; experts requested without an expert set is an error."""
    if distortion is None or distortion == CLEAN:
        return part
    if experts is None:
        raise ExpertError(f"expert exits for {distortion!r} were requested but no experts are loaded")
    exits = experts.exits_for(distortion, part.exits, part.first_layer)
    return TierPart(
        part.tier, part.plan, part.config, part.layers, exits, part.embeddings, part.num_labels, dict(part.extras)
    ).eval()


def with_experts(parts: dict[str, TierPart], experts: ExpertExits | None, distortion: str | None) -> dict[str, TierPart]:
    """All three parts switched to `distortion`'s experts, for `run_three_tiers`."""
    return {tier: part_with_experts(part, experts, distortion) for tier, part in parts.items()}


def run_part(
    part: TierPart,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    experts: ExpertExits | None = None,
    distortions: str | Sequence[str | None] | None = None,
    start: int | None = None,
) -> TierOutput:
    """Run a tier on a batch where sample b uses the exits of `distortions[b]` (None / "clean": standard).

    The layers run once for the whole batch; only the heads differ per sample. Same result as
    `part_with_experts(part, experts, t).run_hidden(...)` on each sample's own type."""
    n = hidden.shape[0]
    per_sample = [distortions] * n if distortions is None or isinstance(distortions, str) else list(distortions)
    if len(per_sample) != n:
        raise ExpertError(f"{n} samples but {len(per_sample)} distortion types")
    kinds = sorted({t for t in per_sample if t is not None and t != CLEAN})
    if kinds and experts is None:
        raise ExpertError(f"expert exits for {kinds} were requested but no experts are loaded")
    for t in kinds:
        experts.check_type(t)
    start = part.chain_first_layer if start is None else int(start)
    if len(part.layers) == 0 or start > part.last_layer:
        return part.run_hidden(hidden, attention_mask, start)
    inputs = part.layer_inputs(hidden, attention_mask)
    logits = []
    for exit_index in range(start, part.last_layer + 1):
        _, head_std = part.layer(exit_index)
        hidden = part.run_one_layer(exit_index, hidden, inputs)
        out = head_std(hidden, attention_mask)
        for t in kinds:
            head = experts.head(t, exit_index)
            if head is None:
                continue
            rows = torch.tensor([b for b, s in enumerate(per_sample) if s == t], device=hidden.device)
            out = out.index_copy(0, rows, head(hidden[rows], attention_mask[rows]))
        logits.append(out)
    return TierOutput(hidden, attention_mask, torch.stack(logits, dim=1), start)


def run_mobile(
    part: TierPart,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    experts: ExpertExits | None = None,
    distortions: str | Sequence[str | None] | None = None,
) -> TierOutput:
    """Mobile's entry point with per-sample expert exits (see `run_part`)."""
    hidden = part.embed(input_ids, token_type_ids)
    feature = pool_hidden(hidden, attention_mask, "mean")
    out = run_part(part, hidden, attention_mask, experts, distortions, start=1)
    out.embedding_feature = feature
    return out
