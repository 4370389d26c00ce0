"""An early-exit wrapper around a transformers encoder (BERT, RoBERTa, MPNet, ...: see `tiers.arch`).

The encoder's own embedding and layer modules run unchanged (no forked modeling file); this module only
adds one small classifier ("exit") after every layer and runs the layers one at a time so that a forward
pass can stop, or be cut into tiers, anywhere. How a layer is called (mask, MPNet's position bias) is the
architecture's `LayerAdapter`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .arch import LayerAdapter, adapter_for, attention_bias  # noqa: F401  (attention_bias: re-exported)
from .errors import CheckpointError

EXIT_CONFIG_FILE = "early_exit.json"
EXIT_WEIGHTS_FILE = "exits.safetensors"
ENCODER_DIR = "encoder"
FORMAT_VERSION = 1
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class ExitConfig:
    """What the exit heads need besides the encoder's own config."""

    num_labels: int
    pooling: str = "mean"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 means regression), got {self.num_labels}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vector from token states: [CLS] state, or the mean over real (unpadded) tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class ExitHead(nn.Module):
    """Pool, dense + tanh (as BERT's pooler), dropout, linear classifier."""

    def __init__(self, hidden_size: int, config: ExitConfig) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(pool_hidden(hidden, attention_mask, self.pooling)))
        return self.classifier(self.dropout(pooled))


def encoder_layers(encoder: PreTrainedModel) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT, RoBERTa, MiniLM, ELECTRA... keep it at .encoder.layer)."""
    stack = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise CheckpointError(
            f"{type(encoder).__name__} has no encoder.layer stack; only BERT-style encoders "
            "(BERT, RoBERTa, MiniLM, ELECTRA, ...) are supported"
        )
    return stack


def run_layer_range(
    layers: nn.ModuleList,
    exits: nn.ModuleList,
    config: PretrainedConfig,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    extras: nn.ModuleDict | dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `layers` in order, applying exit k after layer k; return the last hidden state and
    the exits' logits stacked as [batch, len(layers), num_labels]. `extras`: the adapter's modules
    (MPNet: the position-bias table), see `LayerAdapter.extras`."""
    adapter = adapter_for(config)
    inputs = adapter.prepare(config, extras or {}, hidden, attention_mask)
    logits = []
    for layer, head in zip(layers, exits, strict=True):
        hidden = adapter.run_layer(layer, hidden, inputs)
        logits.append(head(hidden, attention_mask))
    return hidden, torch.stack(logits, dim=1)


class EarlyExitModel(nn.Module):
    """A transformers encoder with an exit after every layer; forward returns [batch, L, num_labels]."""

    def __init__(self, encoder: PreTrainedModel, exit_config: ExitConfig) -> None:
        super().__init__()
        self.adapter: LayerAdapter = adapter_for(encoder.config)  # unknown architecture: one clear error
        self.encoder = encoder
        self.exit_config = exit_config
        hidden_size = encoder.config.hidden_size
        self.exits = nn.ModuleList(ExitHead(hidden_size, exit_config) for _ in encoder_layers(encoder))

    @property
    def config(self) -> PretrainedConfig:
        return self.encoder.config

    @property
    def num_layers(self) -> int:
        return len(encoder_layers(self.encoder))

    def layer_extras(self) -> dict[str, nn.Module]:
        """The adapter's modules beyond layers and embeddings, sharing the encoder's weights (MPNet: position bias)."""
        return self.adapter.extras(self.encoder)

    @property
    def num_labels(self) -> int:
        return self.exit_config.num_labels

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding layer's output (layer 0)."""
        return self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def run_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, first: int, last: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run layers first..last (1-based, inclusive) from `hidden`, with their exits."""
        if not 1 <= first <= last <= self.num_layers:
            raise ValueError(f"layer range {first}..{last} is outside 1..{self.num_layers}")
        layers = encoder_layers(self.encoder)
        return run_layer_range(
            layers[first - 1 : last], self.exits[first - 1 : last], self.config, hidden, attention_mask, self.layer_extras()
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.embed(input_ids, token_type_ids)
        _, logits = self.run_layers(hidden, attention_mask, 1, self.num_layers)
        return logits

    # ---- Hugging Face style persistence -------------------------------------------------------
    def save_pretrained(self, folder: str | Path, tokenizer=None) -> Path:
        """Encoder (and tokenizer) in HF format under `encoder/`, exit heads beside it."""
        folder = Path(folder)
        (folder / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder / ENCODER_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / ENCODER_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.exits.state_dict().items()}
        save_file(state, str(folder / EXIT_WEIGHTS_FILE))
        meta = {"format_version": FORMAT_VERSION, "num_layers": self.num_layers, **asdict(self.exit_config)}
        (folder / EXIT_CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "EarlyExitModel":
        """Load a checkpoint written by `save_pretrained`."""
        folder = Path(folder)
        exit_config = read_exit_config(folder)
        encoder = AutoModel.from_pretrained(folder / ENCODER_DIR, add_pooling_layer=False, dtype=torch.float32)
        model = cls(encoder, exit_config)
        model.exits.load_state_dict(load_file(str(folder / EXIT_WEIGHTS_FILE)))
        return model.eval()

    @classmethod
    def from_encoder(
        cls, name_or_path: str | Path, num_labels: int, pooling: str = "mean", dropout: float = 0.1
    ) -> "EarlyExitModel":
        """Fresh exit heads on a pretrained encoder (hub name or local folder)."""
        adapter_for(AutoConfig.from_pretrained(str(name_or_path)))  # refuse an unknown architecture before loading
        encoder = AutoModel.from_pretrained(str(name_or_path), add_pooling_layer=False, dtype=torch.float32)
        return cls(encoder, ExitConfig(num_labels=num_labels, pooling=pooling, dropout=dropout))

    @classmethod
    def from_config(cls, config: PretrainedConfig, exit_config: ExitConfig) -> "EarlyExitModel":
        """Random-init model of a given encoder config (tests, benchmarks)."""
        adapter_for(config)  # refuse an unknown architecture before building it
        return cls(AutoModel.from_config(config, add_pooling_layer=False), exit_config)


def read_exit_config(folder: str | Path) -> ExitConfig:
    """The exit config of a checkpoint folder, with a clear error if the folder is not one."""
    folder = Path(folder)
    meta_path = folder / EXIT_CONFIG_FILE
    missing = [p.name for p in (meta_path, folder / EXIT_WEIGHTS_FILE, folder / ENCODER_DIR) if not p.exists()]
    if not folder.is_dir() or missing:
        raise CheckpointError(
            f"{folder} is not an early-exit checkpoint (missing: {', '.join(missing) or 'the folder itself'}); "
            "point to a run folder written by `dimee train`"
        )
    try:
        meta = json.loads(meta_path.read_text())
        return ExitConfig(num_labels=int(meta["num_labels"]), pooling=meta["pooling"], dropout=float(meta["dropout"]))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_path} is damaged ({err}); retrain or restore the run folder") from err


def read_encoder_config(folder: str | Path) -> PretrainedConfig:
    return AutoConfig.from_pretrained(Path(folder) / ENCODER_DIR)
