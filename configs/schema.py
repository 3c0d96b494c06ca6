"""The schema of every config group, as dataclasses registered in Hydra's ConfigStore.

Each YAML file under configs/ is a small delta on these defaults. The primary config is structured, so a key
that is not declared here (a typo such as ``trainer.max_step``) or a value of the wrong type fails at
composition, before anything runs or is submitted. A field's comment is its help text.

This module is imported on the submission side: it must stay free of torch, lightning and friends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


# A task reference without a dot names one of zerorun's own tasks, trainer_core/tasks/NAME.py; with dots it is the
# module path of a task defined anywhere on the Python path (docs/tasks.md).
BUILTIN_TASKS = "trainer_core.tasks"
# modules of that package that hold shared parts, not tasks
NOT_TASKS = ("base",)


def task_module(ref: str) -> str:
    """The module that defines the task `ref` (a task name or a module path)."""
    return ref if "." in ref else f"{BUILTIN_TASKS}.{ref}"


@dataclass
class TaskConfig:
    # the task's name: zerorun's own "translation" (seq2seq, BLEU) or "language_modeling" (causal LM, perplexity),
    # or the name of a task defined elsewhere (set module then); the run folder and checkpoints carry it
    name: str = MISSING
    # the module that defines the task (its TASK); null: zerorun's own task of that name, trainer_core.tasks.NAME
    module: Optional[str] = None
    # translation: beams and length used when generating text for validation BLEU
    num_beams: int = 1
    max_generate_length: int = 64
    # how many validation translations to print and log as samples after each validation
    log_samples: int = 3


@dataclass
class DataFilesConfig:
    # local files by split (JSON lines, or .txt for language modeling); any set replaces the hub data set
    train: Optional[str] = None
    validation: Optional[str] = None


@dataclass
class DatasetConfig:
    # Hugging Face dataset id and subset for load_dataset (e.g. "wmt16", "ro-en"); ignored when data_files is set
    name: Optional[str] = None
    subset: Optional[str] = None
    # local files by split, e.g. {train: a.jsonl, validation: b.jsonl}; read with load_dataset("json"/"text", ...)
    data_files: DataFilesConfig = field(default_factory=lambda: DataFilesConfig())
    # "none", or a task ("translation", "language_modeling", or a task's module path): make that task's small
    # learnable data set in code, then load it as files
    synthetic: str = "none"
    synthetic_train_size: int = 4000
    synthetic_val_size: int = 200
    # seed of the synthetic generator: another seed gives other sentences (and other cached files)
    synthetic_seed: int = 0
    train_split: str = "train"
    validation_split: str = "validation"
    # translation pairs are {"translation": {source_language: ..., target_language: ...}}
    source_language: Optional[str] = None
    target_language: Optional[str] = None
    # T5-style prefix put in front of every source sentence (empty for none)
    source_prefix: str = ""
    max_source_length: int = 128
    max_target_length: int = 128
    # language modeling: the text column and the length of the token blocks the text is packed into
    text_column: str = "text"
    block_size: int = 128
    # cap the number of examples (after loading) for quick runs; null keeps them all
    max_train_samples: Optional[int] = None
    max_val_samples: Optional[int] = None
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    # where tokenized data, generated data and trained tokenizers are cached (shared by all runs)
    cache_dir: str = "${oc.env:ZERORUN_CACHE,${oc.env:HOME}/.cache/zerorun}"


@dataclass
class TokenizerConfig:
    # hub name or local path for AutoTokenizer.from_pretrained; null trains a byte-level BPE tokenizer offline
    name_or_path: Optional[str] = None
    # offline training: vocabulary size and how many training texts it reads
    vocab_size: int = 1000
    train_samples: int = 20000


@dataclass
class BackboneConfig:
    # hub name or local path for from_pretrained; null builds model_type from model_config with random weights
    pretrained_model_name_or_path: Optional[str] = None
    model_type: Optional[str] = None
    # keyword arguments of the transformers config (AutoConfig.for_model(model_type, **model_config))
    model_config: Dict[str, Any] = field(default_factory=dict)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class OptimizerConfig:
    # "adamw"; with optimizer offload DeepSpeed's CPU Adam (AdamW mode) is used in its place automatically
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    # "linear_warmup" (linear warm-up, then linear decay to 0 at trainer.max_steps) or "constant"
    name: str = "linear_warmup"
    warmup_steps: int = 0
    # used when warmup_steps is 0: warm up over this fraction of trainer.max_steps
    warmup_ratio: float = 0.1


@dataclass
class StrategyConfig:
    # "auto" (single device), "ddp" or "deepspeed"
    name: str = "auto"
    # ZeRO stage; this project supports stage 2
    stage: int = 2
    # ZeRO-Offload: keep optimizer state and step on the CPU (needs name=deepspeed)
    offload_optimizer: bool = False
    # DeepSpeed bucket sizes in elements; null: 2e8 on GPUs, 1e6 on CPU (2e8 on CPU costs two 800 MB buffers a step)
    reduce_bucket_size: Optional[int] = None
    allgather_bucket_size: Optional[int] = None
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    # DDP: gradient bucket size in MB; null keeps torch's default
    bucket_cap_mb: Optional[float] = None
    find_unused_parameters: bool = False


@dataclass
class CheckpointConfig:
    # save a checkpoint every N optimizer steps (0: only at the end and when a stop is asked for)
    every_n_steps: int = 0
    # keep this many checkpoints; older ones are deleted after a newer one is complete
    keep_last: int = 2
    save_at_end: bool = True


@dataclass
class TrackerConfig:
    """trainer.logger=wandb or mlflow (docs/trackers.md). Credentials are never set here: list their variables
    (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...) in cluster.env_passthrough."""
    # the W&B project or MLflow experiment; null: the run's name
    project: Optional[str] = None
    # the W&B entity (user or team); null: the API key's default. MLflow has none
    entity: Optional[str] = None
    # MLflow's tracking server or store ("http://...", "file:/..."); null: a file store in the run folder
    # (RUN_DIR/mlruns). W&B reads its server from WANDB_BASE_URL
    tracking_uri: Optional[str] = None
    # "online", or "offline": W&B writes RUN_DIR/wandb only (upload later with `wandb sync --id ID`); MLflow logs
    # to the run folder's file store (a tracking_uri other than file: is refused)
    mode: str = "online"


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    # processes per node and nodes; they follow the cluster geometry unless set by hand
    devices: int = "${cluster.tasks_per_node}"  # type: ignore[assignment]
    num_nodes: int = "${cluster.nodes}"  # type: ignore[assignment]
    # "auto": bf16-mixed for DeepSpeed on GPUs, 32-true on CPU; or any Lightning precision string
    precision: str = "auto"
    max_steps: int = 1000
    val_check_interval: int = 200
    limit_val_batches: Optional[int] = None
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    # a run resumed on another number of ranks keeps its "global" batch (ranks x dataset.batch_size x
    # accumulation; accumulate_grad_batches is recomputed, refused where it cannot divide), or "per_rank":
    # dataset.batch_size and accumulate_grad_batches as configured, so the global batch follows the ranks
    keep_batch: str = "global"
    gradient_clip_val: Optional[float] = 1.0
    deterministic: bool = False
    # "tensorboard", "csv", or a tracker: "wandb", "mlflow" (settings under trainer.tracker)
    logger: str = "tensorboard"
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    enable_progress_bar: bool = True
    # seconds a collective (all-reduce, barrier, a checkpoint save's meeting) waits for the other ranks before
    # the process group gives up and the job fails; raise it when a save or a rank's start-up can take longer
    collective_timeout_s: int = 1800
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class ContainerConfig:
    # "none": the ranks run on the node as they are; "pyxis": srun --container-image (enroot through the pyxis
    # plugin); "apptainer": srun ... apptainer exec IMAGE (singularity too: set command=singularity)
    runtime: str = "none"
    # pyxis: a registry image as enroot names it (nvcr.io#nvidia/pytorch:24.01-py3) or a squashfs file (.sqsh);
    # apptainer: a .sif file, a sandbox folder, or docker:// library:// oras:// ... A local path must exist
    image: Optional[str] = None
    # more bind mounts, SRC[:DST[:FLAGS]] (absolute SRC; DST defaults to SRC). The run folder, the folder you submit
    # from and dataset.cache_dir are mounted at their own paths without being listed
    mounts: List[str] = field(default_factory=list)
    # the folder the ranks start in inside the container; null: the folder you submitted from (mounted)
    workdir: Optional[str] = None
    # the image's Python, which must have zerorun and its training dependencies installed
    python: str = "python"
    # variables set for the ranks inside the container, over the image's own values (values are written into the
    # job script: never a secret here, pass secrets by name with cluster.env_passthrough)
    env: Dict[str, str] = field(default_factory=dict)
    # further arguments of the runtime: srun's --container-* flags for pyxis, `apptainer exec` options for apptainer
    extra_args: List[str] = field(default_factory=list)
    # apptainer only: the program that runs the image ("apptainer" or "singularity", or a full path)
    command: str = "apptainer"


@dataclass
class ClusterConfig:
    # "local" runs the ranks on this machine with the Slurm environment contract; "slurm" submits with sbatch
    backend: str = "local"
    nodes: int = 1
    # start on what is free: Slurm grants min_nodes..nodes (--nodes=MIN-MAX) and the run resumes across sizes,
    # keeping the global batch of nodes x tasks_per_node ranks (gradient accumulation makes up the difference)
    min_nodes: Optional[int] = None
    # 0 means CPU ranks: set tasks_per_node explicitly then
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    # memory per node as Slurm writes it ("32G"); null asks for nothing
    mem: Optional[str] = None
    # time limit in minutes
    time_min: int = 60
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    # the GPU model a job asks for (a GRES type of the site, e.g. "a100"); null: any GPU
    gpu_type: Optional[str] = None
    # how the GPUs are asked for: "gpus_per_node" (--gpus-per-node=[TYPE:]N) or "gres" (--gres=gpu[:TYPE]:N, for
    # sites whose Slurm or policy wants the older spelling); a site profile (site=NAME) sets it
    gres_style: str = "gpus_per_node"
    exclude: Optional[str] = None
    exclusive: bool = False
    # the one signal zerorun asks Slurm for, and how many seconds before the time limit it comes
    signal: str = "USR2"
    signal_delay_s: int = 120
    # shell lines run before the ranks start (module load, conda or venv activation)
    setup: List[str] = field(default_factory=list)
    # a file whose lines are added to setup (read at submission)
    setup_file: Optional[str] = None
    srun_args: List[str] = field(default_factory=list)
    # further sbatch parameters as submitit's slurm_additional_parameters take them
    sbatch_extra: Dict[str, Any] = field(default_factory=dict)
    # names of environment variables copied from the submitting shell into the job (values never reach scripts)
    env_passthrough: List[str] = field(default_factory=list)
    # where run folders are made
    runs_dir: str = "${oc.env:ZERORUN_RUNS,runs}"
    # rendezvous port; null derives it from the job id
    master_port: Optional[int] = None
    # allow DeepSpeed on a Slurm job without GPUs (gpus_per_node=0): a CPU rehearsal of the real engine over gloo
    cpu_rehearsal: bool = False
    # ask Slurm to requeue the job (node failure, preemption); the rerun resumes from the run's latest checkpoint
    requeue: bool = True
    # start only after other jobs (docs/chains.md): a Slurm job id, a run folder (its job) or a sweep folder (all
    # of its arrays). Submission refuses a job that does not exist or that ended so that the wait could never end;
    # a dependency that has already ended well is dropped. cluster=local waits for it here, in the foreground
    after: Optional[str] = None
    # "afterok": only once every dependency completed (a failed one cancels this job instead of leaving it
    # pending); "afterany": once they ended, however they ended
    after_kind: str = "afterok"
    # run the ranks in a container (docs/containers.md); the batch host's steps (watchdog, requeue) stay outside
    container: ContainerConfig = field(default_factory=lambda: ContainerConfig())


@dataclass
class RequeueConfig:
    # how many times a run that reaches its time limit is checkpointed and put back in the queue
    max_timeouts: int = 3
    # the same for preemptions; null: without limit
    max_preemptions: Optional[int] = None
    # how many nodes a run may leave out of its requeues after a failure that belongs to one node (a failed
    # health check); at most the partition's nodes minus the job's. null: as many as the partition can spare
    max_excluded_nodes: Optional[int] = None


@dataclass
class HealthConfig:
    # a quick check of each rank's node at start (device visible, a small matmul, one all-reduce); a failing node
    # is named, excluded and the job requeued (requeue.max_excluded_nodes)
    check: bool = True
    # TEST ONLY: the check fails on this node
    test_only_fail_on_node: Optional[str] = None


@dataclass
class WatchdogConfig:
    # seconds without progress in training or validation (no optimizer step, no phase change on some rank) after
    # which the attempt counts as hung: every rank's stack is captured, the attempt ends and is requeued.
    # null: no watchdog
    timeout_s: Optional[float] = 600
    # the same while ranks start up (imports, data, model, process group) and run their first step
    startup_timeout_s: int = 1200
    # the same during a checkpoint save
    checkpoint_timeout_s: int = 1200
    # requeue a hung attempt (it resumes from the run's latest checkpoint); a second hang at the same step ends
    # the run instead
    requeue: bool = True
    # TEST ONLY: make this rank block (sleep forever) in phase test_only_hang_in ("step", "checkpoint",
    # "startup") at test_only_hang_at_step, in the first test_only_hang_attempts attempts. null: never
    test_only_hang_rank: Optional[int] = None
    test_only_hang_in: str = "step"
    test_only_hang_at_step: int = 1
    test_only_hang_attempts: int = 1


@dataclass
class SweepConfig:
    # `zerorun -m KEY=A,B ...` (docs/sweeps.md): how many members run at once; on Slurm the array's throttle
    # (sbatch --array=0-N%parallelism, per array when a sweep is split), on cluster=local processes at once
    parallelism: int = 256
    # the sweep's id; its folder is runs_dir/name/sweep-ID. null: a hash of the command line's overrides, so the
    # same command finds the same sweep (and submits nothing new); set it to start a new sweep of the same grid
    id: Optional[str] = None
    # a sweep folder that already holds a record: "none" submits nothing new; "failed" resubmits the members that
    # failed, timed out for good or were cancelled (the same as `zerorun resubmit SWEEP_DIR --failed`)
    resubmit: str = "none"
    # the metric `zerorun status` and `zerorun report` rank members by (a key of each member's metrics.json),
    # and whether lower ("min") or higher ("max") is better
    metric: str = "val_loss"
    mode: str = "min"


@dataclass
class EvalConfig:
    """The `eval` section of an evaluation job's config (written by `zerorun eval`, never composed by Hydra):
    which run's final checkpoint it evaluates, on which split. A training run's config has no such section."""

    # the run folder evaluated, or the sweep folder whose best member is evaluated (best=true)
    of: str = MISSING
    # the data set split evaluated (becomes dataset.validation_split): "validation", "test", ...
    split: str = "validation"
    # of is a sweep folder: evaluate its best member by sweep.metric / sweep.mode, chosen when the job runs
    best: bool = False
    # the command line's overrides, applied again to the chosen member's config when best=true
    overrides: List[str] = field(default_factory=list)


@dataclass
class SiteConfig:
    # the site profile chosen with site=NAME (set by the profile's loader, configs/sites.py); null: none
    name: Optional[str] = None


@dataclass
class ZerorunConfig:
    task: TaskConfig = MISSING
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    cluster: ClusterConfig = MISSING
    requeue: RequeueConfig = field(default_factory=RequeueConfig)
    # the node health check at rank start (trainer_core/health.py)
    health: HealthConfig = field(default_factory=HealthConfig)
    # the hang watchdog (jobs/watchdog.py): how long without progress, per phase, counts as a hang
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # settings of a sweep (`-m`): parallelism, id, what a second submission does, the metric that ranks members
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # the site profile (site=NAME: ~/.config/zerorun/sites/NAME.yaml or a shipped one; docs/sites.md); its
    # probe (`zerorun site probe NAME`) is what the preflight checks against, without asking Slurm at submit
    site: SiteConfig = field(default_factory=SiteConfig)
    seed: int = 42
    # the run's name; the run folder is runs_dir/name/run_id and stays the same for every attempt of the run
    name: str = "${task.name}"
    # made once per submission (time plus a random suffix, so two runs started in one second never share a folder)
    run_id: str = "${zerorun_run_id:}"
    run_dir: str = "${cluster.runs_dir}/${name}/${run_id}"
    # render and print everything that would run or be submitted, then stop
    dry_run: bool = False
    # a run folder to continue from its latest checkpoint
    resume: Optional[str] = None


def new_run_id() -> str:
    import secrets
    import time

    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)


def register() -> None:
    """Register the schema with Hydra's ConfigStore and the run-id resolver (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    # cached: every read in one process (Hydra's run dir, the saved config) sees the same id
    OmegaConf.register_new_resolver("zerorun_run_id", new_run_id, use_cache=True, replace=True)
    # the first value that is set: hydra.run.dir is the resumed run's folder when there is one
    OmegaConf.register_new_resolver("zerorun_or", lambda a, b: a if a not in (None, "") else b, replace=True)
    ConfigStore.instance().store(name="zerorun_schema", node=ZerorunConfig)
