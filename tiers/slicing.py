"""Cut an early-exit model into mobile, edge and cloud parts that chain to the one-pass result.

A part holds the layers and exits its tier may run (:meth:`TierPlan.held_range`: mobile 1..m; edge and cloud
from their smallest accepted boundary + 1, so 1..e and 1..L in the default deployment), the embeddings
when it accepts token ids, and its architecture adapter's extras (MPNet: the relative-position-bias table, so
that the bias is recomputed on each tier and the handoff stays hidden states + mask). Parts built from an in-memory
model share its modules; `load_tier_part` builds one part from a checkpoint and reads only that part's
weights from disk, which is what a tier service does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModel, PretrainedConfig

from .arch import LayerInputs, adapter_for
from .model import (
    ENCODER_DIR,
    EXIT_WEIGHTS_FILE,
    CheckpointError,
    EarlyExitModel,
    ExitConfig,
    ExitHead,
    encoder_layers,
    pool_hidden,
    read_encoder_config,
    read_exit_config,
    run_layer_range,
)
from .plan import TIERS, TierPlan, TierPlanError


@dataclass
class TierOutput:
    """What a part produces: the hidden state after its last layer and its exits' logits."""

    hidden: torch.Tensor  # [batch, seq, hidden]
    attention_mask: torch.Tensor  # [batch, seq]
    exit_logits: torch.Tensor  # [batch, n_exits_of_this_tier, num_labels]
    first_exit: int  # 1-based index of exit_logits[:, 0]
    embedding_feature: torch.Tensor | None = None  # mobile only: mean-pooled embedding-layer output


class TierPart(nn.Module):
    """Layers first..last of the encoder with their exits; mobile (first == 1) also embeds tokens."""

    def __init__(
        self,
        tier: str,
        plan: TierPlan,
        config: PretrainedConfig,
        layers: nn.ModuleList,
        exits: nn.ModuleList,
        embeddings: nn.Module | None,
        num_labels: int,
        extras: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.adapter = adapter_for(config)
        self.extras = nn.ModuleDict(extras or {})
        self.tier = tier
        self.num_labels = num_labels
        self.plan = plan
        self.config = config
        self.first_layer, self.last_layer = plan.held_range(tier)
        self.chain_first_layer = plan.layer_range(tier)[0]
        self.layers = layers
        self.exits = exits
        self.embeddings = embeddings

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.embeddings is None:
            raise RuntimeError(f"the {self.tier} part holds no embeddings; it does not accept token ids")
        return self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def layer(self, index: int) -> tuple[nn.Module, nn.Module]:
        """The transformer layer and exit head of 1-based layer `index` (one this part holds)."""
        if not self.first_layer <= index <= self.last_layer:
            raise RuntimeError(f"the {self.tier} part holds layers {self.first_layer}..{self.last_layer}, not {index}")
        return self.layers[index - self.first_layer], self.exits[index - self.first_layer]

    def layer_inputs(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> LayerInputs:
        """What each layer takes besides the hidden state, for this padded batch (mask; MPNet: position bias)."""
        return self.adapter.prepare(self.config, self.extras, hidden, attention_mask)

    def run_one_layer(self, index: int, hidden: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        """Layer `index` (1-based, held by this part) on a padded batch; `inputs` from :meth:`layer_inputs`."""
        layer, _ = self.layer(index)
        return self.adapter.run_layer(layer, hidden, inputs)

    def run_from_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> TierOutput:
        """Mobile's entry point: token ids in, hidden state after layer m and exits 1..m out."""
        hidden = self.embed(input_ids, token_type_ids)
        feature = pool_hidden(hidden, attention_mask, "mean")
        out = self.run_hidden(hidden, attention_mask, start=1)
        out.embedding_feature = feature
        return out

    def run_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int | None = None) -> TierOutput:
        """Continue from a hidden state at layer start - 1 (default: the tier's place on the linear route,
        m + 1 on edge, e + 1 on cloud) to the last layer held; exits start..last."""
        start = self.chain_first_layer if start is None else int(start)
        if len(self.layers) == 0 or start > self.last_layer:
            empty = hidden.new_zeros((hidden.shape[0], 0, self.num_labels))
            return TierOutput(hidden, attention_mask, empty, start)
        offset = start - self.first_layer
        if offset < 0:
            raise RuntimeError(f"the {self.tier} part starts at layer {self.first_layer}, not {start}")
        hidden, logits = run_layer_range(
            self.layers[offset:], self.exits[offset:], self.config, hidden, attention_mask, self.extras
        )
        return TierOutput(hidden, attention_mask, logits, start)


def slice_model(model: EarlyExitModel, plan: TierPlan) -> dict[str, TierPart]:
    """Three parts sharing `model`'s modules (no copy), keyed by tier name."""
    if plan.num_layers != model.num_layers:
        raise TierPlanError(
            f"plan {plan.spec} was made for {plan.num_layers} layers but the model has {model.num_layers}"
        )
    layers = encoder_layers(model.encoder)
    parts = {}
    for tier in TIERS:
        first, last = plan.held_range(tier)
        parts[tier] = TierPart(
            tier,
            plan,
            model.config,
            nn.ModuleList(list(layers)[first - 1 : last]),
            nn.ModuleList(list(model.exits)[first - 1 : last]),
            model.encoder.embeddings if plan.holds_embeddings(tier) else None,
            model.num_labels,
            model.layer_extras(),
        )
    return parts


def run_three_tiers(
    parts: dict[str, TierPart],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every exit on the linear route mobile -> edge -> cloud in one process (no early exit); [batch, L,
    num_labels], as the one-pass model. `tiers.segment.run_routed` is the early-exit runner."""
    mobile = parts["mobile"].run_from_ids(input_ids, attention_mask, token_type_ids)
    edge = parts["edge"].run_hidden(mobile.hidden, mobile.attention_mask)
    cloud = parts["cloud"].run_hidden(edge.hidden, edge.attention_mask)
    return torch.cat([mobile.exit_logits, edge.exit_logits, cloud.exit_logits], dim=1)


# ---- loading one tier from a checkpoint, reading only its weights ---------------------------------
def _encoder_weight_files(encoder_dir: Path) -> dict[str, Path]:
    """Map every weight name of the HF checkpoint to the safetensors file that holds it."""
    index = encoder_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: encoder_dir / file for name, file in weight_map.items()}
    single = encoder_dir / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{encoder_dir} holds no model.safetensors; re-save the run with `dimee train`")
    with safe_open(str(single), "pt") as handle:
        return {name: single for name in handle.keys()}


def _read_tensors(files: dict[str, Path], wanted: list[str]) -> dict[str, torch.Tensor]:
    missing = [name for name in wanted if name not in files]
    if missing:
        raise CheckpointError(f"checkpoint lacks weights {missing[:3]}...; it does not match its config")
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(files[name], []).append(name)
    tensors = {}
    for path, names in by_file.items():
        with safe_open(str(path), "pt") as handle:
            for name in names:
                tensors[name] = handle.get_tensor(name)
    return tensors


def _strip(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}


def _materialise(meta_module: nn.Module, prefix: str, files: dict[str, Path]) -> nn.Module:
    """Allocate a module built on the meta device and fill it with its weights from disk."""
    wanted = [prefix + name for name in meta_module.state_dict()]
    module = meta_module.to_empty(device="cpu")
    module.load_state_dict(_strip(prefix, _read_tensors(files, wanted)), strict=True)
    return module


def load_tier_part(folder: str | Path, plan: TierPlan, tier: str) -> TierPart:
    """Build one tier's part from a checkpoint, loading only the weights that tier holds."""
    folder = Path(folder)
    exit_config: ExitConfig = read_exit_config(folder)
    config = read_encoder_config(folder)
    skeleton_layers = int(config.num_hidden_layers)
    if plan.num_layers != skeleton_layers:
        raise TierPlanError(f"plan {plan.spec} was made for {plan.num_layers} layers but {folder} has {skeleton_layers}")
    first, last = plan.held_range(tier)
    adapter = adapter_for(config)  # an unknown architecture: one clear error before any weight is read
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config, add_pooling_layer=False)
    files = _encoder_weight_files(folder / ENCODER_DIR)
    extras = {
        name: _materialise(module, adapter.extras_prefix(), files) for name, module in adapter.extras(skeleton).items()
    }
    meta_layers = encoder_layers(skeleton)
    layers = nn.ModuleList(
        _materialise(meta_layers[i - 1], f"encoder.layer.{i - 1}.", files) for i in range(first, last + 1)
    )
    embeddings = None
    if plan.holds_embeddings(tier):
        # Built for real (not on meta) so that its non-persistent buffers (position ids) are set.
        embeddings = type(skeleton.embeddings)(config)
        wanted = [f"embeddings.{name}" for name in embeddings.state_dict()]
        embeddings.load_state_dict(_strip("embeddings.", _read_tensors(files, wanted)), strict=True)
    with safe_open(str(folder / EXIT_WEIGHTS_FILE), "pt") as handle:
        exit_files = {name: folder / EXIT_WEIGHTS_FILE for name in handle.keys()}
    exits = nn.ModuleList()
    for i in range(first, last + 1):
        head = ExitHead(int(config.hidden_size), exit_config)
        head.load_state_dict(_strip(f"{i - 1}.", _read_tensors(exit_files, [f"{i - 1}.{k}" for k in head.state_dict()])))
        exits.append(head)
    return TierPart(tier, plan, config, layers, exits, embeddings, exit_config.num_labels, extras).eval()
