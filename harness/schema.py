"""What harness writes to MLflow and Optuna: every metric, param, tag and attr name, when it is logged, what it means.

The contract: every name the harness writes or reads is a constant (or a template function) of this module, declared
once, with its meaning in one of the tables below (EPOCH, FINAL, ..., TAGS, INPUT_TAGS, MODEL_VERSION_TAGS, the Optuna
attrs). Writers (tracking, runs, trial, launch, closing, sustain, records, champion, bookkeeping, units) and readers (results,
numbers, sustain_numbers, the report) import the constants, so a misspelled name is an AttributeError at import or
first use; readers that take a name from elsewhere go through tag() / metric() / param() / attr(), which raise
UndeclaredName for a name no table declares (where a bare `.get` would return None). tests/test_schema.py fails on a
`"harness.` string, a declared metric name or an Optuna attr name written as a literal in harness/ outside this file,
and runs a study and a sustain study to check that every name in the store is declared below.
A name with `{...}` is a template: `shift/{shift}/acc` stands for shift/gaussian_noise/acc and so on; its function
(shift_key, family_key, version_tag, ...) builds the instances.

When (the `step` of a metric):
  epoch     one value per training epoch, step = epoch (0-based)
  final     once at the end of the run, step 0
  severity  one value per shift severity, step = severity (1-5; a set or domain, e.g. label shift: step 1)
  class     one value per class, step = class index
  period    one value per stream period, step = period (0-based), harness.sustain only
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from harness import strategies

# =========================================================================================================== metrics
# ------------------------------------------------------------------------------------------- trial runs
TRAIN_LOSS, VAL_ACC, VAL_LOSS = "train_loss", "val_acc", "val_loss"
FROZEN_LAYERS, LR, RSS_MB = "frozen_layers", "lr", "rss_mb"  # lr is also a param (strategies.PARAMS, POLICY_PARAMS)
EPOCH = {
    TRAIN_LOSS: "mean cross-entropy over the epoch's training batches",
    VAL_ACC: "accuracy on the clean validation split after the epoch",
    VAL_LOSS: "mean cross-entropy on the clean validation split after the epoch",
    FROZEN_LAYERS: "number of layer groups frozen during the epoch (the head counts when surgical leaves it frozen)",
    LR: "learning rate at the end of the epoch (after the schedule)",
    RSS_MB: "resident memory of the process after the epoch, MiB (must not grow across trials)",
}
# the learning curves among them, in EPOCH's order (rss_mb is a memory check, not a curve the report keeps)
LEARNING_CURVES = tuple(k for k in EPOCH if k != RSS_MB)

ID_ACC, ID_NLL, ID_ECE, ID_BRIER = "id_acc", "id_nll", "id_ece", "id_brier"
OOD_ACC_MEAN, OOD_ACC_WORST = "ood_acc_mean", "ood_acc_worst"
OOD_ECE_MEAN, OOD_NLL_MEAN = "ood_ece_mean", "ood_nll_mean"  # ood_mean(what)
CLEAN_SUBSET_ACC, CLEAN_SUBSET_ECE = "clean_subset_acc", "clean_subset_ece"
OOD_VAL_ACC, VAL_ACC_FINAL = "ood_val_acc", "val_acc_final"
MCE, RELATIVE_MCE = "mce", "relative_mce"
MCE_BENCHMARK, RELATIVE_MCE_BENCHMARK = "mce_benchmark", "relative_mce_benchmark"
MCE_BENCHMARK_FILES, RELATIVE_MCE_BENCHMARK_FILES = "mce_benchmark_files", "relative_mce_benchmark_files"
TRAIN_SECONDS, EVAL_SECONDS, PEAK_RSS_MB, GPU_PEAK_MB = "train_seconds", "eval_seconds", "peak_rss_mb", "gpu_peak_mb"
LABEL_SHIFT_BALANCED_ACC, LABEL_SHIFT_ACC_BBSE = "label_shift/balanced_acc", "label_shift/acc_bbse_corrected"
LABEL_SHIFT_PRIOR_L1_ERROR, LABEL_SHIFT_W_SQ_ERROR = "label_shift/prior_l1_error", "label_shift/w_sq_error"
FAMILY_ACC = "ood_acc/{family}"  # family_key(family)
# shift_key(shift, what)
SHIFT_ACC, SHIFT_ECE, SHIFT_NLL = "shift/{shift}/acc", "shift/{shift}/ece", "shift/{shift}/nll"
SHIFT_CE, SHIFT_RCE = "shift/{shift}/ce", "shift/{shift}/rce"
# per-image correctness of a trial or replicate run (artifact, JSON): {"clean": "0110...", "shifts": {name: {sev: ...}}},
# one character per image of the shifted test sets' fixed subset, the same images at every severity
CORRECT_ARTIFACT = "correct.json"
FINAL = {
    ID_ACC: "accuracy on the clean test split",
    ID_NLL: "mean negative log-likelihood on the clean test split",
    ID_ECE: "expected calibration error (15 bins) on the clean test split",
    ID_BRIER: "Brier score on the clean test split",
    OOD_ACC_MEAN: "mean over held-out test shifts of each shift's accuracy averaged over its severities",
    OOD_ACC_WORST: "the worst held-out test shift's accuracy (averaged over its severities)",
    OOD_ECE_MEAN: "ECE averaged over every test shift and severity",
    OOD_NLL_MEAN: "NLL averaged over every test shift and severity",
    CLEAN_SUBSET_ACC: "accuracy on the clean images of the shifted test sets (the same subset as every severity)",
    CLEAN_SUBSET_ECE: "ECE on the clean images of the shifted test sets",
    OOD_VAL_ACC: "mean accuracy on the selection shifts of the validation split (the only shifts selection reads)",
    VAL_ACC_FINAL: "val_acc after the last epoch",
    MCE_BENCHMARK: "mCE over CIFAR-10-C's 15 benchmark corruptions (shifts.BENCHMARK); only when all 15 are test shifts",
    RELATIVE_MCE_BENCHMARK: "relative mCE over the 15 benchmark corruptions; only when all 15 are test shifts",
    MCE_BENCHMARK_FILES: "mCE over the 15 benchmark corruptions read from shifts.files (c10c.<corruption>)",
    RELATIVE_MCE_BENCHMARK_FILES: "relative mCE over the 15 benchmark corruptions read from shifts.files",
    MCE: "corruption error pooled over the test corruptions: sum_c sum_s E / sum_c sum_s E_ref (reference: see ce)",
    RELATIVE_MCE: "relative corruption error pooled over the test corruptions (clean error of the same images "
                  "subtracted): sum_c sum_s (E - E_clean) / sum_c sum_s (E_ref - E_ref_clean)",
    TRAIN_SECONDS: "wall seconds of the training epochs",
    EVAL_SECONDS: "wall seconds of the evaluation on the clean test split and every shift",
    PEAK_RSS_MB: "peak resident memory of the process, MiB",
    GPU_PEAK_MB: "peak CUDA memory allocated during the trial, MiB (CUDA only)",
    LABEL_SHIFT_BALANCED_ACC: "balanced accuracy on the prior-shifted test set",
    LABEL_SHIFT_ACC_BBSE: "accuracy after BBSE reweighting (Lipton et al. 2018)",
    LABEL_SHIFT_PRIOR_L1_ERROR: "L1 error of the BBSE class-prior estimate",
    LABEL_SHIFT_W_SQ_ERROR: "squared error of the BBSE importance weights",
    FAMILY_ACC: "mean test-shift accuracy of one shift family (noise, blur, weather, digital, geometric, ...)",
    SHIFT_CE: "corruption error of one test corruption: sum of errors over severities / the reference's; the "
              "reference is the tuned full fine-tuning baseline (tag harness.ce_reference: its run id)",
    SHIFT_RCE: "relative corruption error of one test corruption (clean error subtracted)",
}
# the clean test split's summary (metrics.summarize: acc, nll, ece, brier) as trial.test_metrics logs it: id_key(what)
ID_METRICS = {"acc": ID_ACC, "nll": ID_NLL, "ece": ID_ECE, "brier": ID_BRIER}
# the OOD means of the test shifts' calibration (trial.test_metrics: ood_mean(what))
OOD_MEANS = {"ece": OOD_ECE_MEAN, "nll": OOD_NLL_MEAN}
# the pooled corruption errors (corruption_error.corruption_errors): over the test corruptions, over CIFAR-10-C's 15
# (shifts.BENCHMARK) and over shifts.files' c10c.<corruption> sets: (mCE, relative mCE) of each pool
CE_POOLS = {"test": (MCE, RELATIVE_MCE), "benchmark": (MCE_BENCHMARK, RELATIVE_MCE_BENCHMARK),
            "benchmark_files": (MCE_BENCHMARK_FILES, RELATIVE_MCE_BENCHMARK_FILES)}

SEVERITY = {
    SHIFT_ACC: "accuracy on one shift at each severity (selection shifts on validation, test shifts on test)",
    SHIFT_ECE: "ECE on one test shift at each severity",
    SHIFT_NLL: "NLL on one test shift at each severity",
}
# study.objective -> the metric the objective's value is (the report's objective column, the runs view's order)
OBJECTIVE_METRICS = {VAL_ACC: VAL_ACC_FINAL, OOD_VAL_ACC: OOD_VAL_ACC}
# shift_key's `what`: the per-severity curves and the final corruption errors of one shift
SHIFT_METRICS = {"acc": SHIFT_ACC, "ece": SHIFT_ECE, "nll": SHIFT_NLL, "ce": SHIFT_CE, "rce": SHIFT_RCE}

LABEL_SHIFT_PRIOR_TRUE, LABEL_SHIFT_PRIOR_BBSE = "label_shift/prior_true", "label_shift/prior_bbse"
CLASS = {
    LABEL_SHIFT_PRIOR_TRUE: "the label-shifted test set's class prior",
    LABEL_SHIFT_PRIOR_BBSE: "BBSE's estimate of that prior",
}
LABEL_PRIORS = {"true": LABEL_SHIFT_PRIOR_TRUE, "bbse": LABEL_SHIFT_PRIOR_BBSE}  # label_prior(which)

# ----------------------------------------------------------------------------------------- parent runs
PRETRAIN_LOSS, PRETRAIN_SOURCE_VAL_ACC = "pretrain_loss", "pretrain_source_val_acc"
PRETRAIN_EPOCH = {
    PRETRAIN_LOSS: "source-task pretraining loss per epoch (parent run)",
    PRETRAIN_SOURCE_VAL_ACC: "source-task validation accuracy per epoch (parent run)",
}

# ------------------------------------------------------------------------- harness.sustain policy runs
STREAM_ACC_MEAN, STREAM_ACC_WORST = "stream_acc_mean", "stream_acc_worst"
BWT, FORGETTING, FWT = "bwt", "forgetting", "fwt"
N_UPDATES, UPDATE_SECONDS, UPDATE_EXAMPLES = "n_updates", "update_seconds", "update_examples"
STREAM_FINAL = {
    STREAM_ACC_MEAN: "mean over periods of stream_acc",
    STREAM_ACC_WORST: "minimum over periods of stream_acc",
    BWT: "GEM backward transfer: 1/(T-1) sum_{i<T-1} (R[T-1][i] - R[i][i]); negative = forgetting",
    FORGETTING: "Chaudhry et al. 2018: 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l][i] - R[T-1][i])",
    FWT: "forward transfer against the never-updated deployed model (not GEM's random-init baseline): "
         "1/(T-1) sum_{i>=1} (R[i-1][i] - initial[i]), initial = the deployed model before any update",
    N_UPDATES: "number of update fine-tunes",
    UPDATE_SECONDS: "wall seconds of the update fine-tunes",
    UPDATE_EXAMPLES: "images x epochs trained by the updates",
}
# a policy run's accuracy matrix (artifact, JSON): R, initial, the PERIOD curves, the periods' recipes, the policy, the
# seed, the STREAM_FINAL metrics and their definitions
MATRIX_ARTIFACT = "accuracy_matrix.json"
STREAM_ACC, LABELLED_ACC, UPDATED = "stream_acc", "labelled_acc", "updated"
MONITOR, MONITOR_THRESHOLD = "monitor", "monitor_threshold"
PERIOD = {
    STREAM_ACC: "R[t-1][t] (initial[0] at t = 0): the model in service meets period t, before any update on it",
    LABELLED_ACC: "accuracy on period t's labelled batch before any update on it, counting only the images no "
                  "update has trained on (the accuracy monitor's input); absent when every image was trained on",
    UPDATED: "1 when the policy updated the model at period t",
    MONITOR: "the monitor's statistic at period t (drop in points, ROC AUC or MMD^2; triggered policies)",
    MONITOR_THRESHOLD: "what the monitor was compared with at period t (triggered policies)",
}

# ------------------------------------------------------------------- system metrics (trial runs, sampled)
# step = sample index, timestamp = when it was taken; MLflow's names, so its UI's system-metrics tab shows them.
# Sampled every study.system_metrics seconds on a thread, plus one sample when the run stops (tracking.SystemSampler)
SYSTEM_CPU_PERCENT = "system/cpu_utilization_percentage"
SYSTEM_MEMORY_MB = "system/system_memory_usage_megabytes"
SYSTEM_MEMORY_PERCENT = "system/system_memory_usage_percentage"
SYSTEM_PROCESS_RSS_MB = "system/process_rss_megabytes"
SYSTEM_GPU_PERCENT = "system/gpu_0_utilization_percentage"
SYSTEM_GPU_MEMORY_MB = "system/gpu_0_memory_usage_megabytes"
SYSTEM_GPU_MEMORY_PERCENT = "system/gpu_0_memory_usage_percentage"
SYSTEM = {
    SYSTEM_CPU_PERCENT: "CPU utilization of the machine since the previous sample, %",
    SYSTEM_MEMORY_MB: "memory in use on the machine (total - available), MiB",
    SYSTEM_MEMORY_PERCENT: "memory in use on the machine, %",
    SYSTEM_PROCESS_RSS_MB: "resident memory of the trial's process, MiB",
    SYSTEM_GPU_PERCENT: "GPU 0 utilization (NVML, through torch.cuda.utilization), % (CUDA only)",
    SYSTEM_GPU_MEMORY_MB: "GPU 0 memory in use (all processes), MiB (CUDA only)",
    SYSTEM_GPU_MEMORY_PERCENT: "GPU 0 memory in use, % (CUDA only)",
}
_SYSTEM_PREFIX = "system/"  # MLflow's namespace of system metrics (is_system)

METRICS = {**EPOCH, **FINAL, **SEVERITY, **CLASS, **PRETRAIN_EPOCH, **STREAM_FINAL, **PERIOD, **SYSTEM}

# ============================================================================================================ params
TRIAL_PARAMS = {name: p.meaning for name, p in strategies.PARAMS.items()}  # what each strategy's runs log
PARAM_POLICY, PARAM_K, PARAM_THRESHOLD, PARAM_WINDOW = "policy", "k", "threshold", "window"
PARAM_FREEZE_LAYERS, PARAM_EPOCHS, PARAM_REPLAY = "freeze_layers", "epochs", "replay"
PARAM_STREAM, PARAM_SHIFT, PARAM_PERIODS, PARAM_SEED = "stream", "shift", "periods", "seed"
POLICY_PARAMS = {
    PARAM_POLICY: "update policy (never, every, accuracy, embedding, mmd)",
    PARAM_K: "every: update every k periods", PARAM_THRESHOLD: "triggered policies: the monitor's threshold",
    PARAM_WINDOW: "accuracy policy: labelled periods averaged", LR: "update learning rate",
    PARAM_FREEZE_LAYERS: "groups frozen during updates", PARAM_EPOCHS: "epochs per update",
    PARAM_REPLAY: "previous labelled batches replayed in an update", PARAM_STREAM: "stream kind",
    PARAM_SHIFT: "the stream's shift", PARAM_PERIODS: "T", PARAM_SEED: "replicate seed",
}
# the parent run's params are the resolved config, flat: "<section>.<key>" (config.to_dict; config declares each key)
PARENT_PARAM = re.compile(r"^[a-z_]+\.[a-z_0-9]+$")

# ============================================================================================================== tags
# every run
TAG_ROLE = "harness.role"
TAG_OPTUNA_STUDY, TAG_TRIAL_NUMBER = "optuna.study_name", "optuna.trial_number"
TAG_PARENT_RUN, TAG_RUN_NAME, TAG_NOTE = "mlflow.parentRunId", "mlflow.runName", "mlflow.note.content"
# trial runs
TAG_BASELINE, TAG_CE_REFERENCE, TAG_REPLICATE_OF = "harness.baseline", "harness.ce_reference", "harness.replicate_of"
TAG_FAIL_REASON, TAG_FAILED_EPOCH = "harness.fail_reason", "harness.failed_epoch"
TAG_PRUNED_EPOCH, TAG_PRUNED_REASON = "harness.pruned_epoch", "harness.pruned_reason"
TAG_LOGGING_ERROR = "harness.logging_error"
# study parent
TAG_GIT_SHA, TAG_DEVICE = "harness.git_sha", "harness.device"
TAG_SAMPLER, TAG_PRUNER = "harness.sampler", "harness.pruner"
TAG_OBJECTIVE, TAG_SEED, TAG_N_TRIALS_TARGET = "harness.objective", "harness.seed", "harness.n_trials_target"
TAG_OPTUNA_STORAGE = "harness.optuna_storage"
TAG_SHIFTS_SELECTION, TAG_SHIFTS_TEST, TAG_SHIFTS_FAMILY = \
    "harness.shifts.selection", "harness.shifts.test", "harness.shifts.family"
TAG_SHIFT_SUITE, TAG_DATA, TAG_TARGET_DOMAIN = "harness.shift_suite", "harness.data", "harness.target_domain"
TAG_N_TEST, TAG_N_SHIFT_EVAL, TAG_PRETRAIN = "harness.n_test", "harness.n_shift_eval", "harness.pretrain"
TAG_BEST_TRIAL, TAG_BEST_RUN_ID, TAG_REPLICATES = "harness.best_trial", "harness.best_run_id", "harness.replicates"
TAG_VERSION = "harness.version.{package}"  # version_tag(package); version_package(tag) reads the package back
TAG_STUDY_NAME = "harness.study_name"  # an experiment tag
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment tag
# sustain parent and policy runs
TAG_STREAM, TAG_STREAM_SHIFT, TAG_POOL_FRACTION = "harness.stream", "harness.stream_shift", "harness.pool_fraction"
TAG_POLICIES, TAG_SEEDS, TAG_SEARCH, TAG_FAILED_RUNS = \
    "harness.policies", "harness.seeds", "harness.search", "harness.failed_runs"
TAG_POLICY, TAG_SUSTAIN_KEY, TAG_UPDATE_PERIODS = "harness.policy", "harness.sustain_key", "harness.update_periods"
TAG_THRESHOLD_USED, TAG_SEARCH_TRIAL = "harness.threshold_used", "harness.search_trial"
# MLflow-native records
TAG_REGISTERED_MODEL, TAG_MODEL_VERSION = "harness.registered_model", "harness.model_version"

# the values of harness.role
ROLE_STUDY, ROLE_SUSTAIN, ROLE_TRIAL, ROLE_REPLICATE, ROLE_POLICY = \
    "study", "sustain", "trial", "replicate", "sustain_policy"
ROLES = {ROLE_STUDY: "a fine-tuning study's parent run", ROLE_SUSTAIN: "a harness.sustain study's parent run",
         ROLE_TRIAL: "a trial (child run)", ROLE_REPLICATE: "a seed replicate of a trial (child run)",
         ROLE_POLICY: "one policy on one seed's stream (child run of a sustain parent)"}

TAGS = {
    # every run
    TAG_ROLE: "study | sustain (parent runs), trial | replicate | sustain_policy (child runs): ROLES",
    TAG_OPTUNA_STUDY: "the Optuna study (= MLflow experiment name)",
    TAG_TRIAL_NUMBER: "the Optuna trial number of a child run (-1 for sustain policy runs outside search)",
    TAG_PARENT_RUN: "the parent run of a child run",
    TAG_RUN_NAME: "run name: trial-NNNN, policy-<label>-seed<s>, or the study name",
    # trial runs
    TAG_BASELINE: f"{' | '.join(strategies.BASELINES)} on the enqueued baselines (and their replicates)",
    TAG_CE_REFERENCE: "run id of the corruption-error reference (the tuned full FT baseline) the CE metrics use",
    TAG_REPLICATE_OF: "replicate runs: the Optuna trial number whose configuration they re-run",
    TAG_FAIL_REASON: "why a run FAILED",
    TAG_FAILED_EPOCH: "epoch at which a trial failed (-1: before training)",
    TAG_PRUNED_EPOCH: "epoch at which a trial was pruned",
    TAG_PRUNED_REASON: "the pruner's reason",
    TAG_LOGGING_ERROR: "an async metric batch that failed (the run still ended)",
    # study parent
    TAG_GIT_SHA: "git commit of the harness (-dirty with local changes)",
    TAG_DEVICE: "the resolved device",
    TAG_SAMPLER: "Optuna sampler", TAG_PRUNER: "Optuna pruner (none in multi-objective studies)",
    TAG_OBJECTIVE: "study objective", TAG_SEED: "study seed (policy and replicate runs: the run's training seed)",
    TAG_N_TRIALS_TARGET: "the requested number of finished trials",
    TAG_OPTUNA_STORAGE: "Optuna storage URL, password redacted",
    TAG_SHIFTS_SELECTION: "selection shifts", TAG_SHIFTS_TEST: "held-out test shifts",
    TAG_SHIFTS_FAMILY: "shift -> family, comma-separated name:family",
    TAG_SHIFT_SUITE: "cache key of the shifted sets", TAG_DATA: "cache key of the data",
    TAG_TARGET_DOMAIN: "the target domain fine-tuned and tested on: data.target_shift as name:severity, "
                       "comma-separated (a mixture), or none (the clean target task)",
    TAG_N_TEST: "clean test images (sample size of id_acc)",
    TAG_N_SHIFT_EVAL: "images per shifted test set (sample size of shift accuracies)",
    TAG_PRETRAIN: "cache key of the source-task pretraining",
    TAG_BEST_TRIAL: "number of the best completed trial", TAG_BEST_RUN_ID: "its run id",
    TAG_REPLICATES: "seeds of the replicate runs, comma-separated (the study seed's run is the trial itself)",
    TAG_VERSION: "package versions (torch, optuna, mlflow, python)",
    TAG_STUDY_NAME: "experiment tag: the experiment holds a harness study",
    TAG_EXPERIMENT_KIND: "experiment tag: MLflow's kind of experiment (the UI opens a fine-tuning one on its runs)",
    # sustain parent and policy runs
    TAG_STREAM: "stream kind", TAG_STREAM_SHIFT: "the stream's shift",
    TAG_POOL_FRACTION: "share of the train split held out as the stream pool",
    TAG_POLICIES: "policies replayed", TAG_SEEDS: "replicate seeds",
    TAG_SEARCH: "true when Optuna searches the policy", TAG_FAILED_RUNS: "policy runs that failed",
    TAG_POLICY: "policy label (never, every3, accuracy, ...)",
    TAG_SUSTAIN_KEY: "hash of everything that determines a policy run's result (reused when equal)",
    TAG_UPDATE_PERIODS: "periods at which the policy updated, comma-separated",
    TAG_THRESHOLD_USED: "the distinct monitor thresholds used",
    TAG_SEARCH_TRIAL: "a searched policy reported on the reported seeds: the Optuna trial that selected it on the "
                      "search seeds (reported seed + 10000)",
    # MLflow-native records (records.py, champion.py)
    TAG_NOTE: "the run's description in the MLflow UI: a trial's strategy in words, the study's summary",
    TAG_REGISTERED_MODEL: "study parent: the registered model its selected trial's model is a version of",
    TAG_MODEL_VERSION: "study parent: that model version (alias champion); policy runs: their last version",
}

# Input tags of the MLflow dataset inputs (records.dataset_inputs)
INPUT_CONTEXT = "mlflow.data.context"
INPUT_SPLIT, INPUT_SHIFT, INPUT_SEVERITY = "harness.split", "harness.shift", "harness.severity"
INPUT_SEED, INPUT_IMAGES, INPUT_TARGET_SHIFT = "harness.shift_seed", "harness.images", "harness.target_shift"
INPUT_TAGS = {
    INPUT_CONTEXT: "MLflow's role of the dataset in the run (train, val, test, selection, ...)",
    INPUT_SPLIT: "the split the images come from (train, val, test, subpop)",
    INPUT_SHIFT: "shifted evaluation sets: the shift", INPUT_SEVERITY: "shifted evaluation sets: the severity",
    INPUT_SEED: "shifted evaluation sets: shifts.seed (each set is built from it, the shift and the severity)",
    INPUT_IMAGES: "number of images", INPUT_TARGET_SHIFT: "the target domain's shift (data.target_shift) on the clean "
                                                          "splits; the label-shift test set's class-prior distribution",
}

# Tags of registered model versions (champion.py: the selected trial; sustain: one version per update)
MV_STUDY, MV_TRIAL, MV_RUN_NAME, MV_STRATEGY = "harness.study", "harness.trial", "harness.run_name", "harness.strategy"
MV_PERIOD, MV_TRIGGER = "harness.period", "harness.trigger"
MODEL_VERSION_TAGS = {
    MV_STUDY: "the study (experiment) the model comes from", MV_TRIAL: "its Optuna trial number",
    MV_RUN_NAME: "the MLflow run that trained it", MV_STRATEGY: "its fine-tuning strategy in words",
    MV_PERIOD: "sustain: the stream period whose update produced it (-1: the deployed model)",
    TAG_POLICY: "sustain: the policy", TAG_SEED: "sustain: the replicate seed",
    MV_TRIGGER: "sustain: why the policy updated (deployed, schedule, or the monitor's statistic)",
    "{metric}": "the trial's final metrics (id_acc, ood_acc_mean, ...), as logged on its run",
}
# Tags of registered models (tracking.register_model creates them)
RM_REGISTERED_BY = "harness.registered_by"
REGISTERED_MODEL_TAGS = {RM_REGISTERED_BY: "harness: the registered model was created by the harness"}
ALIAS_CHAMPION, ALIAS_PRODUCTION = "champion", "production"
REGISTERED_MODEL_ALIASES = {ALIAS_CHAMPION: "the selected trial of the latest study run",
                            ALIAS_PRODUCTION: "sustain: the policy's model in service now"}

# ===================================================================================================== Optuna attrs
# Not MLflow: the attrs the harness keeps on Optuna trials and studies, listed so every name lives here.
# Trial system attrs (bookkeeping: the process running a trial, recover_dead's evidence; Optuna's own place for a
# failed trial's reason)
ATTR_HOST, ATTR_PID, ATTR_PID_START = "harness.host", "harness.pid", "harness.pid_start"
ATTR_PID_TICKS, ATTR_WORKER, ATTR_FAIL_REASON = "harness.pid_ticks", "harness.worker", "fail_reason"
IDENTITY_ATTRS = {
    ATTR_HOST: "the host of the process running the trial (or holding a claim)",
    ATTR_PID: "its pid",
    ATTR_PID_START: "its start time, seconds since the epoch (psutil; moves with the wall clock)",
    ATTR_PID_TICKS: "its start time in clock ticks since boot (/proc/PID/stat; Linux only, exact)",
}
TRIAL_SYSTEM_ATTRS = {
    **IDENTITY_ATTRS,
    ATTR_WORKER: "the worker index (--workers) of that process",
    ATTR_FAIL_REASON: "why the trial FAILED (a dead worker, an exception, another process that finished it)",
}
# Trial user attrs (trial.py, study.py, sustain/search.py): what later trials and the end of the study read
ATTR_BASELINE, ATTR_SURGICAL_SWEEP, ATTR_RUN_ID = "baseline", "surgical_sweep", "mlflow_run_id"
ATTR_CE_REFERENCE, ATTR_SHIFT_ACC, ATTR_PRUNED_EPOCH = "ce_reference", "shift_acc", "pruned_epoch"
ATTR_RUN_IDS, ATTR_SPEC = "mlflow_run_ids", "spec"
TRIAL_USER_ATTRS = {
    ATTR_BASELINE: "the baseline family of an enqueued baseline trial (tag harness.baseline's value)",
    ATTR_SURGICAL_SWEEP: "True on the trials search.surgical_sweep enqueued",
    ATTR_RUN_ID: "the trial's (or unit's) MLflow run id",
    ATTR_CE_REFERENCE: "the CE reference's run id the trial's corruption errors used (None before it was settled)",
    ATTR_SHIFT_ACC: "{shift: {severity: accuracy}} of the test corruptions: the CE reference's and backfill's input",
    ATTR_PRUNED_EPOCH: "the epoch at which the trial was pruned",
    ATTR_FAIL_REASON: "also a user attr: why the trial failed, as its run's harness.fail_reason says",
    ATTR_RUN_IDS: "sustain search: the MLflow run ids of the trial's policy runs (one per search seed)",
    ATTR_SPEC: "sustain search: the policy spec the trial replayed (the selected ones replay on the reported seeds)",
    "{metric}": "final metrics later trials read: id_acc, ood_acc_mean, val_acc_final, clean_subset_acc (trials); "
                "stream_acc_mean, n_updates, update_seconds, update_examples (sustain search, means over seeds)",
}
# User attrs of the units (trials of the companion study <name>:units, harness.units); they also carry
# mlflow_run_id and the trial system attrs
ATTR_UNIT_KIND, ATTR_UNIT_KEY, ATTR_UNIT_PAYLOAD = "unit_kind", "unit_key", "unit_payload"
UNIT_ATTRS = {
    ATTR_UNIT_KIND: "the unit's kind: names its runner (replicate)",
    ATTR_UNIT_KEY: "unique within the study, e.g. replicate:3:1",
    ATTR_UNIT_PAYLOAD: "what the runner needs, JSON",
}
# Study system attrs of a claim (a study named <study>:claim:<name>[#attempt], harness.units): its holder's
# identity (IDENTITY_ATTRS) and these
ATTR_CLAIMED_AT, ATTR_SEEN_UNNAMED, ATTR_DONE = "harness.claimed_at", "harness.seen_unnamed", "harness.done"
CLAIM_ATTRS = {
    ATTR_CLAIMED_AT: "when the holder took the claim, seconds since the epoch",
    ATTR_SEEN_UNNAMED: "when a process first saw the claim without a holder (its holder died naming itself)",
    ATTR_DONE: "True once the claim's work is done",
}

# The enqueued baselines (the values of tag harness.baseline) and how the report names them
BASELINES = {name: b.label for name, b in strategies.BASELINES.items()}


# ========================================================================================================== templates

def shift_key(shift: str, what: str) -> str:
    """shift/<name>/<what>: acc, ece, nll (step = severity), ce, rce (final); another `what` is UndeclaredName."""
    try:
        return SHIFT_METRICS[what].replace("{shift}", shift)
    except KeyError:
        raise UndeclaredName(f"shift/{{shift}}/{what} is not a declared metric (harness.schema.SHIFT_METRICS: "
                             f"{', '.join(SHIFT_METRICS)})") from None


def shift_parts(key: str) -> tuple[str, str] | None:
    """(shift, what) of a shift/<shift>/<what> metric name (a shift name holds no slash), None for any other name."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "shift" or not parts[1]:
        return None
    return parts[1], parts[2]


def is_severity(key: str) -> bool:
    """A per-severity curve (shift/<shift>/acc, ece, nll: SEVERITY), not a final value."""
    return any(p.match(key) for p in _SEVERITY_PATTERNS)


def family_key(family: str) -> str:
    """ood_acc/<family>: the mean test-shift accuracy of one shift family."""
    return FAMILY_ACC.replace("{family}", family)


def id_key(what: str) -> str:
    """id_<what> of the clean test split (acc, nll, ece, brier)."""
    return _declared_of(ID_METRICS, what, "id_{what}")


def ood_mean(what: str) -> str:
    """ood_<what>_mean of the test shifts (ece, nll)."""
    return _declared_of(OOD_MEANS, what, "ood_{what}_mean")


def label_prior(which: str) -> str:
    """label_shift/prior_<which> (true, bbse): a class prior, step = class index."""
    return _declared_of(LABEL_PRIORS, which, "label_shift/prior_{which}")


def version_tag(package: str) -> str:
    """harness.version.<package>."""
    return TAG_VERSION.replace("{package}", package)


def version_package(tag: str) -> str | None:
    """The package of a harness.version.<package> tag, None for any other tag."""
    prefix = TAG_VERSION.replace("{package}", "")
    return tag[len(prefix):] if tag.startswith(prefix) else None


def is_system(key: str) -> bool:
    """A system metric (system/*: MLflow's sampled CPU, memory and GPU series), not a result."""
    return key.startswith(_SYSTEM_PREFIX)


def _declared_of(table: dict, key: str, template: str) -> str:
    try:
        return table[key]
    except KeyError:
        raise UndeclaredName(f"{template} for {key!r} is not a declared metric (declared: {', '.join(table)})") \
            from None


# ====================================================================================================== declarations

def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{[a-z]+\\\}", "[^/]+", re.escape(template)) + "$")


_METRIC_PATTERNS = [_pattern(k) for k in METRICS]
_TAG_PATTERNS = [_pattern(k) for k in TAGS]
_SEVERITY_PATTERNS = [_pattern(k) for k in SEVERITY]


def is_metric(key: str) -> bool:
    return any(p.match(key) for p in _METRIC_PATTERNS)


def is_tag(key: str) -> bool:
    return any(p.match(key) for p in _TAG_PATTERNS)


def is_param(key: str) -> bool:
    return key in TRIAL_PARAMS or key in POLICY_PARAMS or bool(PARENT_PARAM.match(key))


def is_attr(key: str) -> bool:
    """An Optuna attr the harness keeps: a trial's system or user attr, a unit's, a claim's, or a final metric."""
    return (key in TRIAL_SYSTEM_ATTRS or key in TRIAL_USER_ATTRS or key in UNIT_ATTRS or key in CLAIM_ATTRS
            or is_metric(key))


def is_input_tag(key: str) -> bool:
    return key in INPUT_TAGS


def is_version_tag(key: str) -> bool:
    """A tag of a registered model version: MODEL_VERSION_TAGS, or a final metric ({metric})."""
    return key in MODEL_VERSION_TAGS or is_metric(key)


KINDS = {"metric": is_metric, "param": is_param, "tag": is_tag, "attr": is_attr, "input tag": is_input_tag,
         "model version tag": is_version_tag}


class UndeclaredName(Exception):
    """A name read or built that harness.schema does not declare: a misspelling, or a name to declare first. Not a
    LookupError, so that no reader's `except KeyError` turns it into a missing value."""


@functools.lru_cache(maxsize=4096)
def declared(kind: str, name: str) -> str:
    """`name` itself when it is a declared name of this kind (metric, param, tag, attr, input tag, model version tag);
    else raises UndeclaredName."""
    if not KINDS[kind](name):
        raise UndeclaredName(f"{name!r} is not a declared {kind} (harness.schema): misspelled, or declare it there")
    return name


def metric(metrics: Mapping, name: str, default=None):
    """metrics[name], or default when the run did not log it; raises UndeclaredName for a name schema does not
    declare (where `.get` would return None for a misspelling)."""
    return metrics.get(declared("metric", name), default)


def param(params: Mapping, name: str, default=None):
    """params[name] or default (a trial's, a policy run's, or a parent's <section>.<key>); UndeclaredName otherwise."""
    return params.get(declared("param", name), default)


def tag(tags: Mapping, name: str, default=None):
    """tags[name] or default; UndeclaredName for a tag schema does not declare."""
    return tags.get(declared("tag", name), default)


def attr(attrs: Mapping, name: str, default=None):
    """An Optuna trial's or study's attr, or default; UndeclaredName for an attr schema does not declare."""
    return attrs.get(declared("attr", name), default)
