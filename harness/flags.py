"""The flags `python -m harness.study` and `python -m harness.sustain` share, the config keys they set, and the
syntax check of the store URLs they (and harness.report) take."""

from __future__ import annotations

import argparse

from harness import config
from harness.config import ConfigError

# flag -> (its help in harness.study's words, argparse's other settings); a command words any of them its own way
# through add_common_args's `help`
FLAGS = {
    "--config": ("study TOML file (default: studies/default.toml)", {}),
    "--study-name": ("study name; re-running with the same name resumes it", {}),
    "--n-trials": ("target number of finished trials (completed or pruned; failed ones do not count). Re-running "
                   "resumes the study and stops at N; a larger N extends it; with --workers, N is shared by all "
                   "workers", {"type": int}),
    "--timeout": ("stop starting new trials after SEC seconds", {"type": float}),
    "--storage": ("Optuna storage URL (default: sqlite file mlruns/optuna.db; postgresql://user:pw@host/db for many "
                  "machines)", {}),
    "--tracking-uri": ("MLflow tracking URI (default: sqlite:///mlruns/mlflow.db; http://host:5000 for a tracking "
                       "server)", {}),
    "--device": ("auto picks CUDA when present", {"choices": config.DEVICES}),
    "--seed": ("seed for sampler, data split, init and batch order", {"type": int}),
    "--workers": ("worker processes on this machine sharing the study", {"type": int}),
    "--set": ("override any config key, type-checked (repeatable), e.g. --set train.epochs=3",
              {"action": "append", "default": [], "metavar": "SECTION.KEY=VALUE"}),
    "--no-report": ("do not write the HTML report at the end", {"action": "store_true"}),
}


def add_common_args(ap: argparse.ArgumentParser, help: dict[str, str] | None = None) -> None:
    """The shared flags, in FLAGS's order; `help` maps any of them to the command's own words for it."""
    unknown = set(help or {}) - set(FLAGS)
    if unknown:
        raise ValueError(f"no shared flag {', '.join(sorted(unknown))}; the shared flags are {', '.join(FLAGS)}")
    for flag, (text, settings) in FLAGS.items():
        ap.add_argument(flag, help=(help or {}).get(flag, text), **settings)


def load_config(args: argparse.Namespace) -> config.Config:
    """The config the flags mean: the TOML file, the --set overrides, then each flag given over its key."""
    flags = {"study.name": args.study_name, "study.n_trials": args.n_trials, "study.timeout": args.timeout,
             "study.storage": args.storage, "study.tracking_uri": args.tracking_uri, "study.device": args.device,
             "study.seed": args.seed, "study.workers": args.workers,
             "study.report": False if getattr(args, "no_report", False) else None}
    return config.load(args.config, args.set, **flags)


def check_url_syntax(flag: str, uri: str) -> None:
    """What urllib and http.client refuse only when the store is opened (InvalidURL, a traceback, after mlruns/
    exists): a control character, or an http(s) URL whose host:port does not parse once its userinfo is taken off
    (a raw '/' in a password is the password's: http://u:ab/cd@host has host 'host'). The URL is never quoted: its
    password would be."""
    if not uri:
        return
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise ConfigError(flag, "the URL contains a control character (a newline, a tab...); remove it")
    if uri.startswith(("http://", "https://")):
        import urllib.parse

        from harness import redaction

        # the userinfo read as the redaction reads it (to the last "@" of the authority: a raw "/", blank or ":" in
        # a password is the password's), so only the host:port is judged here
        parts = urllib.parse.urlsplit(redaction.split_userinfo(uri)[0])
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is no number in 0..65535
            ok = bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(flag, f"the {parts.scheme} URL's host:port does not parse (the URL is not shown: it may "
                              f"hold a password); percent-encode '/', '@', ':', '?' and '#' in a user name or password "
                              f"('/' as %2F, '@' as %40), or pass them in MLFLOW_TRACKING_USERNAME and "
                              f"MLFLOW_TRACKING_PASSWORD")
