"""The config's sections: every key with its default (frozen dataclasses, one per TOML table), and the choices some
keys take. The registries' own facts (strategies, shifts, models, data sources, augmentations, stream kinds) live with
them; harness.config.checks reads them there."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("val_acc", "ood_val_acc", "multi")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step")
DEVICES = ("auto", "cpu", "cuda")
STREAM_OBJECTIVES = ("penalized", "multi")


@dataclass(frozen=True)
class Study:
    name: str = "default"
    n_trials: int = 12  # target number of finished (completed or pruned) trials
    sampler: str = "tpe"
    pruner: str = "median"
    objective: str = "val_acc"
    seed: int = 0
    prune_warmup: int = 2  # epochs always run before pruning may act, counted from the unfreeze epoch too
    storage: str = ""  # Optuna storage URL; "" = sqlite file mlruns/optuna.db
    tracking_uri: str = ""  # MLflow tracking URI; "" = sqlite:///mlruns/mlflow.db
    device: str = "auto"
    workers: int = 1
    # torch CPU threads of each trial-running process; 0 = the cores this process may use divided among the workers
    # (harness.cores.thread_budget), as Ray Tune's CPUs per trial
    threads_per_worker: int = 0
    timeout: float = 0.0  # seconds; 0 = no limit
    report: bool = True
    # the selected trial's model is logged (pytorch flavour) and registered under this name with alias champion;
    # "" = the study name, "none" = not logged
    registered_model: str = ""
    system_metrics: float = 10.0  # seconds between system-metric samples of a trial (+ one at its end); 0 = off
    # full FT's lr sweep, enqueued before the search; LP-FT's is it times 0.1 (harness.baseline_grid); [] = 5 points
    # log-spaced on [10 x search.lr low, search.lr high] (default 0.01 ... 0.3; LP-FT 0.001 ... 0.03)
    baseline_lrs: list[float] = field(default_factory=list)
    # training seeds of every finalist (the search-time run is one; 1 = no replicate): the reported test numbers
    # use the other R - 1 (fresh) seeds, and a "beats" claim over seeds needs 3 a side, so 4 (issue 22)
    replicates: int = 4
    # the top-k trials by validation that are replicated (with each baseline family's best) and selected from on
    # their mean validation over seeds (harness.selection)
    finalists: int = 3
    # model soups (harness.soups): the weights of the top-k trials by validation kept in the cache while the search
    # runs (0 = off: no soups), their files bounded by keep_weights_mb MiB (resnet8: ~0.3 MiB a model)
    keep_weights: int = 8
    keep_weights_mb: float = 256.0
    # WiSE-FT curves of the selected trial and the baselines after the search (harness.wise): ~15-20% of the default
    # study's wall time (22 evaluations of the test suite)
    wise_ft: bool = True
    # labels per class at which the baselines and the selected configuration run again after the search (0 = all;
    # [] = none): learning curves (harness.budgets); budget_seeds seeds each, every seed its own labelled subset
    label_budgets: list[int] = field(default_factory=list)
    budget_seeds: int = 3


@dataclass(frozen=True)
class Data:
    source: str = "digits"
    path: str = ""  # root of an imagefolder or torchvision dataset
    download: bool = False  # torchvision datasets: only download when asked to
    image_size: int = 32  # 8x8 digits are upsampled to 32x32 so the CIFAR-10-C constants apply unchanged
    labels_per_class: int = 0  # target training labels per class; 0 = all
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    source_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # digits: pretraining task
    target_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])  # digits: fine-tuning task
    # digits: "classes" = one label per target digit; "parity" = odd/even (BREEDS-style superclasses), where
    # holdout_classes never appear in fine-tuning and form the subpopulation-shift test set
    task: str = "classes"
    holdout_classes: list[int] = field(default_factory=list)
    # a shifted target domain: "name:severity" (a string, or a list of them for a mixture) applied to the target
    # train/val/test images before fine-tuning (harness.target.target_domain); [] = the clean target task
    target_shift: list[str] = field(default_factory=list)
    # an imagefolder study whose uint8 images take more than this share of the RAM available at its start streams
    # them from a decoded copy on disk (harness.stream) instead of holding them in memory (issue 26)
    memory_budget: float = 0.5


@dataclass(frozen=True)
class Model:
    name: str = "resnet8"
    weights: str = "pretrain"  # "pretrain" | "none" | torchvision weights name | checkpoint path


@dataclass(frozen=True)
class Pretrain:
    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64


@dataclass(frozen=True)
class Train:
    epochs: int = 6
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    eval_batch_size: int = 64  # resnet8 on 2 CPU cores: 4400 img/s at 64, 2900-3300 at 128-256 (cache); GPUs want more
    compile: bool = False  # torch.compile each trial's model: pays off on a GPU for trials of minutes, not seconds
    # MiB of frozen-prefix outputs a worker keeps across its trials (harness.prefix); 0 = off. The default study's
    # largest prefixes (k = 1, 2: 16 x 32 x 32 floats, 64 KiB an image) take 45 MiB over its 537 training and 179
    # validation images, and 160 MiB more over the 2560 test and shifted images of a trial that never unfreezes:
    # every k of the default study fits in ~520 MiB
    cache_mb: int = 1024
    # "flip_crop": every training batch flipped left-right and shifted by up to 4 px (train.flip_crop), seeded per
    # trial; the training split's prefix is then recomputed every epoch (its images change), evaluation still cached
    augment: str = "none"
    # BatchNorm while fine-tuning (issue 23): "train" (the trained groups' BN statistics follow the target batches),
    # "eval" (the whole model stays in eval mode: every BN keeps its running statistics, as Lee et al. 2023's
    # train_mode: eval and Kumar et al.'s use_net_val_mode); search.bn may list both for the sampler
    bn: str = "train"
    # which epoch a trial reports: "last", or "best_val" (the epoch of the highest validation accuracy, its weights
    # restored before every final metric, as Lee et al. select (lr, epoch) on validation); per-epoch curves stay
    select_epoch: str = "last"


@dataclass(frozen=True)
class Search:
    lr: list[float] = field(default_factory=lambda: [1e-3, 0.3])  # log scale
    freeze_layers: list[int] = field(default_factory=lambda: [0, 4])
    unfreeze_epoch: list[int] = field(default_factory=lambda: [1, 6])  # e >= train.epochs means never
    # which groups train (harness.strategies.STRATEGIES): prefix (freeze_layers + unfreeze_epoch), surgical (one group,
    # tune_group, plus the head if tune_head), gradual (ULMFiT, one more group every gradual_every epochs). More than
    # one: a categorical `strategy` the sampler sees, each strategy's parameters sampled only for it
    strategy: list[str] = field(default_factory=lambda: ["prefix"])
    tune_head: list[bool] = field(default_factory=lambda: [True, False])  # surgical: choices for tune_head
    gradual_every: list[int] = field(default_factory=lambda: [1, 2])  # gradual: bounds, epochs between unfreezings
    # enqueue, after the baselines, one surgical trial per group (that group alone, head frozen) at the baselines'
    # lr: Lee et al.'s sweep of which block to tune (needs "surgical" in strategy and false in tune_head)
    surgical_sweep: bool = False
    # surgical: the choices, each a group name of the model or a union "a+b" ("stem+layer1": Lee et al.'s first
    # block; "head": the head alone, the pretrained head itself where the classes match); [] = one group at a time,
    # tune_group / tune_head as before. The surgical sweep runs each choice at each lr of the baseline grid
    surgical_groups: list[str] = field(default_factory=list)
    # BatchNorm modes the sampler chooses from (a categorical param bn) and the surgical sweep crosses with its choices;
    # [] = train.bn for every trial
    bn: list[str] = field(default_factory=list)
    # the surgical choices the sweep runs at every mode of search.bn (e.g. ["stem+layer1"]: Lee et al.'s BN contrast
    # for the first block, the other choices at train.bn only); [] = every choice at every mode
    bn_contrast: list[str] = field(default_factory=list)
    # after the search, a baseline family whose best lr (on validation) is on an edge of its grid gets the next point
    # beyond it, one grid step out, until its best is interior (harness.baseline_grid): "within" search.lr, "widen"
    # (the baselines may leave search.lr), or "off"
    extend_baseline_grid: str = "within"
    baseline_extensions: int = 2  # at most this many points added to each family's grid


@dataclass(frozen=True)
class Shifts:
    selection: list[str] = field(default_factory=lambda: ["gaussian_blur", "speckle_noise", "saturate"])
    test: list[str] = field(default_factory=lambda: ["gaussian_noise", "defocus_blur", "contrast", "rotate"])
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    label_alpha: float = 1.0  # Dirichlet concentration of the label-shifted test set; 0 = no label shift
    seed: int = 1234  # fixed: shifted sets are materialized once per study
    # images per shifted set: a fixed stratified subset of the split (0 = all); the clean test set is always whole.
    # 110 when a config leaves it out: a cap for large test splits (CIFAR-10's 10,000 test images would make 40
    # shifted sets 400,000 forward passes a trial). The default study sets 0, its whole 180-image test split
    # (studies/default.toml says why, measured: evaluation 30% of a run; 1.5-point paired half-widths need ~300).
    eval_images: int = 110
    # a folder in CIFAR-10-C's layout (<corruption>.npy: 5 severities x N uint8 HxWx3 images, severity-major, and
    # labels.npy): each file is a test shift "c10c.<corruption>" at shifts.severities, eval_images per severity;
    # "" = none. Alongside the simulated shifts, or instead of them with test = []
    files: str = ""
    # real domains (harness.domainfiles): a folder laid out as <domain>/<class>/<image> (DomainBed, WILDS), the class
    # folders the study's classes in its order; each domain a held-out test set domain.<name> (eval_images of it,
    # 0 = all), reported as its own family, never in ood_acc_mean. data.path = "<domains>/<name>" (imagefolder)
    # trains on that domain and evaluates the others (leave-one-domain-out); "" = none
    domains: str = ""


@dataclass(frozen=True)
class Stream:
    """`python -m harness.sustain`: a drifting stream of T periods and the re-fine-tuning policies replayed on it."""
    kind: str = "severity"  # severity | rotation | prior | recurring (see harness.sustain.STREAMS)
    shift: str = "contrast"  # corruption of the severity ramp; shift A of the recurring stream ("none" = clean)
    shift_b: str = "rotate"  # shift B of the recurring stream ("none" = clean)
    severity: int = 5  # top of the ramps (0 at period 0 up to this at the last); level of the recurring shifts
    phase: int = 2  # recurring: periods per phase, A A B B A A ...
    alpha: float = 0.3  # prior drift: Dirichlet concentration of the final class prior (priors start uniform)
    periods: int = 10  # T
    labelled: int = 50  # labelled images per period, drawn from the stream pool (a held-out part of the train split)
    eval_size: int = 150  # evaluation images per period, from the target test split
    pool_fraction: float = 0.5  # share of the train split held out (per class) as the stream pool; the rest trains
    # the deployed model, so no update or accuracy-monitor reference ever sees an image it was fine-tuned on
    seeds: list[int] = field(default_factory=list)  # replicate seeds (stream, head init, batch order); [] = study.seed
    policies: list[str] = field(default_factory=lambda: ["never", "every", "accuracy", "embedding"])
    k: int = 3  # every: update at periods k-1, 2k-1, ... (0-based), floor(T / k) updates
    drop: float = 10.0  # accuracy trigger: labelled-accuracy drop since the last update, points
    window: int = 1  # accuracy trigger: most recent labelled periods averaged
    auc: float = 0.55  # embedding trigger: domain-classifier ROC AUC above this fires (Evidently's default)
    mmd: float = 0.015  # mmd trigger: unbiased MMD^2 (RBF, median heuristic) above this fires (Evidently)
    lr: float = 0.01  # update fine-tune
    freeze_layers: int = 0  # update fine-tune: first k layer groups frozen
    epochs: int = 5  # update fine-tune: epochs over the period's batch plus replay
    replay: int = 2  # previous periods' labelled batches added to each update
    # register every policy run's models as versions of "<study>-<policy>-seed<s>" (deployed = version 1, one per
    # update, alias production on the current one); off by default: it costs about a second per version on CPU
    register_models: bool = False
    init_lr: float = 0.03  # the deployed model: pretrained, fully fine-tuned on the clean train split minus the pool,
    init_epochs: int = 40  # ... for at most this many epochs, early-stopped on clean validation accuracy:
    init_patience: int = 5  # stop after this many epochs without a better one; the best epoch's weights are kept
    control: bool = True  # also replay each policy on a no-drift control stream (same periods, budget, images)
    search: bool = False  # true: an Optuna study searches the policy instead of replaying `policies`
    objective: str = "penalized"  # penalized: mean acc - cost * update share; multi: (mean acc, update share), the
    # update share = update_examples / (T * labelled * (1 + replay) * epochs), 1 when every period updates
    cost: float = 0.1  # lambda of the penalized objective
    search_policies: list[str] = field(default_factory=lambda: ["every", "accuracy", "embedding"])
    search_k: list[int] = field(default_factory=lambda: [1, 5])
    search_drop: list[float] = field(default_factory=lambda: [2.0, 20.0])
    search_auc: list[float] = field(default_factory=lambda: [0.52, 0.8])
    search_mmd: list[float] = field(default_factory=lambda: [0.005, 0.1])  # log scale
    search_lr: list[float] = field(default_factory=lambda: [1e-3, 0.1])  # log scale
    search_freeze_layers: list[int] = field(default_factory=lambda: [0, 4])


@dataclass(frozen=True)
class Config:
    study: Study = field(default_factory=Study)
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    pretrain: Pretrain = field(default_factory=Pretrain)
    train: Train = field(default_factory=Train)
    search: Search = field(default_factory=Search)
    shifts: Shifts = field(default_factory=Shifts)
    stream: Stream = field(default_factory=Stream)


# section name -> its dataclass, in file order
SECTIONS = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}
