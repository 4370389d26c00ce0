"""Request and response bodies (pydantic). The metadata that travels with a handoff is the codec's
(`tiers.HandoffMeta`, a binary section of the handoff body), re-exported here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from tiers import HandoffMeta  # noqa: F401 - the codec's, re-exported (`from services import HandoffMeta`)

TierName = Literal["mobile", "edge", "cloud"]
#: A distortion type's name as it travels between tiers (the receiving tier checks it against its experts).
DistortionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")]
HOPS: tuple[str, str, str] = ("mobile_edge", "mobile_cloud", "edge_cloud")

#: Why an answer is `degraded`: the tier that answered meant to hand the sample on to a later tier of its route
#: and could not, so it answered from its deepest exit computed so far. A stable set of codes (never an
#: exception's text; the details go to that tier's log, with the request id), also the `reason` label of
#: dimee_degraded_total and the failed `outcome`s of dimee_handoffs_total.
DEGRADED_REASONS: dict[str, str] = {
    "next_tier_not_configured": "no URL is configured for the tier the sample was to go to",
    "deadline_exceeded": "too little of the request's deadline was left to hand the sample on",
    "next_tier_timeout": "the next tier did not answer within its share of the deadline",
    "next_tier_unreachable": "the next tier could not be reached (connection refused, reset, name not resolved)",
    "next_tier_error": "the next tier answered with an error status",
    "next_tier_bad_answer": "the next tier's answer was malformed or did not fit the handoff",
    "link_lost": "the simulated link lost a packet beyond its retransmission limit",
    "handoff_failed": "the handoff failed inside this tier (a bug: see its log)",
}
DegradedReason = Literal[
    "next_tier_not_configured",
    "deadline_exceeded",
    "next_tier_timeout",
    "next_tier_unreachable",
    "next_tier_error",
    "next_tier_bad_answer",
    "link_lost",
    "handoff_failed",
]
assert set(DegradedReason.__args__) == set(DEGRADED_REASONS)  # type: ignore[attr-defined]
_REASONS_DOC = "why the answer is degraded, one of: " + "; ".join(f"{k} ({v})" for k, v in DEGRADED_REASONS.items())


class ClassifyRequest(BaseModel):
    """Texts to classify. Give `text` or `texts` (and, for pair tasks, `text_pair` or `text_pairs`); the run's
    own field names (run.json `text_fields`, e.g. `sentence1`/`sentence2`) are accepted in their place."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "examples": [{"text": "a brilliant, funny film"}, {"texts": ["good", "awful"], "force_tier": "cloud"}],
            # never both forms of one input (null counts as absent); a served tier's OpenAPI is exact:
            # classify_request_schema
            "allOf": [
                {"not": {"required": [one, many], "properties": {one: {"type": "string"}, many: {"type": "array"}}}}
                for one, many in (("text", "texts"), ("text_pair", "text_pairs"))
            ],
        },
    )

    text: str | None = Field(default=None, description="one text")
    texts: list[str] | None = Field(default=None, description="several texts, answered in order")
    text_pair: str | None = Field(default=None, description="second text of a pair task")
    text_pairs: list[str] | None = Field(default=None, description="second texts of a pair task, one per text")
    force_tier: TierName | None = Field(
        default=None,
        description="answer at this tier's last exit whatever the policy says (tests, comparisons): mobile at m; "
        "edge and cloud get the token ids straight from mobile (the direct route) where they accept them",
    )

    @model_validator(mode="after")
    def _one_form_per_input(self) -> "ClassifyRequest":
        for one, many in (("text", "texts"), ("text_pair", "text_pairs")):
            if getattr(self, one) is not None and getattr(self, many) is not None:
                raise ValueError(f"give only one of ['{one}', '{many}']")
        return self


def classify_request_schema(text_fields: list[str], max_texts: int, max_text_chars: int) -> dict:
    """The JSON schema of /v1/classify's body as a mobile tier with these run text fields and limits accepts it.

    Exactly one form of each input, null counting as absent: `text` (one string), `texts` (a list) or the run's
    own field name (either); for a pair task (two text fields) also exactly one of `text_pair`, `text_pairs` or
    the second field name; `force_tier` optional; nothing else. Texts are non-blank and at most
    `max_text_chars` characters, lists hold 1..`max_texts` of them. What the schema cannot say: the token limit
    (after tokenisation), and that a pair task needs as many second texts as texts.
    """
    fields = list(text_fields) or ["text"]
    pair = len(fields) >= 2
    one = {"type": "string", "minLength": 1, "maxLength": max_text_chars, "pattern": r"\S"}
    many = {"type": "array", "items": one, "minItems": 1, "maxItems": max_texts}

    def nullable(schema: dict, text: str) -> dict:
        return {"anyOf": [schema, {"type": "null"}], "description": text}

    properties: dict[str, dict] = {}
    alternatives: list[list[str]] = []
    groups = [("text", "texts", fields[0], "text")]
    if pair:
        groups.append(("text_pair", "text_pairs", fields[1], "second text"))
    for single, several, own, what in groups:
        properties[single] = nullable(one, f"one {what}")
        properties[several] = nullable(many, f"several {what}s, answered in order")
        names = [single, several]
        if own not in properties and own not in ClassifyRequest.model_fields:
            properties[own] = nullable({"oneOf": [one, many]}, f"the run's field name: one {what} or several")
            names.append(own)
        alternatives.append(names)
    properties["force_tier"] = nullable(
        {"type": "string", "enum": ["mobile", "edge", "cloud"]},
        str(ClassifyRequest.model_fields["force_tier"].description),
    )
    exactly_one = [
        {"oneOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names]}
        for names in alternatives
    ]
    example = {"text": "a brilliant, funny film", **({"text_pair": "a funny, brilliant film"} if pair else {})}
    return {
        "title": "ClassifyRequest",
        "description": (
            f"Give the {'texts and their second texts' if pair else 'texts'} in exactly one form each "
            f"({' / '.join(' or '.join(repr(n) for n in names) for names in alternatives)}); at most {max_texts} "
            f"per request, each non-blank and at most {max_text_chars} characters. Texts over the token limit "
            "get 422 (never truncated)" + ("; give one second text per text." if pair else ".")
        ),
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "allOf": exactly_one,
        "examples": [example, {"texts": ["good", "awful"], "force_tier": "cloud"}] if not pair else [example],
    }


#: Answers never carry NaN or infinity (JSON has neither; they would be written as null): building one with a
#: non-finite number fails, and so does reading one from the next tier.
_FINITE = ConfigDict(allow_inf_nan=False)


class CostReport(BaseModel):
    """What answering this sample cost (tiers.CostModel.route_breakdown of its route, the accounting the offline
    evaluation uses) and how long each stage took."""

    model_config = _FINITE

    layers: dict[str, int] = Field(description="transformer layers run on each tier")
    bytes_per_hop: dict[str, int] = Field(
        description="handoff body bytes of this sample per hop (token ids or hidden states, as if sent alone)"
    )
    compute_units: dict[str, float]
    offload_units: dict[str, float]
    total_units: float = Field(description="sum of compute and offload units")
    normalised: float = Field(description="total units / the all-cloud reference cost")
    wall_ms: dict[str, float] = Field(
        description="measured milliseconds: per tier (arrival to decision) and per hop (round trip minus the "
        "next tier's own time)"
    )


class Answer(BaseModel):
    """One sample's answer as a tier produces it (also the unit of a handoff response)."""

    model_config = _FINITE

    label: int | None = Field(description="predicted class index; None for regression")
    label_name: str | None
    probabilities: list[float] | None = Field(description="softmax (after temperature) at the answering exit")
    score: float | None = Field(default=None, description="regression output")
    exit: int = Field(description="1-based exit that answered")
    tier: TierName = Field(description="tier that answered")
    degraded: bool = Field(description="answered locally because the next tier failed or ran out of time")
    degraded_reason: DegradedReason | None = Field(default=None, description=_REASONS_DOC)
    route: list[str] = Field(
        default_factory=list,
        description="stops from the tier that wrote this answer on, each 'tier@entry' (entry boundary: 0 = token ids)",
    )
    depth: int = Field(default=0, ge=0, description="deepest layer the answering tier ran (>= exit)")
    bytes_per_hop: dict[str, int] = Field(default_factory=dict)
    wall_ms: dict[str, float] = Field(default_factory=dict)


class Prediction(BaseModel):
    model_config = _FINITE

    label: int | None
    label_name: str | None
    probabilities: list[float] | None
    score: float | None = None
    exit: int
    tier: TierName
    route: list[str] = Field(description="the sample's route: stops 'tier@entry', e.g. ['mobile@0', 'cloud@0']")
    degraded: bool
    degraded_reason: DegradedReason | None = Field(default=None, description=_REASONS_DOC)
    distortion: str | None = Field(
        default=None, description="distortion type the detector named (\"clean\": standard exits); only with experts on"
    )
    cost: CostReport


class ClassifyResponse(BaseModel):
    model_config = _FINITE

    request_id: str
    task: str
    plan: str = Field(description="tier plan 'm,e'")
    policy: str
    predictions: list[Prediction]
    wall_ms: float = Field(description="time this request spent in the mobile service")


class HandoffResponse(BaseModel):
    model_config = _FINITE

    request_id: str
    server_ms: float = Field(description="time the handoff spent in this tier, next hops included")
    answers: list[Answer]


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = None
