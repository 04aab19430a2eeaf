"""The page of one or more fine-tuning studies: its sections, in the order of the SECTIONS registry."""

from __future__ import annotations

from harness import links, schema
from harness.report import figures
from harness.report.domains_page import TITLE as DOMAINS_TITLE, domains_section
from harness.report.ensembles_page import ensembles_section
from harness.report.headline import headline
from harness.report.selection_page import selection_section
from harness.report.budgets_page import learning_curves_section
from harness.report.kit import Raw, ci, esc, heading, img, lr_text, num, page, pct, pts, table, td
from harness.strategies import PARAMS

OBJECTIVE_LABEL = {"multi": "val_acc (1st objective)"}  # multi-objective studies rank by their first value


def chips(r: dict, s: dict) -> Raw:
    out = []
    if r["number"] == s["best"]:
        out.append('<span class="chip best">selected</span>')
    if r["baseline"]:
        out.append(f'<span class="chip {esc(r["baseline"])}">{esc(schema.BASELINES.get(r["baseline"], r["baseline"]))}</span>')
    if r["number"] in s["pareto"]:
        out.append('<span class="chip pareto" title="on the ID/OOD Pareto front">Pareto</span>')
    return Raw("".join(out))


def trial_cell(r: dict, s: dict) -> Raw:
    """A trial's cell: #N (its Optuna number), its MLflow run name and run id, linked to its run page in the MLflow UI
    when the report knows the UI (s["ui_base"]: an http tracking server or --ui-url), and its chips."""
    name = esc(r.get("run_name") or "")
    if s.get("ui_base") and r.get("run_id"):
        name = Raw(f'<a class="run" href="{esc(links.run_url(s["ui_base"], s["experiment_id"], r["run_id"]))}" '
                   f'title="open the run in the MLflow UI">{name}</a>')
    return Raw(f'<td><span data-key="number">#{esc(r["number"])}</span> {chips(r, s)}<br><small class="run">{name} '
               f'<span class="run-id">{esc(r.get("run_id") or "")}</span></small></td>')


def _target_domain(tag: str | None) -> str:
    """The target domain in words, from the harness.target_domain tag ("-" for a study that did not log it)."""
    if tag is None:
        return "-"
    if tag == "none":
        return "the clean target task (no data.target_shift)"
    shifted = " + ".join(tag.split(","))
    return (f"{shifted}: the target train, validation and test images are shifted before fine-tuning; the clean test "
            f"images are the held-out set clean")


def _provenance_fields(s: dict) -> list[tuple[str, str]]:
    p = s["provenance"]
    c = p["counts"]
    v = p["versions"] or {}
    oc = p["optuna_counts"]
    return [
        ("study", s["name"]), ("MLflow experiment / parent run", f"{s['experiment_id']} / {s['parent_run_id']}"),
        ("tracking URI", s["tracking_uri"]), ("Optuna storage", p["optuna_storage"] or "-"),
        ("sampler / pruner", f"{p['sampler']} / {p['pruner']}"), ("objective", p["objective"]), ("seed", p["seed"]),
        ("trials: target / complete / pruned / failed / running",
         f"{p['n_trials_target']} / {c['complete']} / {c['pruned']} / {c['failed']} / {c['running']}"),
        ("Optuna agrees", "-" if oc is None else
         ("yes" if (oc["complete"], oc["pruned"], oc["fail"]) == (c["complete"], c["pruned"], c["failed"]) else
          f"no: Optuna has {oc['complete']} complete, {oc['pruned']} pruned, {oc['fail']} failed")
         if oc else f"storage not read ({p['optuna_error']})"),
        ("wall time", f"{num(p['span_seconds'], '.0f')} s from first start to last end of the parent run; "
                      f"{num(p['trial_seconds'], '.0f')} s in trials"),
        ("device", p["device"]), ("git SHA", p["git_sha"]),
        ("versions", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "torchvision", "optuna", "mlflow", "numpy") if k in v)),
        ("platform", v.get("platform", "-")),
        ("test-set size", f"{s['n_test'] or '?'} images ({s['n_test_source']}); each shifted test set "
                          f"{s['n_shift_eval'] or '?'} images (a fixed stratified subset)"),
        ("corruption-error reference", "-" if not s.get("ce_reference") else
         f"trial #{s['ce_reference']['number']} (the tuned full FT baseline, lr {lr_text(s['ce_reference']['lr'])}): "
         f"ce, mce and relative_mce divide by its errors"),
        ("target domain", _target_domain(p["target_domain"])),
        ("held-out test shifts", ", ".join(s["shifts"]["test"] + s["shifts"]["sets"]) or "-"),
        ("selection shifts (validation)", ", ".join(s["shifts"]["selection"]) or "-"),
        ("severities", ", ".join(map(str, s["shifts"]["severities"]))),
        ("data / shift-suite cache keys", f"{p['data_key']} / {p['shift_suite']}"),
        ("pretraining", "-" if not p["pretrain"] else
         f"{p['pretrain']['key']}: source val acc {pct(p['pretrain']['source_val_acc'])}%, "
         f"{num(p['pretrain']['seconds'], '.0f')} s"),
    ]


def provenance(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    cols = [_provenance_fields(s) for s in summaries]
    rows = [[label] + [c[i][1] for c in cols] for i, (label, _) in enumerate(cols[0])]
    body = [table([""] + [s["name"] for s in summaries] if len(summaries) > 1 else ["", "value"], rows, "kv")]
    if len(summaries) > 1:
        keys = sorted({k for s in summaries for k in s["provenance"]["params"]})
        diff = [[k] + [s["provenance"]["params"].get(k, "-") for s in summaries] for k in keys
                if len({s["provenance"]["params"].get(k) for s in summaries}) > 1]
        body.append(Raw("<h3>Config keys that differ</h3>"))
        body.append(table(["key"] + [s["name"] for s in summaries], diff, "kv") if diff else Raw("<p>none</p>"))
    for s in summaries:
        cfg = s["provenance"]["config"]
        if cfg:
            body.append(Raw(f"<details><summary>resolved config of {esc(s['name'])} (config/resolved.toml)</summary>"
                            f"<pre>{esc(cfg)}</pre></details>"))
    return ("what ran, where, with which code and packages; enough to reproduce the study. Trial counts come from "
            "MLflow run states and are checked against Optuna.", Raw("".join(body)))


def _seeds(r: dict, key: str) -> str:
    """A replicated row's mean over seeds with the 95% t half-width, under the trial's own value."""
    rep = (r.get("replicates") or {}).get(key)
    if not rep or rep.get("half") is None:
        return ""
    return (f'<br><small class="seeds" data-key="{esc(key)}_seeds">{esc(pct(rep["mean"]))} \u00b1 '
            f'{esc(format(100 * rep["half"], ".1f"))} ({esc(rep["n"])} seeds)</small>')


def _with_ci(r: dict, key: str) -> Raw:
    cik = {schema.ID_ACC: "id_acc_ci", schema.OOD_ACC_MEAN: "ood_acc_ci"}[key]
    return Raw(f'<td><span data-key="{esc(key)}">{esc(pct(r[key]))}</span> '
               f'<small class="ci" data-key="{esc(cik)}">{esc(ci(r[cik]))}</small>{_seeds(r, key)}</td>')


def leaderboard(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        head = ["rank", "trial", "strategy", "lr", f"{OBJECTIVE_LABEL.get(s['objective'], s['objective'])} (%)", "ID acc (%) [95% CI]",
                "OOD mean (%) [95% CI]", "OOD worst (%)", "eff. robustness (pts)", "ID ECE", "OOD ECE"]
        done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
        body.append(heading(summaries, s))
        if not done:
            body.append(Raw(f'<p class="empty">{esc(s["message"])}</p>'))
            continue
        rows = [[td(r["rank"]), trial_cell(r, s),
                 td(r["text"] or "-", cls="wrap"), td(lr_text(r["lr"]), "lr"), td(pct(r["objective"]), "objective"),
                 _with_ci(r, schema.ID_ACC), _with_ci(r, schema.OOD_ACC_MEAN),
                 Raw(f'<td><span data-key="{schema.OOD_ACC_WORST}">{esc(pct(r[schema.OOD_ACC_WORST]))}</span> '
                     f'<small class="ci">{esc(r["worst_shift"] or "")}</small>{_seeds(r, schema.OOD_ACC_WORST)}</td>'),
                 td(pts(r["effective_robustness"]), "effective_robustness"),
                 td(num(r[schema.ID_ECE]), schema.ID_ECE), td(num(r[schema.OOD_ECE_MEAN]), schema.OOD_ECE_MEAN)] for r in done]
        attrs = [{"data-run-id": r["run_id"], "data-trial": r["number"],
                  "class": "selected" if r["number"] == s["best"] else ("baseline" if r["baseline"] else "")} for r in done]
        body.append(Raw(f'<div class="scroll">{table(head, rows, "leaderboard", attrs)}</div>'))
    return ("completed trials ranked by the study objective (validation data). ID and OOD accuracies are on the "
            "held-out test images; the 95% Wilson interval uses n = the clean test-set size for ID and n = one shifted "
            "set's size for the OOD mean, conservative since the mean pools many (correlated) sets of the same "
            "images. The selected configuration and the best of each baseline family (on validation) are re-trained "
            "with more seeds when study.replicates > 1: under their value, the mean over seeds \u00b1 the 95% t "
            "half-width over seeds (training randomness). Effective robustness is the OOD accuracy above the "
            "accuracy-on-the-line fit. Baselines carry a coloured tag.", Raw("".join(body)))


def shifts_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    fig = figures.fig_severity(summaries, "acc")
    if fig:
        body.append(Raw("<h3>Accuracy versus severity, per shift family</h3>"))
        body.append(fig)
    for s in summaries:
        hm = figures.fig_heatmap(s)
        if hm:
            body.append(Raw(f"<h3>Trial \u00d7 shift accuracy{(': ' + esc(s['name'])) if len(summaries) > 1 else ''}</h3>"))
            body.append(hm)
    if not body:
        body.append(Raw('<p class="empty">No completed trial with shift metrics.</p>'))
    return ("top: mean accuracy over each family's held-out shifts at each severity (0 = the same images, clean) for the "
            "baselines and the best configurations; bottom: every completed trial (rows, best first) on every shift "
            "(columns, accuracy averaged over the severities; '(sel)' marks selection shifts, on validation images). "
            "Red is low accuracy.", Raw("".join(body)))


def _fits(s: dict) -> list[Raw]:
    """The fits table and the effective robustness of each trial, or why there is no fit."""
    fits = [("mean over held-out shifts", s["on_the_line"]["mean"])] + list(s["on_the_line"]["per_shift"].items())
    sel = set(s["shifts"]["selection"])
    rows = [[name + (" (selection, validation images)" if name in sel else ""), num(f["slope"], ".3f"),
             num(f["intercept"], ".3f"), num(f["r2"], ".3f"), f["n"]] for name, f in fits if f]
    if not rows:
        return [Raw('<p class="empty">Needs at least 3 completed trials with different ID accuracies.</p>')]
    done = sorted((r for r in s["trials"] if r.get("rank") and r["effective_robustness"] is not None),
                  key=lambda r: -r["effective_robustness"])
    return [table(["OOD accuracy of", "slope", "intercept", "R\u00b2", "trials"], rows, "fits"),
            Raw("<details><summary>effective robustness per trial (points above the line)</summary>"),
            table(["trial", "role", "strategy", "ID acc (%)", "OOD mean (%)", "eff. robustness (pts)"],
                  [[f"#{r['number']}", td(chips(r, s)), r["text"], pct(r[schema.ID_ACC]), pct(r[schema.OOD_ACC_MEAN]),
                    pts(r["effective_robustness"])] for r in done], "er"),
            Raw("</details>")]


def line_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    main = figures.fig_line(summaries)
    if main:
        body.append(main)
    grid = figures.fig_line_grid(summaries)
    if grid:
        body.append(Raw("<h3>Per held-out shift</h3>"))
        body.append(grid)
    for s in summaries:
        body += [heading(summaries, s)] + _fits(s)
    return ("each point is a trial; both axes are probit-scaled (accuracies clipped to [1/2n, 1 - 1/2n]). Miller et "
            "al. 2021 found OOD accuracy is close to linear in ID accuracy on this scale: a high R\u00b2 means ID "
            "validation predicts OOD accuracy, and points above the line are more robust than their ID accuracy "
            "predicts (effective robustness).", Raw("".join(body)))


def _importance_table(s: dict) -> list[Raw]:
    """fANOVA importance of each hyperparameter axis of the study's strategies (s["axes"])."""
    rows = []
    for param in s["axes"]:
        cells = [param]
        for target in (schema.ID_ACC, schema.OOD_ACC_MEAN):
            imp = s["importances"].get(target, {})
            v = imp.get("values", {}).get(param)
            cells.append(Raw(f'<td class="bar" data-key="importance/{esc(target)}/{esc(param)}">'
                             f'<span style="width:{0 if v is None else round(100 * v)}%"></span>'
                             f'{num(v, ".2f")}</td>'))
        rows.append(cells)
    notes = [f"{t}: {v['note']}" for t, v in s["importances"].items() if v.get("note")]
    about = " ".join(PARAMS[a].note for a in s["axes"] if PARAMS[a].note)  # how conditional axes enter
    return [Raw("<h3>Parameter importance (fANOVA)</h3>"),
            table(["hyperparameter", "importance for ID accuracy", "importance for OOD accuracy"], rows, "imp"),
            Raw(f'<p class="note">{esc("; ".join(notes) if notes else about)}</p>' if notes or about else "")]


def _strategy_table(s: dict) -> list[Raw]:
    """Accuracy per strategy and per tuned group (surgical), ID and OOD; absent for prefix-only studies."""
    if not s.get("per_strategy"):
        return []
    rows = [[g["label"], str(g["n"]), pct(g[schema.ID_ACC]), pct(g[schema.OOD_ACC_MEAN]),
             ", ".join(f"#{n}" for n in g["trials"])] for g in s["per_strategy"]]
    return [Raw("<h3>Which groups to tune: accuracy per strategy and tuned group</h3>"),
            table(["strategy (surgical: the one group tuned, 0 = first)", "trials", "ID acc (%)", "OOD mean (%)",
                   "trials"], rows, "strategies"),
            Raw('<p class="note">Means over completed trials, any learning rate; baselines are prefix trials and '
                'listed apart. Lee et al. 2023 find the first block best for input-level corruptions and the last '
                'layers for label-level shift.</p>')]


def hyper_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        body.append(heading(summaries, s))
        fig = figures.fig_hparams(s)
        if not fig:
            body.append(Raw('<p class="empty">No completed trial.</p>'))
            continue
        body += [fig] + _importance_table(s) + _strategy_table(s)
        ph = figures.fig_pareto_history(s)
        if ph:
            body.append(Raw("<h3>Pareto front (ID versus OOD) and optimization history</h3>"))
            body.append(ph)
            front = [r for r in s["trials"] if r["number"] in s["pareto"]]
            body.append(table(["Pareto trial", "strategy", "lr", "ID acc (%)", "OOD mean (%)"],
                              [[f"#{r['number']}", r["text"], lr_text(r["lr"]), pct(r[schema.ID_ACC]), pct(r[schema.OOD_ACC_MEAN])]
                               for r in front], "pareto"))
    return ("top: ID (upper row) and OOD (lower row) accuracy of every completed trial against each hyperparameter "
            "(axis plots; the selected trial is a star, baselines are coloured). Importances (fANOVA, share of "
            "explained variance) are rough with few trials. The Pareto front holds the trials no other trial beats "
            "on both ID and OOD accuracy.", Raw("".join(body)))


def calibration_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    fig = figures.fig_severity(summaries, "ece")
    body = [fig] if fig else [Raw('<p class="empty">No ECE under shift was logged.</p>')]
    keys = (schema.ID_ECE, schema.ID_NLL, schema.ID_BRIER, schema.OOD_ECE_MEAN, schema.OOD_NLL_MEAN)
    for s in summaries:
        trials = figures.shown(s)
        if not trials:
            continue
        body.append(heading(summaries, s))
        body.append(table(["trial", "role"] + list(keys),
                          [[f"#{r['number']}", td(chips(r, s))] + [td(num(r["final"].get(k)), k) for k in keys] for r in trials],
                          "calib"))
    return ("expected calibration error (15 equal-width bins, lower is better) per shift family against severity (0 "
            "= the same images, clean) for the baselines and the best configurations. Ovadia et al. 2019: calibration usually degrades "
            "as the shift intensifies.", Raw("".join(body)))


def training_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        body.append(heading(summaries, s))
        fig = figures.fig_training(s)
        body.append(fig if fig else Raw('<p class="empty">No per-epoch metrics logged.</p>'))
    return ("per-epoch validation accuracy, validation loss and training loss of every trial: solid completed, dashed "
            "pruned, dotted failed (x marks their last epoch). Baselines and the selected trial are coloured, the rest "
            "grey.", Raw("".join(body)))


def failures_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        bad = [r for r in s["trials"] if r["state"] != "complete"]
        body.append(heading(summaries, s))
        if not bad:
            body.append(Raw('<p class="empty">None: every trial completed.</p>'))
            continue
        body.append(table(["trial", "state", "strategy", "lr", "stopped at epoch", "reason"],
                          [[Raw(f'<td>#{esc(r["number"])} <small class="run">{esc(r.get("run_name") or "")} '
                                f'<span class="run-id">{esc(r.get("run_id") or "")}</span></small></td>'), Raw(f'<td><span class="badge {esc(r["state"])}">{esc(r["state"])}</span></td>'),
                            r["text"] or "-", lr_text(r["lr"]), r["stopped_epoch"] if r["stopped_epoch"] is not None else "-",
                            td(r["reason"] or "-", "reason")] for r in bad], "failures",
                          [{"data-run-id": r["run_id"]} for r in bad]))
    return ("pruned trials were stopped by the pruner (their curves are in Training curves); failed trials raised an "
            "error, whose message is the reason. Neither is ranked.", Raw("".join(body)))


def examples_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for st in studies:
        data = st["parent"]["shift_examples"]
        body.append(heading(studies, st))
        body.append(img(data, f"shift examples of {st['name']}") if data else Raw('<p class="empty">No shift_examples.png logged.</p>'))
    return ("one image per shift (rows; selection shifts act on validation images, test shifts on test images), clean "
            "and at each severity (columns).", Raw("".join(body)))


def metrics_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        trials = figures.shown(s)
        if not trials:
            continue
        # system/* samples (CPU, memory, GPU over time) are not results; MLflow's system-metrics tab shows them
        keys = sorted({k for r in trials for k in r["final"] if not schema.is_system(k)})
        body.append(heading(summaries, s))
        body.append(table(["metric"] + [figures.trial_label(r, s["best"]) for r in trials],
                          [[k] + [td(num(r["final"].get(k), ".4g"), k) for r in trials] for k in keys], "metrics"))
    return ("every final (step 0) metric MLflow holds for the baselines and the best configurations, including those "
            "the sections above do not plot (label shift, corruption errors, timings). The JSON file next to this "
            "page has them for every trial.", Raw("".join(body) or '<p class="empty">No completed trial.</p>'))


# id -> (title, function(studies, summaries) -> (how to read it, body)): the page's sections and contents, in order
SECTIONS = {
    "headline": ("Headline", headline), "provenance": ("Provenance", provenance),
    "leaderboard": ("Leaderboard", leaderboard), "selection": ("Selection", selection_section),
    "learning-curves": ("Learning curves", learning_curves_section),
    "shifts": ("Shifts", shifts_section),
    "on-the-line": ("Accuracy on the line", line_section), "domains": (DOMAINS_TITLE, domains_section),
    "hyperparameters": ("Hyperparameters", hyper_section),
    "calibration": ("Calibration under shift", calibration_section), "training": ("Training curves", training_section),
    "ensembles": ("Weight-space ensembles", ensembles_section),
    "failures": ("Pruned and failed trials", failures_section), "examples": ("Shift examples", examples_section),
    "metrics": ("All final metrics", metrics_section),
}


def render(studies: list[dict], summaries: list[dict], generated: str) -> str:
    """The page. Adds the plotted severity curves to each summary, so the JSON holds them too."""
    for s in summaries:
        s["severity_curves"] = {"note": "mean over each family's held-out shifts; severity 0 = the clean images of the "
                                        "shifted sets (the same images as every severity)",
                                "acc": figures.severity_curves(s, "acc"), "ece": figures.severity_curves(s, "ece")}
        s["heatmap"] = figures.heatmap(s)
    names = " + ".join(s["name"] for s in summaries)
    sub = (f"{'Studies' if len(summaries) > 1 else 'Study'} {names} \u00b7 generated {generated} \u00b7 "
           f"MLflow {summaries[0]['tracking_uri']} \u00b7 numbers also in report.json next to this file")
    how = Raw("start with the Headline (the selected configuration and its checks), then the Leaderboard. ID means "
              "the clean held-out test set; OOD means the held-out test shifts, which never influence selection. "
              "Accuracies are percentages; each section says how to read its figure.")
    return page(SECTIONS, studies, summaries, "Fine-tuning under distribution shift", sub, how)
