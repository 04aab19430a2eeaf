"""What harness writes to MLflow: every metric, param and tag name, when it is logged, and what it means.

The writer (tracking, trial, launch, sustain), the reader (results) and the report import their names from here;
tests/test_schema.py runs a study and a sustain study and checks that every name in the store is declared below.
A name with `{...}` is a template: `shift/{shift}/acc` stands for shift/gaussian_noise/acc and so on.

When (the `step` of a metric):
  epoch     one value per training epoch, step = epoch (0-based)
  final     once at the end of the run, step 0
  severity  one value per shift severity, step = severity (1-5; a set or domain, e.g. label shift: step 1)
  class     one value per class, step = class index
  period    one value per stream period, step = period (0-based), harness.sustain only
"""

from __future__ import annotations

import re

from harness import strategies

# ------------------------------------------------------------------------------------------- trial runs
EPOCH = {
    "train_loss": "mean cross-entropy over the epoch's training batches",
    "val_acc": "accuracy on the clean validation split after the epoch",
    "val_loss": "mean cross-entropy on the clean validation split after the epoch",
    "frozen_layers": "number of layer groups frozen during the epoch (the head counts when surgical leaves it frozen)",
    "lr": "learning rate at the end of the epoch (after the schedule)",
    "rss_mb": "resident memory of the process after the epoch, MiB (must not grow across trials)",
}
# the learning curves among them, in EPOCH's order (rss_mb is a memory check, not a curve the report keeps)
LEARNING_CURVES = tuple(k for k in EPOCH if k != "rss_mb")

ID_ACC, OOD_ACC_MEAN, OOD_ACC_WORST, OOD_VAL_ACC = "id_acc", "ood_acc_mean", "ood_acc_worst", "ood_val_acc"
VAL_ACC_FINAL = "val_acc_final"
CLEAN_SUBSET_ACC, CLEAN_SUBSET_ECE = "clean_subset_acc", "clean_subset_ece"
# per-image correctness of a trial or replicate run (artifact, JSON): {"clean": "0110...", "shifts": {name: {sev: ...}}},
# one character per image of the shifted test sets' fixed subset, the same images at every severity
CORRECT_ARTIFACT = "correct.json"
FINAL = {
    ID_ACC: "accuracy on the clean test split",
    "id_nll": "mean negative log-likelihood on the clean test split",
    "id_ece": "expected calibration error (15 bins) on the clean test split",
    "id_brier": "Brier score on the clean test split",
    OOD_ACC_MEAN: "mean over held-out test shifts of each shift's accuracy averaged over its severities",
    OOD_ACC_WORST: "the worst held-out test shift's accuracy (averaged over its severities)",
    "ood_ece_mean": "ECE averaged over every test shift and severity",
    "ood_nll_mean": "NLL averaged over every test shift and severity",
    CLEAN_SUBSET_ACC: "accuracy on the clean images of the shifted test sets (the same subset as every severity)",
    CLEAN_SUBSET_ECE: "ECE on the clean images of the shifted test sets",
    OOD_VAL_ACC: "mean accuracy on the selection shifts of the validation split (the only shifts selection reads)",
    VAL_ACC_FINAL: "val_acc after the last epoch",
    "mce_benchmark": "mCE over CIFAR-10-C's 15 benchmark corruptions (shifts.BENCHMARK); only when all 15 are test shifts",
    "relative_mce_benchmark": "relative mCE over the 15 benchmark corruptions; only when all 15 are test shifts",
    "mce_benchmark_files": "mCE over the 15 benchmark corruptions read from shifts.files (c10c.<corruption>)",
    "relative_mce_benchmark_files": "relative mCE over the 15 benchmark corruptions read from shifts.files",
    "mce": "corruption error pooled over the test corruptions: sum_c sum_s E / sum_c sum_s E_ref (reference: see ce)",
    "relative_mce": "relative corruption error pooled over the test corruptions (clean error of the same images "
                    "subtracted): sum_c sum_s (E - E_clean) / sum_c sum_s (E_ref - E_ref_clean)",
    "train_seconds": "wall seconds of the training epochs",
    "eval_seconds": "wall seconds of the evaluation on the clean test split and every shift",
    "peak_rss_mb": "peak resident memory of the process, MiB",
    "gpu_peak_mb": "peak CUDA memory allocated during the trial, MiB (CUDA only)",
    "label_shift/balanced_acc": "balanced accuracy on the prior-shifted test set",
    "label_shift/acc_bbse_corrected": "accuracy after BBSE reweighting (Lipton et al. 2018)",
    "label_shift/prior_l1_error": "L1 error of the BBSE class-prior estimate",
    "label_shift/w_sq_error": "squared error of the BBSE importance weights",
    "ood_acc/{family}": "mean test-shift accuracy of one shift family (noise, blur, weather, digital, geometric, ...)",
    "shift/{shift}/ce": "corruption error of one test corruption: sum of errors over severities / the reference's; the "
                        "reference is the tuned full fine-tuning baseline (tag harness.ce_reference: its run id)",
    "shift/{shift}/rce": "relative corruption error of one test corruption (clean error subtracted)",
}

SEVERITY = {
    "shift/{shift}/acc": "accuracy on one shift at each severity (selection shifts on validation, test shifts on test)",
    "shift/{shift}/ece": "ECE on one test shift at each severity",
    "shift/{shift}/nll": "NLL on one test shift at each severity",
}

CLASS = {
    "label_shift/prior_true": "the label-shifted test set's class prior",
    "label_shift/prior_bbse": "BBSE's estimate of that prior",
}

# ----------------------------------------------------------------------------------------- parent runs
PRETRAIN_EPOCH = {
    "pretrain_loss": "source-task pretraining loss per epoch (parent run)",
    "pretrain_source_val_acc": "source-task validation accuracy per epoch (parent run)",
}

# ------------------------------------------------------------------------- harness.sustain policy runs
STREAM_FINAL = {
    "stream_acc_mean": "mean over periods of stream_acc",
    "stream_acc_worst": "minimum over periods of stream_acc",
    "bwt": "GEM backward transfer: 1/(T-1) sum_{i<T-1} (R[T-1][i] - R[i][i]); negative = forgetting",
    "forgetting": "Chaudhry et al. 2018: 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l][i] - R[T-1][i])",
    "fwt": "forward transfer against the never-updated deployed model (not GEM's random-init baseline): "
           "1/(T-1) sum_{i>=1} (R[i-1][i] - initial[i]), initial = the deployed model before any update",
    "n_updates": "number of update fine-tunes",
    "update_seconds": "wall seconds of the update fine-tunes",
    "update_examples": "images x epochs trained by the updates",
}
PERIOD = {
    "stream_acc": "R[t-1][t] (initial[0] at t = 0): the model in service meets period t, before any update on it",
    "labelled_acc": "accuracy on period t's labelled batch before any update on it, counting only the images no "
                    "update has trained on (the accuracy monitor's input); absent when every image was trained on",
    "updated": "1 when the policy updated the model at period t",
    "monitor": "the monitor's statistic at period t (drop in points, ROC AUC or MMD^2; triggered policies)",
    "monitor_threshold": "what the monitor was compared with at period t (triggered policies)",
}

# ------------------------------------------------------------------- system metrics (trial runs, sampled)
# step = sample index, timestamp = when it was taken; MLflow's names, so its UI's system-metrics tab shows them.
# Sampled every study.system_metrics seconds on a thread, plus one sample when the run stops (tracking.SystemSampler)
SYSTEM = {
    "system/cpu_utilization_percentage": "CPU utilization of the machine since the previous sample, %",
    "system/system_memory_usage_megabytes": "memory in use on the machine (total - available), MiB",
    "system/system_memory_usage_percentage": "memory in use on the machine, %",
    "system/process_rss_megabytes": "resident memory of the trial's process, MiB",
    "system/gpu_0_utilization_percentage": "GPU 0 utilization (NVML, through torch.cuda.utilization), % (CUDA only)",
    "system/gpu_0_memory_usage_megabytes": "GPU 0 memory in use (all processes), MiB (CUDA only)",
    "system/gpu_0_memory_usage_percentage": "GPU 0 memory in use, % (CUDA only)",
}

METRICS = {**EPOCH, **FINAL, **SEVERITY, **CLASS, **PRETRAIN_EPOCH, **STREAM_FINAL, **PERIOD, **SYSTEM}

# --------------------------------------------------------------------------------------------- params
TRIAL_PARAMS = {name: p.meaning for name, p in strategies.PARAMS.items()}  # what each strategy's runs log
POLICY_PARAMS = {
    "policy": "update policy (never, every, accuracy, embedding, mmd)",
    "k": "every: update every k periods", "threshold": "triggered policies: the monitor's threshold",
    "window": "accuracy policy: labelled periods averaged", "lr": "update learning rate",
    "freeze_layers": "groups frozen during updates", "epochs": "epochs per update",
    "replay": "previous labelled batches replayed in an update", "stream": "stream kind",
    "shift": "the stream's shift", "periods": "T", "seed": "replicate seed",
}
# the parent run's params are the resolved config, flat: "<section>.<key>" (config.to_dict)
PARENT_PARAM = re.compile(r"^[a-z_]+\.[a-z_0-9]+$")

# ----------------------------------------------------------------------------------------------- tags
TAGS = {
    # every run
    "harness.role": "study | sustain (parent runs), trial | replicate | sustain_policy (child runs)",
    "optuna.study_name": "the Optuna study (= MLflow experiment name)",
    "optuna.trial_number": "the Optuna trial number of a child run (-1 for sustain policy runs outside search)",
    "mlflow.parentRunId": "the parent run of a child run",
    "mlflow.runName": "run name: trial-NNNN, policy-<label>-seed<s>, or the study name",
    # trial runs
    "harness.baseline": f"{' | '.join(strategies.BASELINES)} on the enqueued baselines (and their replicates)",
    "harness.ce_reference": "run id of the corruption-error reference (the tuned full FT baseline) the CE metrics use",
    "harness.replicate_of": "replicate runs: the Optuna trial number whose configuration they re-run",
    "harness.fail_reason": "why a run FAILED",
    "harness.failed_epoch": "epoch at which a trial failed (-1: before training)",
    "harness.pruned_epoch": "epoch at which a trial was pruned",
    "harness.pruned_reason": "the pruner's reason",
    "harness.logging_error": "an async metric batch that failed (the run still ended)",
    # study parent
    "harness.git_sha": "git commit of the harness (-dirty with local changes)",
    "harness.device": "the resolved device",
    "harness.sampler": "Optuna sampler", "harness.pruner": "Optuna pruner (none in multi-objective studies)",
    "harness.objective": "study objective", "harness.seed": "study seed (policy and replicate runs: the run's training seed)",
    "harness.n_trials_target": "the requested number of finished trials",
    "harness.optuna_storage": "Optuna storage URL, password redacted",
    "harness.shifts.selection": "selection shifts", "harness.shifts.test": "held-out test shifts",
    "harness.shifts.family": "shift -> family, comma-separated name:family",
    "harness.shift_suite": "cache key of the shifted sets", "harness.data": "cache key of the data",
    "harness.target_domain": "the target domain fine-tuned and tested on: data.target_shift as name:severity, "
                             "comma-separated (a mixture), or none (the clean target task)",
    "harness.n_test": "clean test images (sample size of id_acc)",
    "harness.n_shift_eval": "images per shifted test set (sample size of shift accuracies)",
    "harness.pretrain": "cache key of the source-task pretraining",
    "harness.best_trial": "number of the best completed trial", "harness.best_run_id": "its run id",
    "harness.replicates": "seeds of the replicate runs, comma-separated (the study seed's run is the trial itself)",
    "harness.version.{package}": "package versions (torch, optuna, mlflow, python)",
    "harness.study_name": "experiment tag: the experiment holds a harness study",
    # sustain parent and policy runs
    "harness.stream": "stream kind", "harness.stream_shift": "the stream's shift",
    "harness.pool_fraction": "share of the train split held out as the stream pool",
    "harness.policies": "policies replayed", "harness.seeds": "replicate seeds",
    "harness.search": "true when Optuna searches the policy", "harness.failed_runs": "policy runs that failed",
    "harness.policy": "policy label (never, every3, accuracy, ...)",
    "harness.sustain_key": "hash of everything that determines a policy run's result (reused when equal)",
    "harness.update_periods": "periods at which the policy updated, comma-separated",
    "harness.threshold_used": "the distinct monitor thresholds used",
    "harness.search_trial": "a searched policy reported on the reported seeds: the Optuna trial that selected it on the "
                            "search seeds (reported seed + 10000)",
    # MLflow-native records (records.py, champion.py)
    "mlflow.note.content": "the run's description in the MLflow UI: a trial's strategy in words, the study's summary",
    "harness.registered_model": "study parent: the registered model its selected trial's model is a version of",
    "harness.model_version": "study parent: that model version (alias champion); policy runs: their last version",
}

# Input tags of the MLflow dataset inputs (records.dataset_inputs), besides mlflow.data.context
INPUT_SPLIT, INPUT_SHIFT, INPUT_SEVERITY = "harness.split", "harness.shift", "harness.severity"
INPUT_SEED, INPUT_IMAGES, INPUT_TARGET_SHIFT = "harness.shift_seed", "harness.images", "harness.target_shift"
INPUT_TAGS = {
    INPUT_SPLIT: "the split the images come from (train, val, test, subpop)",
    INPUT_SHIFT: "shifted evaluation sets: the shift", INPUT_SEVERITY: "shifted evaluation sets: the severity",
    INPUT_SEED: "shifted evaluation sets: shifts.seed (each set is built from it, the shift and the severity)",
    INPUT_IMAGES: "number of images", INPUT_TARGET_SHIFT: "the target domain's shift (data.target_shift) on the clean splits; the label-shift "
                        "test set's class-prior distribution",
}

# Tags of registered model versions (champion.py: the selected trial; sustain: one version per update)
MODEL_VERSION_TAGS = {
    "harness.study": "the study (experiment) the model comes from", "harness.trial": "its Optuna trial number",
    "harness.run_name": "the MLflow run that trained it", "harness.strategy": "its fine-tuning strategy in words",
    "harness.period": "sustain: the stream period whose update produced it (-1: the deployed model)",
    "harness.policy": "sustain: the policy", "harness.seed": "sustain: the replicate seed",
    "harness.trigger": "sustain: why the policy updated (deployed, schedule, or the monitor's statistic)",
    "{metric}": "the trial's final metrics (id_acc, ood_acc_mean, ...), as logged on its run",
}
REGISTERED_MODEL_ALIASES = {"champion": "the selected trial of the latest study run",
                            "production": "sustain: the policy's model in service now"}

# Optuna trial system attrs written by the bookkeeping (not MLflow, listed so every name lives here)
TRIAL_SYSTEM_ATTRS = ("harness.host", "harness.pid", "harness.pid_start", "harness.pid_ticks", "harness.worker",
                      "fail_reason")

# The enqueued baselines (the values of tag harness.baseline) and how the report names them
BASELINES = {name: b.label for name, b in strategies.BASELINES.items()}


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{[a-z]+\\\}", "[^/]+", re.escape(template)) + "$")


_METRIC_PATTERNS = [_pattern(k) for k in METRICS]
_TAG_PATTERNS = [_pattern(k) for k in TAGS]


def shift_key(shift: str, what: str) -> str:
    """shift/<name>/<what>: acc, ece, nll (step = severity), ce, rce (final)."""
    return f"shift/{shift}/{what}"


def family_key(family: str) -> str:
    return f"ood_acc/{family}"


def is_metric(key: str) -> bool:
    return any(p.match(key) for p in _METRIC_PATTERNS)


def is_tag(key: str) -> bool:
    return any(p.match(key) for p in _TAG_PATTERNS)


def is_param(key: str) -> bool:
    return key in TRIAL_PARAMS or key in POLICY_PARAMS or bool(PARENT_PARAM.match(key))
