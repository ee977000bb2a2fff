"""ChatLearn's two sections, ``runtime`` and ``models.<name>``, and JobConfig, which
holds both: what the runtime's Engine takes, with or without Kubernetes.

Keys and defaults follow ChatLearn, so a ChatLearn user ports a config by
copying it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

from pydantic import Field

from rlhfjob_operator.spec.base import ConfigModel
from rlhfjob_operator.spec.pod import PodSettings
from rlhfjob_operator.spec.rules import Rule, cel_or

__all__ = [
    "COLOCATED_MODELS_EXIST",
    "COLOCATED_REPLICAS_MATCH",
    "REPLICAS_GET_BATCHES",
    "STALENESS_SYNCS_EVERY_EPISODE",
    "JobConfig",
    "ModelSpec",
    "RuntimeSpec",
]


class RuntimeSpec(ConfigModel):
    """ChatLearn's ``runtime`` section: how episodes are cut and trained."""

    num_episode: int = Field(5000, ge=1, description="Episodes to run.")
    sample_per_episode: int = Field(
        1000,
        ge=1,
        description="Samples per episode: prompts taken, times num_inference_per_prompt.",
    )
    num_inference_per_prompt: int = Field(
        1,
        ge=1,
        description="Copies of each prompt taken (ChatLearn's data loader repeats each prompt "
        "this many times); sample_per_episode counts the copies.",
    )
    data_rerank: bool = Field(
        False,
        description="With num_inference_per_prompt > 1: true repeats the episode's prompts "
        "as a whole (a b a b), false each in place (a a b b), as ChatLearn's sampler.",
    )
    num_training_epoch: int = Field(1, ge=1, description="Passes over each episode's samples.")
    generation_batch_size: int = Field(2, ge=1, description="Prompts per env-flow batch.")
    train_micro_batch_size: int = Field(2, ge=1, description="Samples per micro-batch.")
    train_global_batch_size: int | None = Field(
        None, ge=1, description="Samples per optimizer step; defaults to the micro batch."
    )
    save_episode_interval: int | None = Field(
        None, ge=1, description="Checkpoint every N episodes; none when unset."
    )
    eval_episode_interval: int = Field(
        0, ge=0, description="Evaluate every N episodes; 0 (the default): never."
    )
    enable_eval_before_training: bool = False
    data_shuffle: bool = True
    data_path: str | None = Field(
        None,
        description="Training prompts: a local JSONL, JSON or parquet file, read when the "
        "entrypoint calls no set_dataset.",
    )
    eval_data_path: str | None = Field(
        None,
        description="Evaluation prompts (a file as data_path), read when the evaluator has "
        "no set_dataset.",
    )
    prompt_key: str = Field(
        "prompt",
        min_length=1,
        description="The prompt's column in those files: a string or a list of chat messages.",
    )
    data_ratio: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        min_length=1,
        description="With several prompt datasets: how many prompts to take from each in "
        "turn (one entry per dataset, or one entry for all); default one from each.",
    )
    colocation: list[list[str]] = Field(
        default_factory=list, description="Groups of model names that share one worker."
    )
    data_checkpoint_path: str | None = Field(
        None, description="Directory for checkpoints (weights, optimizer, data position, RNG)."
    )
    enable_resume_training: bool = True
    stream_data_loader_type: Literal["fixed", "dynamic"] = "fixed"
    max_replay_episode: int = Field(
        0,
        ge=-1,
        description="Episodes handed to the replay sample manager, this one included (0: replay "
        "disabled, the manager is not called; -1: all).",
    )
    replay_episode_offset: int = Field(
        0,
        ge=0,
        description="First episode (0-based) handed to the replay sample manager; earlier "
        "ones train on their own samples and are not kept.",
    )
    coalesced_buffer_mb: int = Field(100, ge=1, description="Parameter-sync bucket size in MB.")
    max_staleness: int = Field(
        0,
        ge=0,
        description="Asynchronous RL: how many weight versions a sample's policy may lag the "
        "trainer's. With k >= 1 the env flow of episode e+k runs while episode e trains and "
        "syncs; 0 is synchronous.",
    )
    seed: int = 1234

    @property
    def global_batch_size(self) -> int:
        return self.train_global_batch_size or self.train_micro_batch_size

    @property
    def coalesced_buffer_bytes(self) -> int:
        """``coalesced_buffer_mb`` in bytes (MiB): the parameter-sync and all-reduce buckets."""
        return self.coalesced_buffer_mb * 2**20


def _small_group(rt: RuntimeSpec) -> int | None:
    """Index of the first colocation group of fewer than two names; None when none is."""
    return next((i for i, group in enumerate(rt.colocation) if len(group) < 2), None)


def _repeated(rt: RuntimeSpec) -> tuple[str, int, int] | None:
    """(name, first group, second group) of the first name listed twice in colocation
    (the groups are equal when a group lists it twice); None when no name is."""
    seen: dict[str, int] = {}
    for index, group in enumerate(rt.colocation):
        for name in group:
            if name in seen:
                return name, seen[name], index
            seen[name] = index
    return None


def _small_group_message(rt: RuntimeSpec) -> str:
    index = _small_group(rt)
    assert index is not None, "explained a rule that holds"
    return (
        f"runtime.colocation[{index}] has {len(rt.colocation[index])} model(s); a colocation "
        "group names at least two models"
    )


def _repeated_message(rt: RuntimeSpec) -> str:
    repeat = _repeated(rt)
    assert repeat is not None, "explained a rule that holds"
    name, first, second = repeat
    return (
        f"model {name!r} is in two colocation groups "
        f"(runtime.colocation[{first}] and [{second}]); put it in one group"
    )


def _runtime_rules() -> tuple[Rule[RuntimeSpec], ...]:
    d = {name: field.default for name, field in RuntimeSpec.model_fields.items()}
    micro = cel_or("self", "train_micro_batch_size", d["train_micro_batch_size"])
    glob = cel_or("self", "train_global_batch_size", micro)
    spe = cel_or("self", "sample_per_episode", d["sample_per_episode"])
    gen = cel_or("self", "generation_batch_size", d["generation_batch_size"])
    loader = cel_or("self", "stream_data_loader_type", f"'{d['stream_data_loader_type']}'")
    repeats = cel_or("self", "num_inference_per_prompt", d["num_inference_per_prompt"])
    return (
        Rule(
            cel=f"{spe} % {repeats} == 0",
            message="runtime.sample_per_episode must be a multiple of "
            "runtime.num_inference_per_prompt",
            holds=lambda rt: rt.sample_per_episode % rt.num_inference_per_prompt == 0,
            explain=lambda rt: (
                f"runtime.sample_per_episode ({rt.sample_per_episode}) must be a multiple of "
                f"runtime.num_inference_per_prompt ({rt.num_inference_per_prompt}): an episode "
                "takes whole prompts, each that many times"
            ),
            field_path=".sample_per_episode",
        ),
        Rule(
            cel=f"{glob} % {micro} == 0",
            message="runtime.train_global_batch_size must be a multiple of "
            "runtime.train_micro_batch_size",
            holds=lambda rt: rt.global_batch_size % rt.train_micro_batch_size == 0,
            explain=lambda rt: (
                f"runtime.train_global_batch_size ({rt.global_batch_size}) must "
                f"be a multiple of runtime.train_micro_batch_size ({rt.train_micro_batch_size})"
            ),
            field_path=".train_global_batch_size",
        ),
        Rule(
            # Only a fixed loader's episode is sample_per_episode samples; a dynamic one's
            # count is the env flow's (GRPO: sample_per_episode prompts x group_size), so
            # its global batch is sized in what the flow yields.
            cel=f"{loader} == 'dynamic' || {glob} <= {spe}",
            message="runtime.train_global_batch_size is larger than runtime.sample_per_episode "
            "with the fixed loader: every episode would train in one smaller batch",
            holds=lambda rt: (
                rt.stream_data_loader_type == "dynamic"
                or rt.global_batch_size <= rt.sample_per_episode
            ),
            explain=lambda rt: (
                f"runtime.train_global_batch_size ({rt.global_batch_size}) is larger than "
                f"runtime.sample_per_episode ({rt.sample_per_episode}), the samples of every "
                "episode with stream_data_loader_type 'fixed', so no batch would ever be "
                "that size; lower the batch, raise sample_per_episode, or use the 'dynamic' "
                "loader when the env flow yields more samples than prompts (GRPO)"
            ),
            field_path=".train_global_batch_size",
        ),
        Rule(
            cel=f"{gen} <= {spe}",
            message="runtime.generation_batch_size is larger than runtime.sample_per_episode",
            holds=lambda rt: rt.generation_batch_size <= rt.sample_per_episode,
            explain=lambda rt: (
                f"runtime.generation_batch_size ({rt.generation_batch_size}) is "
                f"larger than runtime.sample_per_episode ({rt.sample_per_episode})"
            ),
            field_path=".generation_batch_size",
        ),
        Rule(
            # An empty path is no directory either.
            cel="!has(self.save_episode_interval) || "
            "(has(self.data_checkpoint_path) && self.data_checkpoint_path != '')",
            message="runtime.save_episode_interval is set but runtime.data_checkpoint_path is "
            "not; set a directory for checkpoints",
            holds=lambda rt: rt.save_episode_interval is None or bool(rt.data_checkpoint_path),
            field_path=".data_checkpoint_path",
        ),
        Rule(
            cel="!has(self.colocation) || self.colocation.all(g, g.size() >= 2)",
            message="runtime.colocation: a colocation group names at least two models",
            holds=lambda rt: _small_group(rt) is None,
            explain=_small_group_message,
            field_path=".colocation",
        ),
        Rule(
            cel="!has(self.colocation) || self.colocation.all(g, g.all(n, "
            "self.colocation.filter(h, n in h).size() == 1 && g.filter(m, m == n).size() == 1))",
            message="runtime.colocation: a model is in two colocation groups; put it in one group",
            holds=lambda rt: _repeated(rt) is None,
            explain=_repeated_message,
            field_path=".colocation",
        ),
    )


# The CEL of these rules reads the defaults from the fields themselves.
RuntimeSpec.rules = _runtime_rules()


class _Attributes(dict[str, Any]):
    """A mapping of settings whose keys also read as attributes, as HEAD's dataclasses."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _attributes(self[name])
        except KeyError:
            raise AttributeError(f"no setting {name!r} among {sorted(self)}") from None


def _attributes(value: Any) -> Any:
    return _Attributes(value) if isinstance(value, dict) else value


class ModelSpec(ConfigModel):
    """ChatLearn's ``models.<name>`` section: one model's placement and schedule."""

    num_gpu: int = Field(0, ge=0, description="GPUs per replica.")
    num_cpu: int = Field(1, ge=0, description="CPUs per replica.")
    num_replica: int = Field(1, ge=1, description="Copies of the model.")
    trainable: bool = False
    generation_batch_size: int | None = Field(
        None, ge=1, description="Overrides runtime.generation_batch_size for this model."
    )
    sync_frequency: int = Field(
        1, ge=1, description="A trainable model syncs its weights every N episodes."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form arguments for the module (model_args), e.g. model_path.",
    )
    pod: PodSettings | None = Field(
        None,
        description="Kubernetes placement of this model's pods (camelCase keys); "
        "ignored by the local launcher.",
    )

    if not TYPE_CHECKING:  # (mypy would then accept any attribute of every ModelSpec)

        def __getattr__(self, name: str) -> Any:
            """``args[name]``: ChatLearn HEAD's modules read their settings as
            ``self.module_args.<key>`` (HEAD's per-model config dataclass), where
            rlhfjob keeps them in ``args``; a mapping among them reads the same way
            (``module_args.optimizer.lr``). A key in neither is an AttributeError."""
            args = self.__dict__.get("args")
            if args is not None and name in args:
                return _attributes(args[name])
            try:
                return super().__getattr__(name)  # pydantic's: private attributes
            except AttributeError:
                raise AttributeError(
                    f"the model's settings have no {name!r}: neither a models.<name> key nor "
                    f"in its args ({sorted(args or ())})"
                ) from None


# --- Rules across runtime and models (JobConfig and RLHFJobSpec) ----------------


class Sections(Protocol):
    """What JobConfig and RLHFJobSpec share: the two ChatLearn sections."""

    @property
    def runtime(self) -> RuntimeSpec: ...
    @property
    def models(self) -> dict[str, ModelSpec]: ...


def _rt(field: str) -> str:
    """CEL for ``self.runtime.<field>`` or RuntimeSpec's default (runtime may be absent)."""
    default = RuntimeSpec.model_fields[field].default
    return f"(has(self.runtime) && has(self.runtime.{field}) ? self.runtime.{field} : {default})"


def _replicas(model: str) -> str:
    default = ModelSpec.model_fields["num_replica"].default
    return cel_or(f"self.models[{model}]", "num_replica", default)


# models and runtime may be absent (pydantic's defaults: none, and RuntimeSpec()); a CEL
# rule that read an absent field would fail, and the API server refuse the object.
_COLOCATION = "(has(self.runtime) && has(self.runtime.colocation) ? self.runtime.colocation : [])"


def _unknown(s: Sections) -> str | None:
    """The first name in runtime.colocation that is not a model; None when all are."""
    return next((n for g in s.runtime.colocation for n in g if n not in s.models), None)


def _replicas_differ(s: Sections) -> tuple[int, list[str], set[int]] | None:
    """(index, group, num_replica values) of the first group whose known models disagree
    on num_replica; None when none do. Unknown names are COLOCATED_MODELS_EXIST's."""
    for index, group in enumerate(s.runtime.colocation):
        counts = {s.models[n].num_replica for n in group if n in s.models}
        if len(counts) > 1:
            return index, group, counts
    return None


def _starved(s: Sections) -> tuple[str, int, int] | None:
    """(model, num_replica, generation batch) of the first model whose replicas cannot all
    get a batch of an episode; None when all can."""
    for name, model in s.models.items():
        batch = model.generation_batch_size or s.runtime.generation_batch_size
        if model.num_replica * batch > s.runtime.sample_per_episode:
            return name, model.num_replica, batch
    return None


def _starved_message(s: Sections) -> str:
    starved = _starved(s)
    assert starved is not None, "explained a rule that holds"
    name, replicas, batch = starved
    return (
        f"models.{name}: num_replica ({replicas}) x generation_batch_size ({batch}) = "
        f"{replicas * batch} exceeds runtime.sample_per_episode "
        f"({s.runtime.sample_per_episode}); some replicas would never get a batch"
    )


def _differ_message(s: Sections) -> str:
    differ = _replicas_differ(s)
    assert differ is not None, "explained a rule that holds"
    index, group, counts = differ
    return (
        f"runtime.colocation[{index}]: models {group} share workers, so they need "
        f"the same num_replica (got {sorted(counts)})"
    )


COLOCATED_MODELS_EXIST: Rule[Sections] = Rule(
    cel=f"{_COLOCATION}.all(g, g.all(n, has(self.models) && n in self.models))",
    message="spec.runtime.colocation names a model that is not under spec.models",
    holds=lambda s: _unknown(s) is None,
    explain=lambda s: (
        f"runtime.colocation names model {_unknown(s)!r}, which is not under "
        f"models (known: {sorted(s.models)})"
    ),
    field_path=".runtime.colocation",
)
COLOCATED_REPLICAS_MATCH: Rule[Sections] = Rule(
    cel=f"!has(self.models) || {_COLOCATION}.all(g, g.all(n, !(n in self.models) || "
    "!(g[0] in self.models) || "
    f"{_replicas('n')} == {_replicas('g[0]')}))",
    message="spec.runtime.colocation: models of one colocation group need the same num_replica",
    holds=lambda s: _replicas_differ(s) is None,
    explain=_differ_message,
    field_path=".runtime.colocation",
)


def _lagging(s: Sections) -> str | None:
    """The first model that syncs less often than every episode while max_staleness is on
    (its policy would lag by more than max_staleness versions); None when none does."""
    if s.runtime.max_staleness == 0:
        return None
    return next((n for n, m in s.models.items() if m.sync_frequency != 1), None)


STALENESS_SYNCS_EVERY_EPISODE: Rule[Sections] = Rule(
    cel=f"{_rt('max_staleness')} == 0 || !has(self.models) || self.models.all(k, "
    f"{cel_or('self.models[k]', 'sync_frequency', 1)} == 1)",
    message="spec.runtime.max_staleness needs sync_frequency 1 on every model: weight "
    "versions are counted in episodes",
    holds=lambda s: _lagging(s) is None,
    explain=lambda s: (
        f"runtime.max_staleness is {s.runtime.max_staleness} but models.{_lagging(s)}."
        "sync_frequency is not 1; the staleness bound counts one weight version per episode, "
        "so set sync_frequency to 1 (or max_staleness to 0)"
    ),
    field_path=".runtime.max_staleness",
)
REPLICAS_GET_BATCHES: Rule[Sections] = Rule(
    cel=f"!has(self.models) || self.models.all(k, {_replicas('k')} * "
    f"(has(self.models[k].generation_batch_size) ? "
    f"self.models[k].generation_batch_size : {_rt('generation_batch_size')}) <= "
    f"{_rt('sample_per_episode')})",
    message="spec.models: num_replica x generation_batch_size exceeds "
    "runtime.sample_per_episode; some replicas would never get a batch",
    holds=lambda s: _starved(s) is None,
    explain=_starved_message,
    field_path=".models",
)


class JobConfig(ConfigModel):
    """The ``runtime`` and ``models`` sections: everything the Engine needs."""

    runtime: RuntimeSpec = Field(default_factory=lambda: RuntimeSpec())
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    rules: ClassVar[tuple[Rule[JobConfig], ...]] = (
        COLOCATED_MODELS_EXIST,
        REPLICAS_GET_BATCHES,
        STALENESS_SYNCS_EVERY_EPISODE,
    )

    def model(self, name: str) -> ModelSpec:
        """The spec of model ``name``; defaults when the config does not mention it."""
        return self.models.get(name) or ModelSpec()
