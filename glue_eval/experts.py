"""Expert exits for distorted text (issue 6, DESIGN.md section 7): distorted GLUE splits, expert heads trained
on a frozen encoder, the distortion detector, and the experiment (standard vs detector-chosen vs true-type
expert exits under the same offloading policy).

Speed: the encoder is frozen and an exit head only sees the pooled state of its layer, so one forward pass
per distorted split caches, for every sample, the pooled states at the expert exits 1..e ([n, e, hidden]),
the embedding-layer feature and (for evaluation splits) the standard logits of all L exits. Expert heads are
then trained on the cached vectors in seconds, and every evaluation mode (standard / detector / true type)
is computed from the same cache: an expert's logits at exit i are its head applied to the cached pooled
state, exactly what the tier pipeline computes (``tiers.experts``). Caches live in
``<run>/experts/cache/<key>/`` (numpy arrays and JSON, no pickle) and are reused when their settings match.

Which data: expert heads and the detector train on distorted copies of a random subset of the run's own
train part (the rows the encoder was fine-tuned on, never its calibration part); each row gets a severity
drawn uniformly from ``train_severity``. Policies are fitted on the run's clean calibration split (cached
logits, standard exits) and used unchanged on every distorted validation set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AutoTokenizer

from clustering import evaluate_policy
from clustering.detector import DistortionDetector
from clustering.profiles import confidence
from tiers import EarlyExitModel, read_cached_split, read_run_info
from tiers.experts import (
    CLEAN,
    DETECTOR_FILE,
    ExpertExits,
    ExpertInfo,
    experts_dir,
    load_experts,
    save_experts,
)
from tiers.model import encoder_layers, pool_hidden

from .data import subset
from .distortion import DISTORTIONS, check_distortion, check_severity, distort_texts, severity_schedule
from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from .report import choose_knob, tunable_policies
from .tasks import GlueTask, run_task
from .training import Encoded, load_run_data, pad_batch, pick_device, set_seed, stored_config
from .expert_options import DETECTOR_FEATURES, EXPERT_TYPES, MODES, POLICY_NAMES, TRAIN_SOURCES  # noqa: F401

CACHE_DIR = "cache"
CACHE_FORMAT = 1


class ExpertSetupError(ValueError):
    """An experiment or training setting that cannot work (the message says which and why)."""


@dataclass
class ExpertConfig:
    run_dir: str
    data_dir: str | None = None
    source: str | None = None  # None: the data source the run's run.json stores
    types: tuple[str, ...] = EXPERT_TYPES
    train_subset: int | None = 4000
    train_source: str = "train"  # or "calibration": rows held out from fine-tuning (an ablation)
    train_severity: tuple[float, float] = (0.05, 0.5)
    eval_severities: tuple[float, ...] = (0.1, 0.3)
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    epochs: int = 30
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    patience: int = 4
    holdout: float = 0.1
    detector_features: str = "text"
    max_drop: float = 0.01
    policies: tuple[str, ...] = ("threshold", "dimee")
    curves: bool = True  # also sweep every knob (accuracy / offload curves, comparison at equal accuracy)

    def validate(self) -> None:
        for name in self.types:
            check_distortion(name)
        if not self.types:
            raise ExpertSetupError("give at least one distortion type")
        low, high = (check_severity(v) for v in self.train_severity)
        if low > high:
            raise ExpertSetupError(f"train severity range must have low <= high, got {self.train_severity}")
        for sev in self.eval_severities:
            check_severity(sev)
        if self.detector_features not in DETECTOR_FEATURES:
            raise ExpertSetupError(f"detector features must be one of {DETECTOR_FEATURES}, got {self.detector_features!r}")
        if self.train_subset is not None and self.train_subset < 10:
            raise ExpertSetupError(f"train subset must hold at least 10 rows, got {self.train_subset}")
        if self.train_source not in TRAIN_SOURCES:
            raise ExpertSetupError(f"train source must be one of {TRAIN_SOURCES}, got {self.train_source!r}")
        if not 0 < self.holdout < 0.5:
            raise ExpertSetupError(f"holdout must be in (0, 0.5), got {self.holdout}")
        unknown = [p for p in self.policies if p not in POLICY_NAMES]
        if unknown:
            raise ExpertSetupError(f"unknown policies {unknown}; known: {', '.join(POLICY_NAMES)}")


# ---- data -------------------------------------------------------------------------------------------------
@dataclass
class TextSplit:
    """Texts (and second texts for pair tasks) with labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def _text_split(task: GlueTask, rows) -> TextSplit:
    texts = list(rows[task.text_fields[0]])
    pairs = list(rows[task.text_fields[1]]) if task.is_pair else None
    dtype = np.float32 if task.is_regression else np.int64
    return TextSplit(texts, pairs, np.asarray(rows["label"], dtype=dtype))


def run_splits(
    run_dir: str | Path,
    data_dir: str | None,
    source: str,
    train_subset: int | None,
    seed: int,
    train_source: str = "train",
):
    """The rows the experts train on (a subset of the run's train part, or of its calibration part with
    `train_source="calibration"`), and the validation rows, as at training time; plus a note."""
    info = read_run_info(run_dir)
    config = stored_config(info, run_dir)  # the data source run.json records
    if data_dir is not None:
        config.data_dir = data_dir
    if source is not None:
        config.source = source
    config.train_subset = config.eval_subset = config.calibration_subset = None
    splits, note = load_run_data(config, info)
    task = run_task(info)
    train = subset(splits[train_source], train_subset, seed)
    n_part = len(splits[train_source])
    note = f"{note}; experts train on {len(train)} of the {n_part} rows of the run's {train_source} part (seed {seed})"
    return task, _text_split(task, train), _text_split(task, splits["validation"]), note


def distort_split(split: TextSplit, name: str, severity: float | Sequence[float], seed: int) -> TextSplit:
    """A distorted copy (both texts of a pair distorted, with independent noise)."""
    if name == CLEAN:
        return split
    texts = distort_texts(split.texts, name, severity, seed=seed, field=0)
    pairs = None if split.pairs is None else distort_texts(split.pairs, name, severity, seed=seed, field=1)
    return TextSplit(texts, pairs, split.labels)


# ---- forward pass and cache -------------------------------------------------------------------------------
@dataclass
class SplitStates:
    """What one forward pass over a (distorted) split leaves for the heads, the detector and the policies."""

    split: TextSplit
    pooled: np.ndarray  # [n, len(expert_exits), hidden] pooled states at the expert exits
    embedding: np.ndarray  # [n, hidden] mean-pooled embedding-layer output (mobile's pre-layer feature)
    token_counts: np.ndarray  # [n]
    logits: np.ndarray | None  # [n, L, C] standard exits, or None when only layers 1..e ran
    expert_exits: list[int] = field(default_factory=list)


def encode_texts(tokenizer, split: TextSplit, max_length: int) -> Encoded:
    enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
    type_ids = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return Encoded(enc["input_ids"], type_ids, split.labels)


@torch.no_grad()
def forward_states(
    model: EarlyExitModel,
    tokenizer,
    split: TextSplit,
    max_length: int,
    expert_exits: Sequence[int],
    full: bool,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> SplitStates:
    """One pass over `split`: pooled states at `expert_exits`, embedding feature, and (if `full`) all exits'
    logits; without `full`, only layers 1..max(expert_exits) run."""
    device = torch.device(device)
    model.to(device).eval()
    encoded = encode_texts(tokenizer, split, max_length)
    pad_id = tokenizer.pad_token_id or 0
    layers = encoder_layers(model.encoder)
    upto = model.num_layers if full else max(expert_exits)
    slot = {int(i): k for k, i in enumerate(expert_exits)}
    n, hidden_size = len(encoded), model.config.hidden_size
    pooled = np.zeros((n, len(slot), hidden_size), dtype=np.float32)
    embedding = np.zeros((n, hidden_size), dtype=np.float32)
    logits = np.zeros((n, model.num_layers, model.num_labels), dtype=np.float32) if full else None
    order = np.argsort(encoded.lengths, kind="stable")
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(encoded, rows, pad_id).items()}
        mask = batch["attention_mask"]
        hidden = model.embed(batch["input_ids"], batch["token_type_ids"])
        embedding[rows] = pool_hidden(hidden, mask, "mean").float().cpu().numpy()
        inputs = model.adapter.prepare(model.config, model.layer_extras(), hidden, mask)
        for i in range(upto):
            hidden = model.adapter.run_layer(layers[i], hidden, inputs)
            if i + 1 in slot:
                pooled[rows, slot[i + 1]] = pool_hidden(hidden, mask, model.exit_config.pooling).float().cpu().numpy()
            if full:
                logits[rows, i] = model.exits[i](hidden, mask).float().cpu().numpy()
    return SplitStates(split, pooled, embedding, encoded.lengths.astype(np.int32), logits, [int(i) for i in slot])


def _cache_path(run_dir: str | Path, key: str) -> Path:
    return experts_dir(run_dir) / CACHE_DIR / key


def save_states(run_dir: str | Path, key: str, states: SplitStates, settings: dict) -> Path:
    folder = _cache_path(run_dir, key)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "pooled.npy", states.pooled.astype(np.float16))
    np.save(folder / "embedding.npy", states.embedding.astype(np.float16))
    np.save(folder / "tokens.npy", states.token_counts)
    np.save(folder / "labels.npy", states.split.labels)
    if states.logits is not None:
        np.save(folder / "logits.npy", states.logits)
    meta = {
        "format": CACHE_FORMAT,
        "settings": settings,
        "expert_exits": states.expert_exits,
        "texts": states.split.texts,
        "pairs": states.split.pairs,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def load_states(run_dir: str | Path, key: str, settings: dict) -> SplitStates | None:
    """The cached states of `key` if they were made with the same settings, else None."""
    folder = _cache_path(run_dir, key)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CACHE_FORMAT or meta.get("settings") != json.loads(json.dumps(settings)):
        return None
    if settings.get("full") and not (folder / "logits.npy").exists():
        return None
    split = TextSplit(meta["texts"], meta["pairs"], np.load(folder / "labels.npy"))
    logits = np.load(folder / "logits.npy") if (folder / "logits.npy").exists() else None
    return SplitStates(
        split,
        np.load(folder / "pooled.npy").astype(np.float32),
        np.load(folder / "embedding.npy").astype(np.float32),
        np.load(folder / "tokens.npy"),
        logits,
        list(meta["expert_exits"]),
    )


class StatesBuilder:
    """Makes (or reuses) the cached states of the clean and distorted splits of one run."""

    def __init__(self, config: ExpertConfig, log=print):
        config.validate()
        self.config = config
        self.log = log
        self.info = read_run_info(config.run_dir)
        self.task, self.train, self.validation, self.data_note = run_splits(
            config.run_dir, config.data_dir, config.source, config.train_subset, config.seed, config.train_source
        )
        self.expert_exits = list(range(1, self.info.plan.edge_end + 1))
        if not self.expert_exits:
            raise ExpertSetupError("the tier plan gives mobile and edge no layers: there is no exit to make an expert of")
        self._model = None
        self._tokenizer = None
        self.forward_seconds = 0.0

    def _load_model(self):
        if self._model is None:
            self._model = EarlyExitModel.from_pretrained(self.config.run_dir)
            self._tokenizer = AutoTokenizer.from_pretrained(Path(self.config.run_dir) / "encoder")
        return self._model, self._tokenizer

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(Path(self.config.run_dir) / "encoder")
        return self._tokenizer

    def _settings(self, split: str, name: str, severity, full: bool, n: int) -> dict:
        return {
            "split": split,
            "distortion": name,
            "severity": severity,
            "seed": self.config.seed,
            "n": n,
            "full": full,
            "expert_exits": self.expert_exits,
            "max_length": self.info.max_length,
        }

    def states(self, split: str, name: str, severity) -> SplitStates:
        """`split` is "train" (subset, layers 1..e) or "validation" (all layers); `severity` a number or
        "mix" (train: one severity per row from `train_severity`)."""
        base = self.train if split == "train" else self.validation
        full = split != "train"
        if name == CLEAN:
            severity = 0.0
        part = self.config.train_source if split == "train" else split
        key = f"{part}.{name}" + ("" if name == CLEAN else f".{severity}")
        settings = self._settings(part, name, severity, full, len(base))
        if severity == "mix":
            settings["train_severity"] = list(self.config.train_severity)
        cached = load_states(self.config.run_dir, key, settings)
        if cached is not None:
            return cached
        if severity == "mix":
            low, high = self.config.train_severity
            sev = severity_schedule(len(base), low, high, seed=self.config.seed + DISTORTIONS.index(name))
        else:
            sev = float(severity)
        distorted = distort_split(base, name, sev, seed=self.config.seed + (0 if split == "train" else 1000))
        model, tokenizer = self._load_model()
        started = time.perf_counter()
        states = forward_states(
            model,
            tokenizer,
            distorted,
            self.info.max_length,
            self.expert_exits,
            full,
            self.config.batch_size,
            pick_device(self.config.device),
        )
        took = time.perf_counter() - started
        self.forward_seconds += took
        self.log(f"  {self.info.task} {key}: {len(base)} rows in {took:.1f} s")
        save_states(self.config.run_dir, key, states, settings)
        # the cache keeps pooled states in float16: use them as a later run will read them back
        states.pooled = states.pooled.astype(np.float16).astype(np.float32)
        states.embedding = states.embedding.astype(np.float16).astype(np.float32)
        return states

    def all_states(self) -> dict:
        """Every split the experiment needs, keyed ("train", type) / ("validation", type, severity)."""
        out = {("train", CLEAN): self.states("train", CLEAN, 0.0)}
        for name in self.config.types:
            out[("train", name)] = self.states("train", name, "mix")
        out.update(self.validation_states())
        return out

    def validation_states(self) -> dict:
        """The clean validation split and each type at each evaluated severity (all exits' logits)."""
        out = {("validation", CLEAN, 0.0): self.states("validation", CLEAN, 0.0)}
        for name in self.config.types:
            for sev in self.config.eval_severities:
                out[("validation", name, float(sev))] = self.states("validation", name, float(sev))
        return out


# ---- expert heads -----------------------------------------------------------------------------------------
def train_expert_head(
    head: torch.nn.Module,
    pooled: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 30,
    learning_rate: float = 5e-4,
    weight_decay: float = 0.01,
    batch_size: int = 64,
    patience: int = 4,
    holdout: float = 0.1,
    seed: int = 0,
) -> dict:
    """Fine-tune one exit head (dense + tanh + dropout + classifier) on cached pooled states [n, hidden].

    Early stopping on a held-out share of the rows (loss); the best epoch's weights are kept (epoch 0 =
    the starting head, so training never leaves a head worse on held-out data than it started)."""
    rng = np.random.default_rng(seed)
    n = pooled.shape[0]
    order = rng.permutation(n)
    n_hold = max(1, int(round(holdout * n)))
    hold, fit = order[:n_hold], order[n_hold:]
    x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))
    regression = head.classifier.out_features == 1
    y = torch.from_numpy(labels.astype(np.float32 if regression else np.int64))

    def forward(rows, train: bool) -> torch.Tensor:
        head.train(train)
        z = torch.tanh(head.dense(x[rows]))
        return head.classifier(head.dropout(z))

    def loss_of(out, rows) -> torch.Tensor:
        if regression:
            return F.mse_loss(out.squeeze(-1), y[rows])
        return F.cross_entropy(out, y[rows])

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(loss_of(forward(hold, False), hold))

    optimiser = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best_loss, best_epoch = held_out_loss(), 0
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    start_loss, stale = best_loss, 0
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        perm = fit[torch.randperm(len(fit), generator=gen).numpy()]
        for s in range(0, len(perm), batch_size):
            rows = perm[s : s + batch_size]
            loss = loss_of(forward(rows, True), rows)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        current = held_out_loss()
        if current < best_loss - 1e-5:
            best_loss, best_epoch, stale = current, epoch, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    head.load_state_dict(best_state)
    head.eval()
    return {"held_out_loss_start": start_loss, "held_out_loss": best_loss, "best_epoch": best_epoch, "n_fit": len(fit)}


def train_experts(model_exits, exit_config, states: dict, config: ExpertConfig, expert_exits: list[int]) -> tuple[ExpertExits, dict]:
    """Expert heads for every type and expert exit, from the cached train states (encoder frozen)."""
    info = ExpertInfo(list(config.types), list(expert_exits), list(config.train_severity), {})
    experts = ExpertExits.from_standard(model_exits, exit_config, info)
    report: dict = {}
    torch.manual_seed(config.seed)
    for name in config.types:
        st = states[("train", name)]
        report[name] = {}
        for k, i in enumerate(expert_exits):
            report[name][str(i)] = train_expert_head(
                experts.heads[name][str(i)],
                st.pooled[:, k],
                st.split.labels,
                epochs=config.epochs,
                learning_rate=config.learning_rate,
                weight_decay=config.weight_decay,
                batch_size=config.batch_size,
                patience=config.patience,
                holdout=config.holdout,
                seed=config.seed + 17 * k,
            )
    return experts, report


def standard_heads(run_dir: str | Path, expert_exits: list[int]):
    """The run's standard exit heads (all of them; only the experts' exits are copied)."""
    from safetensors.torch import load_file
    from torch import nn

    from tiers.model import EXIT_WEIGHTS_FILE, ExitHead, read_encoder_config, read_exit_config

    exit_config = read_exit_config(run_dir)
    hidden = int(read_encoder_config(run_dir).hidden_size)
    num_layers = read_run_info(run_dir).plan.num_layers
    heads = nn.ModuleList(ExitHead(hidden, exit_config) for _ in range(num_layers))
    heads.load_state_dict(load_file(str(Path(run_dir) / EXIT_WEIGHTS_FILE)))
    return heads.eval(), exit_config


# ---- detector ---------------------------------------------------------------------------------------------
def tokenizer_lexicon(tokenizer) -> list[str]:
    """Whole alphabetic words of the tokenizer's vocabulary: the detector's lexicon (mobile holds it anyway)."""
    return sorted(w for w in tokenizer.get_vocab() if w.isalpha())


def detector_hidden(states: SplitStates, features: str, mobile_slot: int) -> np.ndarray | None:
    if features == "text":
        return None
    if features == "text+embedding":
        return states.embedding
    return states.pooled[:, mobile_slot]


def fit_detector(states: dict, config: ExpertConfig, lexicon: list[str], features: str, mobile_slot: int):
    """Fit the detector on the clean and distorted train texts (labels: "clean" or the type)."""
    names = [CLEAN, *config.types]
    texts, pairs, labels, hidden = [], [], [], []
    for name in names:
        st = states[("train", name)]
        texts += st.split.texts
        if st.split.pairs is not None:
            pairs += st.split.pairs
        labels += [name] * len(st.split)
        h = detector_hidden(st, features, mobile_slot)
        if h is not None:
            hidden.append(h)
    detector = DistortionDetector()
    detector.fit(
        texts, labels, hidden=np.concatenate(hidden) if hidden else None, text_pairs=pairs or None, lexicon=lexicon
    )
    return detector


def detect(detector: DistortionDetector, st: SplitStates, features: str, mobile_slot: int) -> np.ndarray:
    return detector.predict(st.split.texts, detector_hidden(st, features, mobile_slot), st.split.pairs)


# ---- logits under each mode -------------------------------------------------------------------------------
@torch.no_grad()
def expert_logits(experts: ExpertExits, name: str, pooled: np.ndarray) -> np.ndarray:
    """[n, len(expert exits), C] logits of `name`'s experts on cached pooled states."""
    x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))
    cols = [experts.logits_from_pooled(name, i, x[:, k]).numpy() for k, i in enumerate(experts.exits)]
    return np.stack(cols, axis=1)


def switched_logits(st: SplitStates, experts: ExpertExits, per_sample: Sequence[str]) -> np.ndarray:
    """Standard logits with the expert exits replaced, per sample, by the experts of that sample's type."""
    out = st.logits.copy()
    per_sample = np.asarray(per_sample)
    cols = np.asarray(experts.exits) - 1
    for name in sorted(set(per_sample.tolist()) - {CLEAN}):
        rows = np.flatnonzero(per_sample == name)
        out[np.ix_(rows, cols)] = expert_logits(experts, name, st.pooled[rows])
    return out


# ---- the experiment ---------------------------------------------------------------------------------------
def fit_policies(run_dir: str | Path, names: Sequence[str], max_drop: float) -> dict:
    """Policies fitted on the run's clean calibration split (knob by the report's cross-fitting protocol)."""
    info = read_run_info(run_dir)
    fit = read_cached_split(run_dir, "calibration")
    out = {}
    for family in tunable_policies(info.plan, info.cost_model):
        if family.name not in names:
            continue
        knob, cv_drop = choose_knob(family, fit, info.plan, info.cost_model, run_task(info), max_drop)
        out[family.name] = (family.build(knob).fit(fit.logits, fit.labels, features=fit.embedding), knob)
    return out


def knob_curves(run_dir: str | Path, names: Sequence[str], sets: dict, task: str) -> list[dict]:
    """Every knob of each policy family (the report's grid), fitted on clean calibration, scored on every
    (set, mode): accuracy / offload / cost curves, to compare the exits at equal accuracy rather than at one
    threshold. `sets` maps (distortion, severity) -> {mode: logits} with "labels" and "embedding" entries."""
    info = read_run_info(run_dir)
    fit = read_cached_split(run_dir, "calibration")
    out = []
    for family in tunable_policies(info.plan, info.cost_model):
        if family.name not in names:
            continue
        for knob in family.knobs:
            policy = family.build(knob).fit(fit.logits, fit.labels, features=fit.embedding)
            for (name, sev), entry in sets.items():
                for mode, logits in entry["modes"].items():
                    result = evaluate_policy(policy, logits, entry["labels"], entry["embedding"])
                    out.append(
                        {
                            "task": task,
                            "policy": family.name,
                            "knob": float(knob),
                            "distortion": name,
                            "severity": sev,
                            "mode": mode,
                            "accuracy": result["accuracy"],
                            "offload_rate": 1.0 - result["tier_shares"]["mobile"],
                            "normalised_cost": result["normalised_cost"],
                        }
                    )
    return out


def equal_accuracy(curves: list[dict], rows: list[dict]) -> list[dict]:
    """Per (policy, set, mode): the least offload rate and cost at which the mode's curve reaches the accuracy
    of the standard exits at the policy's chosen knob (None if it never does)."""
    out = []
    for row in rows:
        if row["mode"] != "standard":
            continue
        target = row["accuracy"]
        key = (row["policy"], row["distortion"], row["severity"])
        for mode in MODES:
            pts = [c for c in curves if (c["policy"], c["distortion"], c["severity"], c["mode"]) == (*key, mode)]
            if not pts:
                continue
            ok = [c for c in pts if c["accuracy"] >= target - 1e-9]
            out.append(
                {
                    "task": row["task"],
                    "policy": row["policy"],
                    "distortion": row["distortion"],
                    "severity": row["severity"],
                    "mode": mode,
                    "target_accuracy": target,
                    "offload_rate": min((c["offload_rate"] for c in ok), default=None),
                    "normalised_cost": min((c["normalised_cost"] for c in ok), default=None),
                }
            )
    return out


def _envelope(points: list[dict], grid: np.ndarray) -> np.ndarray:
    """Best accuracy reachable with an offload rate <= each grid value (NaN below the least offload)."""
    offload = np.array([p["offload_rate"] for p in points])
    accuracy = np.array([p["accuracy"] for p in points])
    return np.array([accuracy[offload <= g + 1e-12].max() if (offload <= g + 1e-12).any() else np.nan for g in grid])


def equal_offload(curves: list[dict], step: float = 0.01) -> list[dict]:
    """Per (policy, set, mode): mean accuracy gain over the standard exits at equal offload rate, comparing
    the upper envelopes of the two curves (best accuracy at an offload rate <= o) over the range of o both
    cover; also the largest gain and the share of offload levels where the mode is ahead."""
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    groups: dict[tuple, list[dict]] = {}
    for c in curves:
        groups.setdefault((c["task"], c["policy"], c["distortion"], c["severity"], c["mode"]), []).append(c)
    out = []
    for (task, policy, name, sev, mode), pts in groups.items():
        if mode == "standard":
            continue
        base = groups.get((task, policy, name, sev, "standard"))
        if not base:
            continue
        gap = _envelope(pts, grid) - _envelope(base, grid)
        gap = gap[np.isfinite(gap)]
        out.append(
            {
                "task": task,
                "policy": policy,
                "distortion": name,
                "severity": sev,
                "mode": mode,
                "mean_gain": float(gap.mean()) if gap.size else None,
                "max_gain": float(gap.max()) if gap.size else None,
                "share_ahead": float((gap > 1e-9).mean()) if gap.size else None,
            }
        )
    return out


def score(policy, logits: np.ndarray, labels: np.ndarray, embedding: np.ndarray, info, task: str) -> dict:
    task = run_task(info)  # the run's own task description (a task not in GLUE has no registry entry)
    result = evaluate_policy(policy, logits, labels, embedding)
    exits = result["exits"]
    chosen = predictions_from_logits(task, logits[np.arange(len(exits)), exits - 1])
    metric = primary_metric(task)
    m = info.plan.mobile_end
    return {
        "accuracy": result["accuracy"],
        "metric": compute_glue_metrics(task, chosen, labels)[metric],
        "offload_rate": 1.0 - result["tier_shares"]["mobile"],
        "cloud_share": result["tier_shares"]["cloud"],
        "normalised_cost": result["normalised_cost"],
        "mobile_accuracy": float((predictions_from_logits(task, logits[:, m - 1]) == labels).mean()),
        "mobile_confidence": float(confidence(logits[:, m - 1 : m]).mean()),
    }


def prepare_experts(config: ExpertConfig, log=print) -> dict:
    """Cache the states, train the expert heads and the detector, save both in the run folder."""
    started = time.perf_counter()
    set_seed(config.seed)
    builder = StatesBuilder(config, log)
    states = builder.all_states()
    heads, exit_config = standard_heads(config.run_dir, builder.expert_exits)
    t0 = time.perf_counter()
    experts, head_report = train_experts(heads, exit_config, states, config, builder.expert_exits)
    head_seconds = time.perf_counter() - t0
    experts.info.training = {
        "train_rows": len(builder.train),
        "train_source": config.train_source,
        "data": builder.data_note,
        "epochs": config.epochs,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "heads": head_report,
    }
    save_experts(config.run_dir, experts)
    lexicon = tokenizer_lexicon(builder.tokenizer)
    mobile_slot = builder.expert_exits.index(builder.info.plan.mobile_end) if builder.info.plan.mobile_end else 0
    t0 = time.perf_counter()
    detectors = {f: fit_detector(states, config, lexicon, f, mobile_slot) for f in DETECTOR_FEATURES}
    detector_seconds = time.perf_counter() - t0
    chosen = detectors[config.detector_features]
    payload = {"features": config.detector_features, "mobile_slot": mobile_slot, "detector": chosen.to_dict()}
    (experts_dir(config.run_dir) / DETECTOR_FILE).write_text(json.dumps(payload))
    return {
        "builder": builder,
        "states": states,
        "experts": experts,
        "detectors": detectors,
        "mobile_slot": mobile_slot,
        "timing": {
            "forward_seconds": round(builder.forward_seconds, 1),
            "head_training_seconds": round(head_seconds, 1),
            "detector_seconds": round(detector_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
        },
    }


def load_prepared(config: ExpertConfig, log=print) -> dict:
    """What `evaluate_experts` needs, from the experts and detector saved in the run folder (an error if the
    run has none); the states come from the cache (or one forward pass each). `config.types` is replaced by
    the saved experts' types and `config.detector_features` by the saved detector's."""
    experts = load_experts(config.run_dir)
    path = experts_dir(config.run_dir) / DETECTOR_FILE
    if not path.exists():
        raise ExpertSetupError(f"{config.run_dir} has expert exits but no {DETECTOR_FILE}; rerun `dimee experts train`")
    saved = json.loads(path.read_text())
    config.types = tuple(experts.types)
    config.train_severity = tuple(experts.info.train_severity) or config.train_severity
    config.detector_features = saved["features"]
    builder = StatesBuilder(config, log)
    states = builder.validation_states()
    return {
        "builder": builder,
        "states": states,
        "experts": experts,
        "detectors": {saved["features"]: DistortionDetector.from_dict(saved["detector"])},
        "mobile_slot": int(saved["mobile_slot"]),
        "timing": {"forward_seconds": round(builder.forward_seconds, 1)},
    }


def evaluate_experts(config: ExpertConfig, prepared: dict | None = None, log=print) -> dict:
    """The experiment on one run: rows of (distortion, severity, mode, policy) -> accuracy, offload, cost."""
    prepared = prepared or load_prepared(config, log)
    builder, states, experts = prepared["builder"], prepared["states"], prepared["experts"]
    info, task = builder.info, builder.info.task
    slot = prepared["mobile_slot"]
    policies = fit_policies(config.run_dir, config.policies, config.max_drop)
    detectors = prepared["detectors"]
    rows, detection, sets = [], [], {}
    eval_sets = [(CLEAN, 0.0)] + [(t, float(s)) for t in config.types for s in config.eval_severities]
    for name, sev in eval_sets:
        st = states[("validation", name, sev)]
        n = len(st.split)
        for feats, det in detectors.items():
            predicted = detect(det, st, feats, slot)
            truth = CLEAN if name == CLEAN else name
            detection.append(
                {
                    "task": task,
                    "distortion": name,
                    "severity": sev,
                    "features": feats,
                    "accuracy": float((predicted == truth).mean()),
                    "predicted": {str(k): int(v) for k, v in zip(*np.unique(predicted, return_counts=True))},
                }
            )
            if feats == config.detector_features:
                chosen_types = predicted
        modes = {"standard": st.logits, "detector": switched_logits(st, experts, chosen_types)}
        if name != CLEAN:
            modes["true_type"] = switched_logits(st, experts, [name] * n)
        sets[(name, sev)] = {"modes": modes, "labels": st.split.labels, "embedding": st.embedding}
        for mode, logits in modes.items():
            for pname, (policy, knob) in policies.items():
                rows.append(
                    {
                        "task": task,
                        "distortion": name,
                        "severity": sev,
                        "mode": mode,
                        "policy": pname,
                        "knob": float(knob),
                        "n": n,
                        **score(policy, logits, st.split.labels, st.embedding, info, task),
                        "final_accuracy": float((predictions_from_logits(run_task(info), st.logits[:, -1]) == st.split.labels).mean()),
                    }
                )
    curves = knob_curves(config.run_dir, config.policies, sets, task) if config.curves else []
    return {
        "task": task,
        "run_dir": str(config.run_dir),
        "curves": curves,
        "equal_accuracy": equal_accuracy(curves, rows),
        "equal_offload": equal_offload(curves),
        "data": builder.data_note,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "expert_exits": builder.expert_exits,
        "timing": prepared["timing"],
        "head_training": experts.info.training.get("heads", {}),
        "rows": rows,
        "detection": detection,
    }


def load_run_experts(run_dir: str | Path) -> tuple[ExpertExits, DistortionDetector | None]:
    """A run's experts and its detector (None if no detector was saved)."""
    experts = load_experts(run_dir)
    path = experts_dir(run_dir) / DETECTOR_FILE
    detector = DistortionDetector.from_dict(json.loads(path.read_text())["detector"]) if path.exists() else None
    return experts, detector

