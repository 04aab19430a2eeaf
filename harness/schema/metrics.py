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
MCE_FILES, RELATIVE_MCE_FILES = "mce_files", "relative_mce_files"
MCE_POOLED, RELATIVE_MCE_POOLED = "mce_pooled", "relative_mce_pooled"
CLEAN_FILES_ACC = "clean_files_acc"
OOD_ECE_POOLED, OOD_ECE_POOLED_DEBIASED = "ood_ece_pooled", "ood_ece_pooled_debiased"
OOD_ECE_POOLED_CALIBRATED_Q95, OOD_ECE_POOLED_N = "ood_ece_pooled_calibrated_q95", "ood_ece_pooled_n"
TRAIN_SECONDS, EVAL_SECONDS, PEAK_RSS_MB, GPU_PEAK_MB = "train_seconds", "eval_seconds", "peak_rss_mb", "gpu_peak_mb"
SELECTED_EPOCH = "selected_epoch"
LABEL_SHIFT_BALANCED_ACC, LABEL_SHIFT_ACC_BBSE = "label_shift/balanced_acc", "label_shift/acc_bbse_corrected"
LABEL_SHIFT_PRIOR_L1_ERROR, LABEL_SHIFT_W_SQ_ERROR = "label_shift/prior_l1_error", "label_shift/w_sq_error"
FAMILY_ACC = "ood_acc/{family}"  # family_key(family)
LABEL_SHIFT_ACC, SUBPOPULATION_ACC, TARGET_CLEAN_ACC = "label_shift/acc", "subpopulation/acc", "target/clean_acc"
FILES_ACC_MEAN, FILES_ACC_WORST = "files/acc_mean", "files/acc_worst"
DOMAINS_ACC_MEAN, DOMAINS_ACC_WORST = "domains/acc_mean", "domains/acc_worst"
# shift_key(shift, what)
SHIFT_ACC, SHIFT_ECE, SHIFT_NLL = "shift/{shift}/acc", "shift/{shift}/ece", "shift/{shift}/nll"
SHIFT_CE, SHIFT_RCE = "shift/{shift}/ce", "shift/{shift}/rce"
# per-image correctness of a trial or replicate run (artifact, JSON): {"clean": "0110...", "shifts": {name: {sev: ...}}},
# one character per image of the shifted test sets' fixed subset, the same images at every severity; with real
# domains (shifts.domains) also "domains": {domain.<name>: {"1": ...}}, one character per image of that domain's set
CORRECT_ARTIFACT = "correct.json"
# per-image correctness on validation of a trial or replicate run (artifact, JSON): {"val": "0110..." (the last
# epoch, every validation image), "selection": {shift: {sev: ...}} (the selection shifts' validation subset)}: the
# evidence harness.selection.selection_frequency resamples
VAL_CORRECT_ARTIFACT = "val_correct.json"
# the parent run's record of the baselines' lr grids and their extension (harness.baseline_grid.status, JSON)
BASELINE_GRID_ARTIFACT = "baseline_grid.json"
# the parent run's WiSE-FT curves (harness.wise, JSON): per interpolated configuration its points along alpha (validation,
# id_acc, ood_acc_mean and correct.json's per-image correctness) and the alpha chosen on validation
WISE_FT_ARTIFACT = "ensembles/wise_ft.json"
FINAL = {
    ID_ACC: "accuracy on the clean test split",
    ID_NLL: "mean negative log-likelihood on the clean test split",
    ID_ECE: "expected calibration error (15 bins) on the clean test split",
    ID_BRIER: "Brier score on the clean test split",
    # The OOD numbers: one definition each, over the "held-out severity shifts" = the study's test shifts
    # (shifts.test) applied to the clean test subset (suite.Suite.shifted), at every severity of shifts.severities:
    # the images of correct.json's "shifts", which the report's paired comparisons resample. Label shift,
    # subpopulation, a target domain's clean set and shifts.files are never averaged in: each has its own metric.
    OOD_ACC_MEAN: "mean over the held-out severity shifts of each shift's accuracy averaged over its severities (the "
                  "same images at every shift and severity, so also the mean over every (shift, severity) set and the "
                  "mean of correct.json's per-image accuracy)",
    OOD_ACC_WORST: "the lowest, over the held-out severity shifts, of a shift's accuracy averaged over its severities",
    OOD_ECE_MEAN: "ECE averaged over every held-out severity shift and severity",
    OOD_NLL_MEAN: "NLL averaged over every held-out severity shift and severity",
    CLEAN_SUBSET_ACC: "accuracy on the clean test subset: the very images (row for row) that every held-out severity "
                      "shift shifts, at every severity (shifts.eval_images of the test split, stratified; in a "
                      "target-domain study the source domain's clean test images). The drops are taken on these "
                      "images: clean_subset_acc - ood_acc_mean and clean_subset_acc - ood_acc_worst (absent with "
                      "no held-out severity shift: no drop on other images)",
    CLEAN_SUBSET_ECE: "ECE on the clean test subset (the images of clean_subset_acc)",
    OOD_VAL_ACC: "mean accuracy on the selection shifts of the validation split (the only shifts selection reads)",
    VAL_ACC_FINAL: "val_acc after the last epoch",
    CLEAN_FILES_ACC: "accuracy on the clean test images of the rows the shifts.files sets hold (their same images "
                     "clean; absent when the clean test split's labels there differ from the files')",
    MCE: "mCE as published (Hendrycks & Dietterich 2019): the mean of CE_c (shift/<c>/ce) over the CIFAR-10-C "
         "benchmark corruptions (shifts.BENCHMARK) among the simulated test shifts; geometric and extra shifts "
         "excluded",
    RELATIVE_MCE: "relative mCE as published: the mean of relative CE_c (shift/<c>/rce) over mce's corruptions; "
                  "absent when one of them has none",
    MCE_FILES: "mce over the shifts.files sets of the benchmark corruptions (c10c.<c>)",
    RELATIVE_MCE_FILES: "relative_mce over the shifts.files sets of the benchmark corruptions (c10c.<c>)",
    MCE_POOLED: "not the published mCE: sum_c sum_s E / sum_c sum_s E_ref over mce's corruptions (a ratio of sums)",
    RELATIVE_MCE_POOLED: "not the published relative mCE: sum_c sum_s (E - E_clean) / sum_c sum_s (E_ref - "
                         "E_ref_clean) over mce's corruptions",
    OOD_ECE_POOLED: "plug-in ECE (15 bins) of the images of every held-out severity set at its highest severity, "
                    "pooled (ood_ece_pooled_n of them)",
    OOD_ECE_POOLED_DEBIASED: "debiased ECE (Kumar et al. 2019, metrics.debiased_ece) of ood_ece_pooled's images",
    OOD_ECE_POOLED_CALIBRATED_Q95: "95% quantile of the plug-in ECE a perfectly calibrated model with ood_ece_pooled's "
                                   "confidences scores on as many images (stats.calibrated_ece_reference)",
    OOD_ECE_POOLED_N: "number of images ood_ece_pooled pools",
    TRAIN_SECONDS: "wall seconds of the training epochs",
    SELECTED_EPOCH: "train.select_epoch = best_val: the epoch (0-based) of the highest validation accuracy, whose "
                    "weights every final metric is computed from",
    EVAL_SECONDS: "wall seconds of the evaluation on the clean test split and every shift",
    PEAK_RSS_MB: "peak resident memory of the process, MiB",
    GPU_PEAK_MB: "peak CUDA memory allocated during the trial, MiB (CUDA only)",
    LABEL_SHIFT_BALANCED_ACC: "balanced accuracy on the prior-shifted test set",
    LABEL_SHIFT_ACC_BBSE: "accuracy after BBSE reweighting (Lipton et al. 2018)",
    LABEL_SHIFT_PRIOR_L1_ERROR: "L1 error of the BBSE class-prior estimate",
    LABEL_SHIFT_W_SQ_ERROR: "squared error of the BBSE importance weights",
    FAMILY_ACC: "mean over the held-out severity shifts of one family (noise, blur, weather, digital, geometric) of "
                "each shift's accuracy averaged over its severities",
    LABEL_SHIFT_ACC: "accuracy on the label-shifted test set (the test split resampled to a Dirichlet class prior; "
                     "its shift/label_shift/acc at step 1); not part of ood_acc_mean",
    SUBPOPULATION_ACC: "accuracy on the subpopulation set (classes held out of fine-tuning, data.holdout_classes; "
                       "its shift/subpopulation/acc at step 1); not part of ood_acc_mean",
    TARGET_CLEAN_ACC: "target-domain study (data.target_shift): accuracy on the source domain's clean test images "
                      "(shift/clean/acc at step 1; the same images as clean_subset_acc); not part of ood_acc_mean",
    FILES_ACC_MEAN: "mean over the shifts.files corruptions (c10c.<name>) of each one's accuracy averaged over its "
                    "severities, on their own images (labels.npy); not in ood_acc_mean (their clean counterpart, when the files "
                    "hold rows of the clean test split, is clean_files_acc)",
    FILES_ACC_WORST: "the lowest shifts.files corruption accuracy (averaged over its severities)",
    DOMAINS_ACC_MEAN: "mean over the real domains of shifts.domains (domain.<name>, harness.domainfiles) of each "
                      "domain's accuracy on its own images (shift/domain.<name>/acc at step 1); its own family, never "
                      "in ood_acc_mean",
    DOMAINS_ACC_WORST: "the lowest real-domain accuracy (shift/domain.<name>/acc)",
    SHIFT_CE: "CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}, E the error at severity s of test corruption c; the "
              "reference is the tuned full fine-tuning baseline (tag harness.ce_reference: its run id)",
    SHIFT_RCE: "relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean), E_clean the error on "
               "the same images clean (clean_subset_acc; clean_files_acc for shifts.files sets); absent when the "
               "reference does not degrade (denominator <= 0) or no same-image clean error exists",
}
# the clean test split's summary (metrics.summarize: acc, nll, ece, brier) as trial.test_metrics logs it: id_key(what)
ID_METRICS = {"acc": ID_ACC, "nll": ID_NLL, "ece": ID_ECE, "brier": ID_BRIER}
# the accuracy of each evaluation set that is not a severity shift, by its family (harness.suite.FAMILIES)
SET_ACC = {"label": LABEL_SHIFT_ACC, "subpopulation": SUBPOPULATION_ACC, "clean": TARGET_CLEAN_ACC}
# the OOD means of the held-out severity shifts' calibration (trial.test_metrics: ood_mean(what))
OOD_MEANS = {"ece": OOD_ECE_MEAN, "nll": OOD_NLL_MEAN}
# (mCE, relative mCE) over the simulated test shifts and over shifts.files' sets (corruption_error.corruption_errors)
CE_MEANS = {"test": (MCE, RELATIVE_MCE), "files": (MCE_FILES, RELATIVE_MCE_FILES)}
CE_POOLED = (MCE_POOLED, RELATIVE_MCE_POOLED)
# the pooled calibration at its sample size (stats.calibration_at_n's keys -> the trial's metrics)
ECE_POOLED = {"ece": OOD_ECE_POOLED, "ece_debiased": OOD_ECE_POOLED_DEBIASED,
              "ece_calibrated_q": OOD_ECE_POOLED_CALIBRATED_Q95, "n": OOD_ECE_POOLED_N}

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
ENSEMBLES_SECONDS = "ensembles_seconds"
PRETRAIN_EPOCH = {
    ENSEMBLES_SECONDS: "parent run, step 0: wall seconds of the post-search weight-space ensembles (WiSE-FT curves and "
                       "model soups, harness.soups.after_search)",
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
