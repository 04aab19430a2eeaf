"""The metric and param names harness logs on MLflow runs, with when (step) and what each means."""

from __future__ import annotations

import re

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
# per-image correctness on validation of a trial or replicate run (artifact, JSON): {"val": "0110..." (the last
# epoch, every validation image), "selection": {shift: {sev: ...}} (the selection shifts' validation subset)}: the
# evidence harness.selection.selection_frequency resamples
VAL_CORRECT_ARTIFACT = "val_correct.json"
# the parent run's record of the baselines' lr grids and their extension (harness.baseline_grid.status, JSON)
BASELINE_GRID_ARTIFACT = "baseline_grid.json"
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
