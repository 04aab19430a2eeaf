"""The tag names harness sets on runs, dataset inputs, registered models and their versions, with their meanings."""

from __future__ import annotations

from harness import strategies

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
TAG_LOAD_AVERAGE, TAG_CPU_COUNT = "harness.load_average", "harness.cpu_count"
TAG_SAMPLER, TAG_PRUNER = "harness.sampler", "harness.pruner"
TAG_OBJECTIVE, TAG_SEED, TAG_N_TRIALS_TARGET = "harness.objective", "harness.seed", "harness.n_trials_target"
TAG_OPTUNA_STORAGE = "harness.optuna_storage"
TAG_SHIFTS_SELECTION, TAG_SHIFTS_TEST, TAG_SHIFTS_FAMILY = \
    "harness.shifts.selection", "harness.shifts.test", "harness.shifts.family"
TAG_SHIFT_SUITE, TAG_DATA, TAG_TARGET_DOMAIN = "harness.shift_suite", "harness.data", "harness.target_domain"
# which reference's severity constants the suite's shifts took (shifts.constant_set: make_cifar_c up to 64 px, then
# make_imagenet_c), issue 26
TAG_SHIFT_CONSTANTS = "harness.shift_constants"
TAG_N_TEST, TAG_N_SHIFT_EVAL, TAG_PRETRAIN = "harness.n_test", "harness.n_shift_eval", "harness.pretrain"
TAG_BEST_TRIAL, TAG_BEST_RUN_ID, TAG_REPLICATES = "harness.best_trial", "harness.best_run_id", "harness.replicates"
TAG_FINGERPRINT, TAG_ALLOWED_CHANGES = "harness.fingerprint", "harness.allowed_changes"
TAG_FINALISTS = "harness.finalists"
TAG_VERSION = "harness.version.{package}"  # version_tag(package); version_package(tag) reads the package back
TAG_STUDY_NAME = "harness.study_name"  # an experiment tag
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment tag
# sustain parent and policy runs
TAG_STREAM, TAG_STREAM_SHIFT, TAG_POOL_FRACTION = "harness.stream", "harness.stream_shift", "harness.pool_fraction"
TAG_POLICIES, TAG_SEEDS, TAG_SEARCH, TAG_FAILED_RUNS = \
    "harness.policies", "harness.seeds", "harness.search", "harness.failed_runs"
TAG_POLICY, TAG_SUSTAIN_KEY, TAG_UPDATE_PERIODS = "harness.policy", "harness.sustain_key", "harness.update_periods"
TAG_THRESHOLD_USED, TAG_SEARCH_TRIAL = "harness.threshold_used", "harness.search_trial"
TAG_STREAM_VARIANT = "harness.stream_variant"  # drift | control (issue 24)
STREAM_DRIFT, STREAM_CONTROL = "drift", "control"  # its values
# MLflow-native records
TAG_REGISTERED_MODEL, TAG_MODEL_VERSION = "harness.registered_model", "harness.model_version"
# weight-space ensembles (harness.soups, issue 23): soup runs and the parent's champion when a soup wins
TAG_SOUP_KIND, TAG_SOUP_START = "harness.soup_kind", "harness.soup_start"
TAG_SOUP_INGREDIENTS = "harness.soup_ingredients"
TAG_CHAMPION_RUN_ID = "harness.champion_run_id"

# the values of harness.role
ROLE_STUDY, ROLE_SUSTAIN, ROLE_TRIAL, ROLE_REPLICATE, ROLE_POLICY = \
    "study", "sustain", "trial", "replicate", "sustain_policy"
ROLE_SOUP = "soup"
ROLES = {ROLE_STUDY: "a fine-tuning study's parent run", ROLE_SUSTAIN: "a harness.sustain study's parent run",
         ROLE_TRIAL: "a trial (child run)", ROLE_REPLICATE: "a seed replicate of a trial (child run)",
         ROLE_POLICY: "one policy on one seed's stream (child run of a sustain parent)",
         ROLE_SOUP: "a model soup of the study's kept trials (child run, harness.soups)"}
# label budgets (harness.budgets, issue 25): runs of the baselines and the selected trial on a labelled subset
ROLE_BUDGET = "budget"
ROLES[ROLE_BUDGET] = "a baseline or the selected trial re-run on study.label_budgets labels per class (child run)"
TAG_LABEL_BUDGET, TAG_TRAIN_LABELS = "harness.label_budget", "harness.train_labels"

TAGS = {
    # every run
    TAG_ROLE: "study | sustain (parent runs), trial | replicate | sustain_policy | soup (child runs): ROLES",
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
    TAG_LOAD_AVERAGE: "the machine's 1, 5 and 15 minute load averages when the study started, comma-separated",
    TAG_CPU_COUNT: "the machine's CPU count (os.cpu_count) when the study started",
    TAG_SAMPLER: "Optuna sampler", TAG_PRUNER: "Optuna pruner (none in multi-objective studies)",
    TAG_OBJECTIVE: "study objective", TAG_SEED: "study seed (trial, replicate and policy runs: the run's training seed)",
    TAG_N_TRIALS_TARGET: "the requested number of finished trials",
    TAG_OPTUNA_STORAGE: "Optuna storage URL, password redacted",
    TAG_SHIFTS_SELECTION: "selection shifts", TAG_SHIFTS_TEST: "held-out test shifts",
    TAG_SHIFTS_FAMILY: "shift -> family, comma-separated name:family",
    TAG_SHIFT_SUITE: "cache key of the shifted sets", TAG_DATA: "cache key of the data",
    TAG_SHIFT_CONSTANTS: "make_cifar_c or make_imagenet_c: whose severity constants the shifts took (by image size)",
    TAG_TARGET_DOMAIN: "the target domain fine-tuned and tested on: data.target_shift as name:severity, "
                       "comma-separated (a mixture), or none (the clean target task)",
    TAG_N_TEST: "clean test images (sample size of id_acc)",
    TAG_N_SHIFT_EVAL: "images per shifted test set (sample size of shift accuracies)",
    TAG_PRETRAIN: "cache key of the source-task pretraining",
    TAG_BEST_TRIAL: "number of the selected trial (harness.selection: the best finalist by mean validation over "
                    "seeds; while the search runs, the best so far)", TAG_BEST_RUN_ID: "its (search-time) run id",
    TAG_FINALISTS: "study.finalists of the last invocation: the k of harness.selection's top-k finalists",
    TAG_REPLICATES: "seeds of the replicate runs, comma-separated (the study seed's run is the trial itself)",
    TAG_FINGERPRINT: "JSON of what makes the study's trials comparable (harness.fingerprint.KEYS): a resume with "
                     "another value exits 2 naming the keys",
    TAG_ALLOWED_CHANGES: "the changes --allow-changes accepted on resumes, one line each: time, key: old -> new",
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
    TAG_STREAM_VARIANT: "policy runs: drift (the configured stream) or control (the same periods, labelled budget and "
                        "evaluation images with no shift: severity 0, no prior drift)",
    # MLflow-native records (records.py, champion.py)
    TAG_NOTE: "the run's description in the MLflow UI: a trial's strategy in words, the study's summary",
    TAG_REGISTERED_MODEL: "study parent: the registered model its selected trial's model is a version of",
    TAG_MODEL_VERSION: "study parent: that model version (alias champion); policy runs: their last version",
    TAG_SOUP_KIND: "soup runs: uniform (every kept ingredient of its start) | greedy (Wortsman et al. 2022's rule)",
    TAG_SOUP_START: "soup runs: the start its ingredients share (harness.soups.STARTS: random_head | probe_head)",
    TAG_SOUP_INGREDIENTS: "soup runs: its ingredients' trial numbers, comma-separated (greedy: in the order added)",
    TAG_CHAMPION_RUN_ID: "study parent: the soup run registered as champion because it beat the selected trial on "
                         "validation (absent: the champion is the selected trial, harness.best_run_id)",
}

TAGS.update({
    TAG_LABEL_BUDGET: "budget runs: labels per class of the labelled subset (0 = the whole train split)",
    TAG_TRAIN_LABELS: "budget runs: labelled training images the run trained on (all classes)",
})

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
