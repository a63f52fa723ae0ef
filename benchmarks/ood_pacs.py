"""Every OOD score on top of several methods, on PACS-100 with the built-in ``lite`` model.

Protocols (``clipadapt.ood.protocols``), 16 shots, seeds 1..3, one train/test split
(split seed 1):

- near OOD: photo, known = dog, elephant, giraffe, guitar; unknown = horse, house, person;
  tested on photo's held-out test split;
- open-set domain generalisation: the same adaptation, tested on every image of
  art_painting, cartoon and sketch;
- far OOD: all 7 PACS classes known on photo, against the 2,000 MNIST digits.

Each score's threshold is calibrated on the few-shot validation set (95% accepted).
Writes ``benchmarks/results/ood_pacs100.json`` (one ``clipadapt.result/1`` record per seed,
protocol and method, plus a summary), ``ood_pacs100.md`` and two figures.

    .venv/bin/python benchmarks/ood_pacs.py            # ~6 min with a warm feature cache
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from clipadapt.atomic import atomic_write, atomic_write_text
from clipadapt.bench.results import base_result, write_result
from clipadapt.data import load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.methods import create_method
from clipadapt.models import create_backend
from clipadapt.ood import DETECTORS, cached_text_encoder, create_detector
from clipadapt.ood.plots import figure_png, roc_curves, score_histogram
from clipadapt.ood.protocols import (
    OpenSetTask,
    class_holdout_task,
    evaluate_open_set,
    extract_task_features,
    far_ood_task,
    task_fit_data,
)
from clipadapt.prompts import class_embeddings, make_prompt_set

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("zeroshot", "gda", "tip_adapter", "linear_probe")
SOURCE, OTHERS = "photo", ("art_painting", "cartoon", "sketch")
METRICS = ("AUROC", "FPR95", "AUPR_IN", "AUPR_OUT", "OSCR", "H_score")


def run_task(task: OpenSetTask, name: str, backend, cache, prompts, seed: int) -> list[dict]:
    """Fit every detector once and every method once; evaluate each pair on every target."""
    features = extract_task_features(task, backend, cache=cache, progress=False)
    text = class_embeddings(backend, task.classnames, prompts)
    data = task_fit_data(task, features, text, backend.logit_scale)
    encode = cached_text_encoder(backend, cache)
    detectors = {n: create_detector(n).fit(data, encode_texts=encode) for n in DETECTORS}
    records = []
    for method_name in METHODS:
        method = create_method(method_name).fit(data)
        evaluation = evaluate_open_set(method, detectors, features.val, features.targets)
        record = base_result(
            task="open_set",
            dataset="pacs100",
            backend=backend,
            metrics=evaluation.metrics,
            protocol={"name": name, **task.describe()},
            method=method_name,
            selected=method.selected,
            seed=seed,
            negative_labels=detectors["neglabel"].info["negative_labels"][:20],
        )
        record["scores_for_plots"] = evaluation.scores  # dropped before writing
        records.append(record)
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict]) -> dict[str, Any]:
    """Mean and std over seeds: summary[protocol][target][method][score][metric] = [m, s]."""
    pooled: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        for target, result in r["metrics"]["targets"].items():
            key = (r["protocol"]["name"], target, r["method"])
            pooled[key]["closed_set_acc"].append(result["closed_set_acc"])
            for score, m in result["scores"].items():
                for metric in METRICS:
                    if metric in m:
                        pooled[key][(score, metric)].append(m[metric])
    summary: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for (protocol, target, method), values in pooled.items():
        for key, vals in values.items():
            if key == "closed_set_acc":
                summary[protocol][target][method]["closed_set_acc"] = mean_std(vals)
            else:
                summary[protocol][target][method].setdefault(key[0], {})[key[1]] = mean_std(vals)
    return summary


def headline(summary: dict) -> dict[str, Any]:
    """Per method: the best score (highest mean AUROC over the four PACS targets) against MCM.

    The issue's target: the best score reaches AUROC >= 0.80 on photo and beats MCM's mean
    AUROC over the other three domains. This is a summary of the test results, not a choice
    made for deployment (a deployment picks its score before seeing test data).
    """
    holdout = summary["class_holdout"]
    out = {}
    for method in METHODS:

        def auroc(score: str, target: str, method: str = method) -> float:
            return holdout[target][method][score]["AUROC"][0]

        scored = [s for s, m in holdout[SOURCE][method].items() if "AUROC" in m]
        others = {s: statistics.fmean(auroc(s, t) for t in OTHERS) for s in scored}
        best = max(scored, key=lambda s: (auroc(s, SOURCE) + 3 * others[s]) / 4)
        out[method] = {
            "best_score": best,
            "best_photo_AUROC": auroc(best, SOURCE),
            "best_others_mean_AUROC": others[best],
            "mcm_photo_AUROC": auroc("mcm", SOURCE),
            "mcm_others_mean_AUROC": others["mcm"],
            "best_on_photo": max(scored, key=lambda s: auroc(s, SOURCE)),
            "target_met": auroc(best, SOURCE) >= 0.80 and others[best] > others["mcm"],
        }
    return out


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def fmt(pair: tuple[float, float] | None) -> str:
    """``mean ± std`` in percent, ``n/a`` for a score that could not run."""
    return "n/a" if pair is None else f"{pct(pair[0])} ± {pct(pair[1])}"


def markdown(summary: dict, head: dict, meta: dict) -> str:
    holdout, far = summary["class_holdout"], summary["far_ood"]
    scores = list(DETECTORS)
    lines = [
        "# OOD and open-set rejection on PACS-100 (built-in `lite` model)",
        "",
        f"Generated by `benchmarks/ood_pacs.py`: {meta['shots']} shots, seeds "
        f"{meta['seeds']}, split seed 1, thresholds calibrated on the few-shot validation set "
        "(95% of it accepted). Mean ± std over seeds, in percent. Scores: higher = more OOD. "
        f"NegLabel vocabulary: {meta['vocabulary']}. `gl_mcm` needs a ViT image tower; `lite` "
        "is a CNN, so it is reported n/a.",
        "",
        "## Headline: best score vs MCM (AUROC)",
        "",
        "Best score: the highest mean AUROC over the four PACS targets (a summary of these "
        "test results, not a deployment choice). Target: best >= 80 on photo and above MCM "
        "on the mean over art_painting, cartoon and sketch.",
        "",
        "| method | best score | photo AUROC | mean AUROC other 3 | MCM photo | "
        "MCM mean other 3 | best on photo alone | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, h in head.items():
        lines.append(
            f"| {method} | {h['best_score']} | {pct(h['best_photo_AUROC'])} | "
            f"{pct(h['best_others_mean_AUROC'])} | {pct(h['mcm_photo_AUROC'])} | "
            f"{pct(h['mcm_others_mean_AUROC'])} | {h['best_on_photo']} | "
            f"{'yes' if h['target_met'] else 'no'} |"
        )
    lines += [
        "",
        "## Near OOD: photo, known dog/elephant/giraffe/guitar, unknown horse/house/person",
        "",
        "| method | closed-set acc | score | AUROC | FPR95 | AUPR_IN | AUPR_OUT | OSCR | H-score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        row = holdout[SOURCE][method]
        for score in scores:
            m = row.get(score, {})
            cells = [fmt(m.get(k)) for k in METRICS]
            lines.append(
                f"| {method} | {fmt(row['closed_set_acc'])} | {score} | {' | '.join(cells)} |"
            )
    lines += [
        "",
        "## Open-set domain generalisation: adapted on photo, tested on the other domains",
        "",
        "AUROC per domain, and the mean over the three of AUROC, FPR95 and H-score.",
        "",
        "| method | score | art_painting | cartoon | sketch | mean AUROC | mean FPR95 | "
        "mean H-score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        for score in scores:
            per = [holdout[t][method].get(score, {}) for t in OTHERS]
            if not all("AUROC" in p for p in per):
                lines.append(f"| {method} | {score} | n/a | n/a | n/a | n/a | n/a | n/a |")
                continue
            means = [
                pct(statistics.fmean(p[k][0] for p in per)) for k in ("AUROC", "FPR95", "H_score")
            ]
            cells = [fmt(p["AUROC"]) for p in per]
            lines.append(f"| {method} | {score} | {' | '.join(cells)} | {' | '.join(means)} |")
    lines += [
        "",
        "## Far OOD: PACS photo (7 classes known) vs MNIST digits",
        "",
        "| method | closed-set acc | score | AUROC | FPR95 | AUPR_IN | AUPR_OUT |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        row = far["mnist"][method]
        for score in scores:
            m = row.get(score, {})
            cells = [fmt(m.get(k)) for k in METRICS[:4]]
            lines.append(
                f"| {method} | {fmt(row['closed_set_acc'])} | {score} | {' | '.join(cells)} |"
            )
    lines += ["", f"Wall time: {meta['wall_s']:.0f} s on {meta['threads']} CPU threads.", ""]
    return "\n".join(lines)


def save_figures(records: list[dict], out: Path) -> list[str]:
    """ROC curves and a histogram for zero-shot on photo near OOD (seed 1)."""
    first = next(
        r
        for r in records
        if r["seed"] == 1 and r["method"] == "zeroshot" and r["protocol"]["name"] == "class_holdout"
    )
    photo = first["scores_for_plots"][SOURCE]
    roc = roc_curves(photo, title="zero-shot lite, PACS photo near OOD (seed 1)")
    threshold = first["metrics"]["targets"][SOURCE]["scores"]["knn"]["threshold"]
    hist = score_histogram(*photo["knn"], title="knn, photo", threshold=threshold)
    names = ["ood_pacs100_photo_roc.png", "ood_pacs100_photo_knn_hist.png"]
    for name, fig in zip(names, (roc, hist), strict=True):
        atomic_write(out / name, lambda p, fig=fig: p.write_bytes(figure_png(fig)))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    backend, cache = create_backend("lite"), FeatureCache()
    prompts = make_prompt_set("default")
    domains = load_dataset(DATA / "pacs100")
    mnist = load_dataset(DATA / "digits" / "mnist")
    records = []
    for seed in args.seeds:
        holdout = class_holdout_task(domains, sources=[SOURCE], shots=args.shots, seed=seed)
        records += run_task(holdout, "class_holdout", backend, cache, prompts, seed)
        far = far_ood_task(domains[SOURCE], {"mnist": mnist}, shots=args.shots, seed=seed)
        records += run_task(far, "far_ood", backend, cache, prompts, seed)
        print(f"seed {seed} done at {time.perf_counter() - start:.0f} s", flush=True)
    figures = save_figures(records, args.out)
    for r in records:
        del r["scores_for_plots"]
    summary = summarize(records)
    head = headline(summary)
    meta = {
        "shots": args.shots,
        "seeds": args.seeds,
        "methods": list(METHODS),
        "scores": list(DETECTORS),
        "vocabulary": f"lemminflect {version('lemminflect')} English nouns (PyPI)",
        "threads": args.threads,
        "wall_s": time.perf_counter() - start,
        "figures": figures,
    }
    write_result(
        {"benchmark": "ood_pacs100", **meta, "headline": head, "summary": summary, "runs": records},
        args.out / "ood_pacs100.json",
    )
    atomic_write_text(args.out / "ood_pacs100.md", markdown(summary, head, meta))
    for method, h in head.items():
        print(method, {k: round(v, 3) if isinstance(v, float) else v for k, v in h.items()})


if __name__ == "__main__":
    main()
