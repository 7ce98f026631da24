"""The evaluation run: which methods can run, the loop over pairs, and the written results.

:func:`plan_methods` decides what is evaluated from the requested methods and the
weights at hand; :func:`run_evaluation` evaluates every pair (one RFNet call per pair
feeds both ``rfnet`` and ``rfnet_coarse``; ``rfnet_fine``, F2M alone, is a second call),
writes the per-pair images, results.json
and results.md into a staged directory that replaces ``out_dir`` only when complete
(``outputs.staged_directory``), and returns the report.

Incomplete weights (decision): a weights directory from an earlier training stage may
hold only the coarse module. Methods it cannot run are then dropped with a note in
the terminal and in results.md / results.json when they were requested by default, and
rejected (an error, nothing evaluated) when the user named them in ``--methods``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import logging
from tqdm import tqdm

from rfnet_tf import baselines, visualize
from rfnet_tf.evaluation import methods as methods_lib
from rfnet_tf.evaluation import outputs, report, sources
from rfnet_tf.evaluation.inference import (
    SAVED_MODEL_CALLS,
    SAVED_MODEL_FORMAT,
    Predictor,
    WeightsInfo,
)
from rfnet_tf.evaluation.sources import EvaluationSet, Sample
from rfnet_tf.networks.refine import LOW_CONFIDENCE_OVERLAP, SIMILARITIES

CONVENTIONS = {
    False: "standard (ARCHITECTURE section 6; e.g. fusion PSNR with peak 255 on 0-255 luma)",
    True: (
        "paper (--paper_conventions: fusion STD, AG and PSNR as in the paper's Table 2, "
        "e.g. fusion PSNR about 48 dB above the standard one; see rfnet_tf.metrics.fusion)"
    ),
}


class EvaluationError(ValueError):
    """The requested evaluation cannot run (flags, methods or weights do not fit)."""


@dataclasses.dataclass(frozen=True)
class MethodPlan:
    """What is evaluated.

    Attributes:
      registration: registration methods, in table order.
      fusion: fusion methods, in table order.
      fusion_registration: the registration whose VIS every fusion method fuses (and
        whose results the per-pair images show); ``None`` without fusion methods.
      not_evaluated: ``{method: reason}`` for requested methods dropped.
    """

    registration: tuple[str, ...]
    fusion: tuple[str, ...]
    fusion_registration: str | None
    not_evaluated: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def model_calls(self) -> tuple[str, ...]:
        """The ``inference.Predictor`` calls the methods read, in order."""
        methods = [m for m in self.registration + self.fusion if m in methods_lib.MODEL_CALLS]
        return tuple(dict.fromkeys(methods_lib.MODEL_CALLS[method] for method in methods))

    @property
    def needs_model(self) -> bool:
        return bool(self.model_calls)

    @property
    def shown_registration(self) -> str:
        """The registration whose results the per-pair images show."""
        return self.fusion_registration or self.registration[0]

    @property
    def flow_method(self) -> str | None:
        """The registration whose dense flow the per-pair images show: the shown one if
        it has a flow, else the first that has one (``None``: none has)."""
        with_flow = [m for m in self.registration if m in methods_lib.FLOW_METHODS]
        if self.shown_registration in with_flow:
            return self.shown_registration
        return with_flow[0] if with_flow else None


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings of a run besides the data, the model and the methods."""

    paper_conventions: bool = False
    checkerboard_tiles: int = 8
    ecc_levels: int = baselines.ECC_LEVELS
    progress: bool = True


@dataclasses.dataclass(eq=False)
class Report:
    """A finished run: the results.json content, results.md and the terminal text."""

    results: dict
    markdown: str
    terminal: str
    out_dir: Path


def parse_methods(text: str) -> tuple[str, ...]:
    """``"rfnet, ecc"`` -> ``("rfnet", "ecc")``: known names, order kept, duplicates dropped."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise EvaluationError(f"--methods is empty; choose from {','.join(methods_lib.METHODS)}")
    unknown = [name for name in names if name not in methods_lib.METHODS]
    if unknown:
        raise EvaluationError(
            f"--methods: unknown method(s) {', '.join(unknown)}; "
            f"choose from {','.join(methods_lib.METHODS)}"
        )
    return tuple(dict.fromkeys(names))


def model_requirement(method: str, weights: WeightsInfo | None) -> str | None:
    """Why ``weights`` cannot run ``method`` (``None``: it can, or needs no model)."""
    needed = methods_lib.MODEL_PARTS.get(method)
    if needed is None:
        return None
    if weights is None:
        return f"{method} needs RFNet weights"
    call = methods_lib.MODEL_CALLS[method]
    if weights.format == SAVED_MODEL_FORMAT and call not in SAVED_MODEL_CALLS:
        return (
            f"{weights.path} is a SavedModel, which serves only the whole model's call, not "
            f"{method}'s; use the weights directory it was exported from"
        )
    missing = [part for part in needed if part not in weights.parts]
    if not missing:
        return None
    return (
        f"{weights.path} holds {list(weights.parts) or 'no parts'}, but {method} needs "
        f"{list(needed)} (missing {missing})"
    )


def plan_methods(
    requested: Sequence[str], weights: WeightsInfo | None, explicit: bool
) -> MethodPlan:
    """The methods to evaluate.

    Args:
      requested: method names (:func:`parse_methods`).
      weights: what the weights hold (``None`` when no requested method needs them).
      explicit: the user named the methods (``--methods`` given), so a method the
        weights cannot run is an error rather than a dropped column.

    Raises:
      EvaluationError: an explicitly requested method cannot run, ``average`` has no
        registration to fuse, or nothing is left to evaluate.
    """
    not_evaluated = {}
    for method in requested:
        reason = model_requirement(method, weights)
        if reason is not None:
            if explicit:
                raise EvaluationError(f"cannot evaluate {method}: {reason}; drop it from --methods")
            not_evaluated[method] = reason
    remaining = [method for method in requested if method not in not_evaluated]
    registration = tuple(m for m in remaining if m in methods_lib.REGISTRATION_METHODS)
    fusion = tuple(m for m in remaining if m in methods_lib.FUSION_METHODS)
    if fusion and not registration:
        raise EvaluationError(
            "--methods: fusion needs a registration method to fuse the registered VIS "
            f"({', '.join(methods_lib.REGISTRATION_METHODS)})"
        )
    if not registration:
        raise EvaluationError("no method left to evaluate: " + "; ".join(not_evaluated.values()))
    fusion_registration = None
    if fusion:
        fusion_registration = "rfnet" if "rfnet" in registration else registration[0]
    return MethodPlan(registration, fusion, fusion_registration, not_evaluated)


def evaluate_sample(
    sample: Sample, predictor: Predictor | None, plan: MethodPlan, options: Options
) -> tuple[dict, dict]:
    """Evaluates one pair.

    Returns:
      ``(record, images)``: the per-pair record of results.json (without ``folder`` /
      ``files``) and the arrays :func:`outputs.save_pair_images` needs.
    """
    pair = sample.pair
    seconds = {}
    predictions = {}
    for call in plan.model_calls:
        start = time.perf_counter()
        predictions[call] = predictor(pair.vis, pair.nir, call, moving_mask=sample.moving_mask)
        seconds[f"{call}_model"] = time.perf_counter() - start
    start = time.perf_counter()
    truth = methods_lib.ground_truth(sample)
    registered = {}
    registration_record = {}
    for method in plan.registration:
        registration = methods_lib.register(method, sample, predictions, options.ecc_levels)
        registered[method] = methods_lib.apply_registration(sample, registration, truth)
        registration_record[method] = {**registered[method].metrics, **registration.details}
        if method in methods_lib.FALLIBLE_METHODS:
            seconds[method] = registration.seconds
            registration_record[method].update(failed=registration.failed, reason=registration.reason)
        if registration.details.get("unsure"):
            logging.warning("%s: %s", pair.name, unsure_text(method, registration.details))
    fusion_record = {}
    fused_images = {}
    if plan.fusion:
        base = registered[plan.fusion_registration]
        for method in plan.fusion:
            fused = methods_lib.fuse(method, base, pair.nir, predictions)
            fused_images[method] = fused
            fusion_record[method] = methods_lib.fusion_scores(
                base, pair.nir, fused, options.paper_conventions
            )
    baseline_seconds = sum(seconds.get(method, 0.0) for method in methods_lib.FALLIBLE_METHODS)
    seconds["metrics"] = time.perf_counter() - start - baseline_seconds

    shown = plan.shown_registration
    flow_method = plan.flow_method
    images = {
        "moving_vis": pair.vis,
        "nir": pair.nir,
        "registered_vis": registered[shown].vis,
        "registration_method": shown,
        "fused_rgb": None,
        "fusion_method": None,
        "flow": None if flow_method is None else registered[flow_method].registration.flow,
        "flow_method": flow_method,
    }
    if plan.fusion:
        fusion_method = plan.fusion[0]
        images["fusion_method"] = fusion_method
        images["fused_rgb"] = methods_lib.fusion_rgb(
            fusion_method, fused_images[fusion_method], registered[shown].vis, predictions
        )
    record = {
        "name": pair.name,
        "category": sample.category,
        "height": pair.height,
        "width": pair.width,
        "registration": registration_record,
        "fusion": fusion_record,
        "seconds": seconds,
    }
    return record, images


# The thresholds below which the coarse search flags its result (refine.Confidence).
THRESHOLDS_TEXT = (
    " or ".join(f"{name} {similarity.low_confidence}" for name, similarity in SIMILARITIES.items())
    + f" (the search's similarity), overlap {LOW_CONFIDENCE_OVERLAP}"
)


def unsure_text(method: str, details: dict) -> str:
    """Why a coarse registration is flagged as unsure (its confidence, the thresholds)."""
    return (
        f"the {method} registration is unsure (similarity {_two(details['coarse_ncc'])} of "
        f"the translated pair, overlap {_two(details['coarse_overlap'])}; flagged below "
        f"{THRESHOLDS_TEXT}): check it"
    )


def _two(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _notes(
    dataset: EvaluationSet, plan: MethodPlan, per_image: list[dict], summary: dict
) -> list[str]:
    """The notes under the tables: data, regions, dropped methods, ECC, fusion, nulls."""
    notes = []
    if dataset.simulated:
        notes.append(
            "SIMULATED data: the NIR images are simulated from RGB photographs "
            "(rfnet_tf.data.simulate_nir); the numbers say nothing about real VIS-NIR data."
        )
    if dataset.source == "known_affine":
        side = sources.GRID_POINTS_PER_SIDE
        notes.append(
            "Real pairs whose NIR was warped by a stored affine M (known-affine layout): "
            f"landmark errors over a {side}x{side} grid of NIR pixels spanning the image corner "
            "to corner, keeping the points q whose true source M^-1 q lies inside the VIS; the "
            "error of a point is |T(q) - M^-1 q| in VIS px for the method's backward map T "
            "(RMSE, MAE = max, MEE = median over each pair's points); EPE, the mean of that "
            "error over every NIR pixel whose true source lies inside the VIS."
        )
    elif dataset.misalignment is not None:
        notes.append(
            f"Synthetic {dataset.misalignment} misalignment with exact ground truth: landmark "
            "errors (RMSE, MAE = max, MEE = median over each pair's landmarks, fixed-frame px) "
            "and EPE (mean end-point error of the whole registration against the true one, px, "
            "over the fixed pixels whose true correspondence lies on moving-image content)."
        )
    elif dataset.has_landmarks:
        notes.append(
            "Real misalignment; landmark errors (RMSE, MAE = max, MEE = median, fixed-frame "
            "px) from the landmark files; no EPE (no ground-truth field)."
        )
    else:
        notes.append(
            "Real pair with unknown misalignment: no landmarks, so only PSNR and SSIM "
            "(image-level similarity of the registered VIS luma and the NIR) are reported."
        )
    notes.append(
        "Registration PSNR / SSIM use the fixed pixels where the registered VIS shows "
        "moving-image content; fusion metrics are computed on the whole fused image "
        "(0-255 luma)."
    )
    if dataset.has_landmarks:
        thresholds = ", ".join(str(t) for t in methods_lib.SUCCESS_THRESHOLDS_PX)
        notes.append(
            f"Success rates: the share of pairs whose landmark RMSE is below {thresholds} px "
            f"(pairs with an RMSE); {outputs.SUCCESS_PLOT} plots the share within every "
            "error, one line per method."
        )
    for method, reason in plan.not_evaluated.items():
        notes.append(f"{method} not evaluated: {reason}.")
    for method in methods_lib.FALLIBLE_METHODS:
        if method not in plan.registration:
            continue
        label = report.METHOD_LABELS[method]
        failures = [r for r in per_image if r["registration"][method]["failed"]]
        if failures:
            listing = "; ".join(
                f"{r['name']} ({r['registration'][method]['reason']})" for r in failures
            )
            notes.append(
                f"{label} failed on {len(failures)} of {len(per_image)} pair(s); those pairs "
                f"are registered with the identity and counted in the {label} column: "
                f"{listing}."
            )
        else:
            notes.append(
                f"{label} {methods_lib.SUCCESS_MEANS[method]} on all {len(per_image)} pair(s)."
            )
    for method in methods_lib.CONFIDENT_METHODS:
        if method not in plan.registration:
            continue
        unsure = [r for r in per_image if r["registration"][method].get("unsure")]
        label = report.METHOD_LABELS[method]
        if unsure:
            listing = "; ".join(
                f"{r['name']} (similarity {_two(r['registration'][method]['coarse_ncc'])}, overlap "
                f"{_two(r['registration'][method]['coarse_overlap'])})"
                for r in unsure
            )
            notes.append(
                f"UNSURE: {label}'s coarse registration of {len(unsure)} of {len(per_image)} "
                f"pair(s) is below the search's thresholds ({THRESHOLDS_TEXT}; per_image: "
                f"coarse_ncc, coarse_overlap, unsure); check them: {listing}."
            )
        elif any("unsure" in r["registration"][method] for r in per_image):
            notes.append(
                f"{label}'s coarse registration is above the confidence thresholds "
                f"({THRESHOLDS_TEXT}) on every pair."
            )
    notes.extend(_fine_guard_notes(plan, per_image))
    if plan.fusion:
        if plan.fusion_registration == "rfnet":
            same = "the same registration as RFNet's fusion"
        else:
            same = "rfnet is not evaluated, so the first registration method requested"
        rules = "; ".join(f"{name} = {methods_lib.FUSION_RULES[name]}" for name in plan.fusion)
        notes.append(
            f"Every fusion method fuses the NIR with the VIS registered by "
            f"{plan.fusion_registration} ({same}); {rules}."
        )
    for section in ("registration", "fusion"):
        for method, metrics in summary[section].items():
            for metric, stats in metrics.items():
                missing = len(per_image) - stats["n"]
                if missing:
                    notes.append(
                        f"{section} {metric} of {method}: could not be computed on {missing} "
                        "pair(s) (null in per_image); the table averages the others."
                    )
    return notes


def _fine_guard_notes(plan: MethodPlan, per_image: list[dict]) -> list[str]:
    """One note per flow method whose model guards F2M's flow: on which pairs the flow was
    refused (RFNet's ``fine_min_gain``; per_image: ``fine_gain``, ``fine_kept``)."""
    notes = []
    for method in methods_lib.FLOW_METHODS:
        if method not in plan.registration:
            continue
        details = [r["registration"][method] for r in per_image]
        if not all("fine_kept" in d for d in details):
            continue
        refused = [r["name"] for r, d in zip(per_image, details) if not d["fine_kept"]]
        label = report.METHOD_LABELS[method]
        if refused:
            notes.append(
                f"{label}: the guard refused F2M's flow on {len(refused)} of {len(per_image)} "
                "pair(s), whose flow did not raise the gradient NCC of the registered VIS with "
                "the NIR by the margin (fine_min_gain; per_image: fine_gain, fine_kept); F2M "
                f"fused them unmoved: {', '.join(refused)}."
            )
        else:
            notes.append(f"{label}: F2M's flow was applied on every pair.")
    return notes


def _metric_config(dataset: EvaluationSet, paper_conventions: bool) -> dict:
    applicable = ["psnr", "ssim"]
    not_applicable = {}
    landmark_metrics = methods_lib.LANDMARK_METRICS + methods_lib.SUCCESS_METRICS
    if dataset.has_landmarks:
        applicable = [*landmark_metrics, *applicable]
    else:
        for metric in landmark_metrics:
            not_applicable[metric] = "no landmarks (real pair, misalignment unknown)"
    if dataset.has_ground_truth:
        applicable.append("epe")
    else:
        not_applicable["epe"] = "no ground-truth displacement field (real misalignment)"
    return {
        "conventions": "paper" if paper_conventions else "standard",
        "conventions_description": CONVENTIONS[paper_conventions],
        "registration": applicable,
        "registration_not_applicable": not_applicable,
        "fusion": list(methods_lib.FUSION_METRICS),
        "lower_is_better": sorted(methods_lib.LOWER_IS_BETTER["registration"]),
        "std": "population standard deviation (ddof=0) over pairs; n = pairs averaged",
        "null": "a per-pair value that could not be computed; left out of mean and std",
        "units": (
            "landmark errors and EPE in pixels (fixed-image pixels; moving-image pixels for "
            "the known-affine layout); PSNR in dB; luma on 0-255; a success rate's mean is the "
            "share of pairs"
        ),
    }


def _by_category(dataset: EvaluationSet, plan: MethodPlan, per_image: list[dict]) -> dict:
    """``{category: {method: {metric: summary}}}`` of the landmark RMSE and success rates
    (:data:`report.CATEGORY_METRICS`), when the pairs have landmarks and come from two or
    more categories; else empty."""
    if len(dataset.categories) < 2 or not dataset.has_landmarks:
        return {}
    return {
        category: report.aggregate(
            [record for record in per_image if record["category"] == category],
            "registration",
            plan.registration,
            report.CATEGORY_METRICS,
        )
        for category in dataset.categories
    }


def _save_success_plot(staging: Path, plan: MethodPlan, per_image: list[dict]) -> str | None:
    """Writes the cumulative share of pairs within each landmark RMSE (one line per
    method, ``visualize.cumulative_share_plot``) as :data:`outputs.SUCCESS_PLOT`; returns
    its file name, or ``None`` (nothing written) when no pair has a landmark RMSE."""
    errors = {
        report.METHOD_LABELS[method]: [
            record["registration"][method]["rmse"]
            for record in per_image
            if record["registration"][method].get("rmse") is not None
        ]
        for method in plan.registration
    }
    if not any(errors.values()):
        return None
    plot = visualize.cumulative_share_plot(errors, "landmark RMSE (px)")
    visualize.save_png(staging / outputs.SUCCESS_PLOT, plot)
    return outputs.SUCCESS_PLOT


def run_evaluation(
    dataset: EvaluationSet,
    predictor: Predictor | None,
    plan: MethodPlan,
    options: Options,
    out_dir: str | Path,
    extra_config: dict | None = None,
) -> Report:
    """Evaluates every pair and writes all outputs to ``out_dir`` (all or nothing).

    Writes ``results.json``, ``results.md``, ``images/<pair>/`` (see
    ``outputs.save_pair_images``) and, when the pairs have landmarks, the plot
    :data:`outputs.SUCCESS_PLOT`. The progress bar goes to stderr.
    """
    if plan.needs_model and predictor is None:
        raise EvaluationError("the planned methods need RFNet, but no model was loaded")
    folders = outputs.unique_folder_names([sample.name for sample in dataset.samples])
    per_image = []
    with outputs.staged_directory(out_dir) as staging:
        bar = tqdm(
            list(zip(dataset.samples, folders)),
            desc="evaluating",
            unit="pair",
            file=sys.stderr,
            disable=not options.progress,
        )
        for sample, folder in bar:
            bar.set_postfix_str(sample.name)
            record, images = evaluate_sample(sample, predictor, plan, options)
            start = time.perf_counter()
            relative = Path(outputs.IMAGES_DIR) / folder
            files = outputs.save_pair_images(
                staging / relative, tiles=options.checkerboard_tiles, **images
            )
            record["seconds"]["images"] = time.perf_counter() - start
            record["folder"] = relative.as_posix()
            record["files"] = files
            per_image.append(record)
        bar.close()

        summary = {
            "registration": report.aggregate(
                per_image, "registration", plan.registration, methods_lib.REGISTRATION_METRICS
            ),
            "fusion": report.aggregate(
                per_image, "fusion", plan.fusion, methods_lib.FUSION_METRICS
            ),
        }
        by_category = _by_category(dataset, plan, per_image)
        plot = _save_success_plot(staging, plan, per_image)
        notes = _notes(dataset, plan, per_image, summary)
        conventions = CONVENTIONS[options.paper_conventions]
        config = {
            "data": {
                "source": dataset.source,
                "title": dataset.title,
                "simulated": dataset.simulated,
                "misalignment": dataset.misalignment or "real",
                "pairs": len(dataset.samples),
                **dataset.details,
            },
            "weights": None
            if predictor is None
            else {
                "path": str(predictor.info.path),
                "format": predictor.info.format,
                "parts": list(predictor.info.parts),
                "model": predictor.model_config,
            },
            "methods": {
                "registration": list(plan.registration),
                "fusion": list(plan.fusion),
                "fusion_registration": plan.fusion_registration,
                "not_evaluated": plan.not_evaluated,
            },
            "metrics": _metric_config(dataset, options.paper_conventions),
            **{
                method: {
                    **methods_lib.method_settings(method, options.ecc_levels),
                    "failures": sum(r["registration"][method]["failed"] for r in per_image),
                }
                if method in plan.registration
                else None
                for method in methods_lib.FALLIBLE_METHODS
            },
            "success_plot": plot,
            "images": {
                "registration": plan.shown_registration,
                "fusion": plan.fusion[0] if plan.fusion else None,
                "flow": plan.flow_method,
                "checkerboard_tiles": options.checkerboard_tiles,
            },
            "notes": notes,
            **(extra_config or {}),
        }
        results = {
            **summary,
            "registration_by_category": by_category,
            "per_image": per_image,
            "config": config,
        }
        markdown = report.results_markdown(
            dataset.title, summary, conventions, notes, len(dataset.samples), by_category, plot
        )
        report.write_json(staging / outputs.RESULTS_JSON, results)
        report.write_text(staging / outputs.RESULTS_MD, markdown)
    terminal = report.terminal_report(dataset.title, summary, conventions, notes, by_category)
    return Report(results, markdown, terminal, Path(out_dir))

