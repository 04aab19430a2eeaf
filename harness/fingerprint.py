"""A study's identity: everything that makes its trials comparable, recorded on its parent run and checked before a
resume (issue 27), and the stores that must agree about the study (its Optuna study and its MLflow parent)."""

from __future__ import annotations

import dataclasses
import json
import time

from harness import config, data as datamod, domainfiles, schema, store
from harness.config import ConfigError

# fingerprint key -> its value in a config. The trials of one study are ranked in one table and compared by the
# report: whatever changes what a trial's number means is here. Left out on purpose: study.n_trials, timeout,
# workers, replicates, device, threads, sampler and pruner (how the search runs, not what a trial measures),
# train.eval_batch_size, compile and cache_mb (the same numbers, faster or slower), report and registered_model.
KEYS = {
    "study.objective": lambda c: c.study.objective,
    "study.directions": lambda c: ["maximize", "maximize"] if c.study.objective == "multi" else ["maximize"],
    "study.seed": lambda c: c.study.seed,  # the data split, the pretraining, every trial's initialization
    "study.baseline_lrs": lambda c: c.study.baseline_lrs,
    "model.name": lambda c: c.model.name,
    "model.weights": lambda c: c.model.weights,
    **{f"pretrain.{k}": (lambda k: lambda c: getattr(c.pretrain, k) if c.model.weights == "pretrain" else None)(k)
       for k in ("epochs", "lr", "batch_size")},
    **{f"data.{f.name}": (lambda k: lambda c: getattr(c.data, k))(f.name) for f in dataclasses.fields(config.Data)},
    # the content address of the images (an image folder's listing included): the same config on other files
    "data.key": lambda c: datamod.cache_key(c.data, c.study.seed),
    **{f"train.{k}": (lambda k: lambda c: getattr(c.train, k))(k)
       for k in ("epochs", "batch_size", "optimizer", "momentum", "weight_decay", "schedule", "augment")},
    **{f"search.{f.name}": (lambda k: lambda c: getattr(c.search, k))(f.name) for f in dataclasses.fields(config.Search)},
    **{f"shifts.{f.name}": (lambda k: lambda c: getattr(c.shifts, k))(f.name) for f in dataclasses.fields(config.Shifts)},
    "study.prune_warmup": lambda c: c.study.prune_warmup,  # when a trial may be pruned: pruned ones count as finished
    # the real domains' files (paths, sizes, mtimes): the same shifts.domains on other images (absent: no domains)
    "shifts.domains_key": lambda c: store.cache_key({}, domainfiles.stamp(c.shifts)) if c.shifts.domains else None,
}


def _wider(old, new) -> bool:
    """A [low, high] range that holds the old one: every earlier trial's value stays inside the search space."""
    return len(old) == len(new) == 2 and new[0] <= old[0] and new[1] >= old[1]


def _superset(old, new) -> bool:
    return set(map(json.dumps, old)) <= set(map(json.dumps, new))


# keys --allow-changes may change, and how: the earlier trials stay valid members of the wider study (their values
# inside its ranges, their choices among its choices), and the sampler sees them all. Narrowing is never safe: an
# earlier trial outside the new range breaks the sampler's model of the space and the report's comparison.
EXTENDABLE = {
    "search.lr": (_wider, "widen (the new range must hold the old one)"),
    "search.freeze_layers": (_wider, "widen"), "search.unfreeze_epoch": (_wider, "widen"),
    "search.gradual_every": (_wider, "widen"),
    "search.strategy": (_superset, "add strategies (keep the old ones)"),
    "search.tune_head": (_superset, "add choices"),
    "study.baseline_lrs": (_superset, "add lrs (the earlier baselines stay)"),
}
LONG = 200  # a value longer than this (a long data.path) is kept as its hash: the tag stays under MLflow's 5000


def of(cfg: config.Config) -> dict:
    """The fingerprint: key -> JSON value."""
    out = {}
    for key, get in KEYS.items():
        value = json.loads(json.dumps(get(cfg), default=str))
        text = json.dumps(value)
        out[key] = value if len(text) <= LONG else "sha256:" + store.cache_key(text)
    return out


@dataclasses.dataclass
class Resume:
    """What the check found and the launch records: the new fingerprint and the changes it accepted."""
    fingerprint: dict
    accepted: list[str] = dataclasses.field(default_factory=list)  # "key: old -> new"


def _show(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:45] + "..." + text[-10:]


def compare(old: dict, new: dict, allow: list[str]) -> list[str]:
    """The accepted changes ("key: old -> new"), or ConfigError naming every key that differs, old -> new."""
    bad = [a for a in allow if a not in KEYS]
    if bad:
        raise ConfigError("--allow-changes", f"unknown key {', '.join(map(repr, bad))}; keys that may change within "
                          f"a study: {', '.join(EXTENDABLE)}")
    fixed = [a for a in allow if a not in EXTENDABLE]
    if fixed:
        raise ConfigError("--allow-changes", f"{', '.join(fixed)} cannot change within a study (its trials would "
                          f"not compare with the earlier ones); keys that may: {', '.join(EXTENDABLE)}")
    diff = {k: (old.get(k), new[k]) for k in new if k in old and old[k] != new[k]}
    if not diff:
        return []
    words = "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in diff.items())
    refused = [k for k in diff if k not in allow]
    if refused:
        extendable = [k for k in refused if k in EXTENDABLE]
        hint = (f", or pass --allow-changes {','.join(extendable)} to {EXTENDABLE[extendable[0]][1]}"
                if extendable and len(extendable) == len(refused) else "")
        raise ConfigError(", ".join(refused), f"this study was run with another configuration ({words}); its "
                          f"trials would not compare with the earlier ones. Choose a new --study-name{hint}")
    for k, (a, b) in diff.items():
        ok, how = EXTENDABLE[k]
        if not ok(a, b):
            raise ConfigError(k, f"--allow-changes {k} may only {how}: {_show(a)} -> {_show(b)} does not; choose a "
                              f"new --study-name")
    return [f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in diff.items()]


# ------------------------------------------------------------------------------------------------ the stores

def where(uri: str) -> str:
    """A tracking URI as recorded and compared: a sqlite file by its resolved path, any other redacted."""
    path = store.sqlite_path(uri)
    return f"{store.SQLITE}{path.resolve()}" if path is not None else store.redact(uri).rstrip("/")


def _optuna_side(storage: str, name: str) -> tuple[int, dict] | None:
    """(trials that ran, study system attrs) of the Optuna study `name`, None when there is none; creates nothing."""
    import optuna

    path = store.sqlite_path(storage)
    if path is not None and not path.is_file():
        return None
    try:
        rdb = optuna.storages.RDBStorage(storage, skip_table_creation=True, skip_compatibility_check=True)
    except Exception:  # no Optuna tables yet (a new database)
        return None
    try:
        study_id = rdb.get_study_id_from_name(name)
        # trials that ran: a study made beforehand with only enqueued (WAITING) trials, Optuna's way to seed a search,
        # has nothing an MLflow parent must hold
        ran = [t for t in rdb.get_all_trials(study_id, deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
        return len(ran), rdb.get_study_system_attrs(study_id)
    except KeyError:
        return None
    except Exception as e:  # noqa: BLE001 - tables missing: nothing of this study there
        if "no such table" in str(e) or "does not exist" in str(e):
            return None
        raise
    finally:
        rdb.engine.dispose()


def _mlflow_side(uri: str, name: str) -> tuple[dict, int, str] | None:
    """(the parent run's tags, its trial runs, its id) of the study in the tracking store, None without a parent."""
    from harness import tracking

    found = tracking.existing_experiment(uri, name)
    if found is None:
        return None
    client, exp = found
    parents = client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_STUDY}'",
                                 max_results=1, order_by=["attributes.start_time ASC"])
    if not parents:
        return None
    trials = client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_TRIAL}'",
                                max_results=1000)
    return parents[0].data.tags, len(trials), parents[0].info.run_id


def check(cfg: config.Config, allow: list[str] = ()) -> Resume:
    """Before anything is created: the stores agree about the study, and a resumed study keeps its identity.
    ConfigError (exit 2) otherwise, naming the flag or the keys that differ."""
    new, allow = of(cfg), [a.strip() for a in allow if a.strip()]
    compare(new, new, allow)  # unknown or never-changing keys in --allow-changes are bad input on a new study too
    name = cfg.study.name
    uri = cfg.study.tracking_uri or store.default_tracking_uri()
    storage = cfg.study.storage or store.default_storage()
    opt, mlf = _optuna_side(storage, name), _mlflow_side(uri, name)
    attrs = (opt or (0, {}))[1]
    # the parent's run id, not the store's path, says which store it is: a project folder moved elsewhere keeps it
    recorded, parent = attrs.get(schema.ATTR_TRACKING_URI), attrs.get(schema.ATTR_PARENT_RUN)
    tracked = f" (it was tracked in {recorded})" if recorded else ""
    if opt and mlf and parent and parent != mlf[2]:
        raise ConfigError("--tracking-uri", f"the Optuna study {name!r} in {store.redact(storage)} belongs to the "
                          f"MLflow parent run {parent}{tracked}, not to run {mlf[2]} of {where(uri)}: one study in two "
                          f"tracking stores would split its runs; pass the tracking store it used or choose a new "
                          f"--study-name")
    if opt and opt[0] and mlf is None:
        raise ConfigError("--tracking-uri", f"the Optuna study {name!r} ({opt[0]} trials) in {store.redact(storage)} "
                          f"has no MLflow parent run in {where(uri)}{tracked}: a deleted or another MLflow store; its "
                          f"trials cannot be resumed without it. Pass the tracking store it used or choose a new "
                          f"--study-name")
    if mlf and opt is None and mlf[1]:
        raise ConfigError("--storage", f"the MLflow parent run of {name!r} in {where(uri)} has {mlf[1]} trial runs "
                          f"but {store.redact(storage)} holds no Optuna study {name!r} (a deleted or another Optuna "
                          f"storage; the parent recorded {mlf[0].get(schema.TAG_OPTUNA_STORAGE, 'none')}); pass the "
                          f"storage it used or choose a new --study-name")
    try:
        old = json.loads(mlf[0][schema.TAG_FINGERPRINT]) if mlf and schema.TAG_FINGERPRINT in mlf[0] else None
    except ValueError:  # cut by MLflow's 5000-character cap: cannot be compared, so it is recorded again
        old = None
    return Resume(new, compare(old, new, allow) if old else [])


def record(client, parent_id: str, resume: Resume, study, uri: str) -> None:
    """The fingerprint and the accepted changes on the parent run, the tracking store on the Optuna study."""
    from harness import bookkeeping, tracking

    tags = {schema.TAG_FINGERPRINT: json.dumps(resume.fingerprint, sort_keys=True, separators=(",", ":"))}
    if resume.accepted:
        before = client.get_run(parent_id).data.tags.get(schema.TAG_ALLOWED_CHANGES, "")
        now = f"{time.strftime('%Y-%m-%d %H:%M:%S')} " + "; ".join(resume.accepted)
        tags[schema.TAG_ALLOWED_CHANGES] = ((before + "\n") if before else "") + now
        tags[schema.TAG_ALLOWED_CHANGES] = tags[schema.TAG_ALLOWED_CHANGES][-5000:]  # MLflow's cap: the latest kept
    tracking.set_tags(client, parent_id, tags)
    bookkeeping.study_system_attr(study, schema.ATTR_TRACKING_URI, where(uri))
    bookkeeping.study_system_attr(study, schema.ATTR_PARENT_RUN, parent_id)
