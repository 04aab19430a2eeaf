"""The attrs harness keeps on Optuna trials, units and claims (not MLflow), and the baselines' names."""

from __future__ import annotations

from harness import strategies

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
# Study system attrs of a study (harness.fingerprint): the stores that must agree about it
ATTR_TRACKING_URI, ATTR_PARENT_RUN = "harness.tracking_uri", "harness.parent_run_id"
STUDY_SYSTEM_ATTRS = {
    ATTR_TRACKING_URI: "the MLflow tracking store holding the study's parent run (a sqlite file's resolved path, any "
                       "other URI redacted), named when a resume finds no parent",
    ATTR_PARENT_RUN: "the run id of the study's MLflow parent: a resume on a store whose parent is another run "
                     "(the same name in two tracking stores) is refused",
}

# The enqueued baselines (the values of tag harness.baseline) and how the report names them
BASELINES = {name: b.label for name, b in strategies.BASELINES.items()}
