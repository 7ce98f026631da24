"""Pipeline: which methods run, a whole run with a model double of known output, and a
run on real pairs with known affines (success rates, categories, the plot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf.data import make_misaligned_pair
from rfnet_tf.evaluation import methods, outputs, pipeline, sources
from rfnet_tf.evaluation.inference import FINE_CALL, FULL_OUTPUTS, MODEL_CALL, Predictor, WeightsInfo
from rfnet_tf.evaluation.sources import EvaluationSet, Sample
from rfnet_tf.weights import PARTS

from .conftest import make_pair

FULL = WeightsInfo(Path("w"), "weights", PARTS)
COARSE = WeightsInfo(Path("w"), "weights", ("transnet", "affinenet"))
F2M_ONLY = WeightsInfo(Path("w"), "weights", ("f2m",))
SAVED_MODEL = WeightsInfo(Path("sm"), "saved_model", PARTS)


def test_parse_methods():
    assert pipeline.parse_methods(" ecc, rfnet,ecc ") == ("ecc", "rfnet")
    with pytest.raises(pipeline.EvaluationError, match="unknown method"):
        pipeline.parse_methods("rfnet,surf")
    with pytest.raises(pipeline.EvaluationError, match="empty"):
        pipeline.parse_methods(" , ")


def test_plan_with_complete_weights():
    plan = pipeline.plan_methods(pipeline.parse_methods("identity,rfnet,average,ecc"), FULL, True)
    assert plan.registration == ("identity", "rfnet", "ecc")
    assert plan.fusion == ("rfnet", "average")
    assert plan.fusion_registration == "rfnet" and plan.needs_model and not plan.not_evaluated


def test_average_without_rfnet_fuses_the_first_registration():
    plan = pipeline.plan_methods(("ecc", "identity", "average"), None, True)
    assert plan.fusion == ("average",) and plan.fusion_registration == "ecc"
    assert not plan.needs_model
    with pytest.raises(pipeline.EvaluationError, match="registration method"):
        pipeline.plan_methods(("average",), None, True)


def test_coarse_only_weights_drop_default_methods_but_reject_explicit_ones():
    plan = pipeline.plan_methods(("rfnet", "rfnet_coarse", "identity", "average"), COARSE, explicit=False)
    assert plan.registration == ("rfnet_coarse", "identity")
    assert plan.fusion == ("average",) and plan.fusion_registration == "rfnet_coarse"
    assert "f2m" in plan.not_evaluated["rfnet"]
    with pytest.raises(pipeline.EvaluationError, match="cannot evaluate rfnet.*f2m"):
        pipeline.plan_methods(("rfnet", "identity"), COARSE, explicit=True)
    assert pipeline.plan_methods(("rfnet_coarse",), COARSE, True).registration == ("rfnet_coarse",)


def test_f2m_alone_is_a_call_of_its_own_that_f2m_weights_can_run():
    plan = pipeline.plan_methods(("rfnet_fine", "identity", "rfnet_coarse", "average"), FULL, True)
    assert plan.model_calls == (FINE_CALL, MODEL_CALL) and plan.needs_model
    assert plan.fusion_registration == "rfnet_fine" and plan.flow_method == "rfnet_fine"
    # Images show the fusion registration; its flow, or else the first registration's that has one.
    plan = pipeline.plan_methods(("identity", "rfnet_fine"), FULL, True)
    assert plan.fusion == ("rfnet_fine",) and plan.fusion_registration == "identity"
    assert plan.shown_registration == "identity" and plan.flow_method == "rfnet_fine"
    assert pipeline.plan_methods(("rfnet", "rfnet_fine", "rfnet_coarse"), FULL, True).model_calls == (MODEL_CALL, FINE_CALL)
    # An F2M training run without a coarse module exports F2M alone: enough for rfnet_fine.
    plan = pipeline.plan_methods(("rfnet", "rfnet_coarse", "rfnet_fine", "identity"), F2M_ONLY, explicit=False)
    assert plan.registration == ("rfnet_fine", "identity") and set(plan.not_evaluated) == {"rfnet", "rfnet_coarse"}
    with pytest.raises(pipeline.EvaluationError, match=r"cannot evaluate rfnet_fine.*needs \['f2m'\]"):
        pipeline.plan_methods(("rfnet_fine",), COARSE, True)
    assert "rfnet_fine" not in methods.DEFAULT_METHODS


def test_a_saved_model_cannot_run_f2m_alone():
    assert pipeline.plan_methods(("rfnet", "rfnet_coarse"), SAVED_MODEL, True).model_calls == (MODEL_CALL,)
    with pytest.raises(pipeline.EvaluationError, match="cannot evaluate rfnet_fine: sm is a SavedModel, which serves only"):
        pipeline.plan_methods(("rfnet", "rfnet_fine"), SAVED_MODEL, True)


def oracle_predictor(samples: list[Sample], refused: tuple[str, ...] | None = None) -> Predictor:
    """A model double: returns each sample's true affine and flow (and its NIR as the
    fused image), looked up by the NIR it is called with. With ``refused`` (pair names)
    it also reports a guard on its flow that refused those pairs (``fine_kept`` false,
    ``fine_gain`` -0.5; 0.25 elsewhere)."""

    def function(vis, nir, fine=False):
        for sample in samples:
            if np.array_equal(sample.pair.nir, nir.numpy()[0]):
                truth = sample.truth
                flow = np.zeros((sample.pair.height, sample.pair.width, 2))
                if truth.field is not None:
                    flow = truth.field.registration
                outputs = {
                    "registered_coarse": vis, "registered": vis, "mask": nir,
                    "fused": nir * (0.5 if fine else 1.0), "fused_rgb": vis,
                    "affine": np.eye(2, 3)[None] if truth.affine is None else truth.affine.registration[None],
                    "flow": flow[None],
                }
                result = {key: tf.constant(value, tf.float32) for key, value in outputs.items()}
                if refused is not None:
                    kept = sample.name not in refused
                    result["fine_kept"] = tf.constant([kept])
                    result["fine_gain"] = tf.constant([0.25 if kept else -0.5])
                return result
        raise AssertionError("called with an unknown pair")

    return Predictor(FULL, FULL_OUTPUTS, function, fine_function=lambda vis, nir: function(vis, nir, True))


def synthetic_set(rng, names=("one", "cat/two"), kind="both") -> EvaluationSet:
    samples = []
    for name in names:
        truth = make_misaligned_pair(make_pair(rng, (48, 64), name), rng, kind, 4)
        samples.append(Sample(truth.pair, truth))
    return EvaluationSet(samples, "data_dir", "test pairs", False, kind, {"seed": 0})


def test_a_run_writes_every_output_and_scores_a_perfect_model_perfectly(tmp_path, rng):
    dataset = synthetic_set(rng)
    plan = pipeline.plan_methods(("rfnet", "rfnet_coarse", "identity", "ecc", "average"), FULL, False)
    options = pipeline.Options(checkerboard_tiles=4, ecc_levels=2, progress=False)
    out = tmp_path / "out"
    result = pipeline.run_evaluation(dataset, oracle_predictor(dataset.samples), plan, options, out)

    stored = json.loads((out / "results.json").read_text())
    assert stored == json.loads(json.dumps(result.results))
    assert set(stored) == {"registration", "registration_by_category", "fusion", "per_image", "config"}
    rfnet = stored["registration"]["rfnet"]
    assert set(rfnet) == set(methods.REGISTRATION_METRICS)
    assert rfnet["success_2px"] == {"mean": 1.0, "std": 0.0, "n": 2}
    assert rfnet["epe"]["mean"] < 1e-4 and rfnet["rmse"]["mean"] < 1e-3 and rfnet["epe"]["n"] == 2
    assert stored["registration"]["identity"]["epe"]["mean"] > 1.0
    # The coarse module alone leaves the local part of the misalignment.
    assert stored["registration"]["rfnet_coarse"]["epe"]["mean"] > 10 * rfnet["epe"]["mean"]
    assert set(stored["fusion"]) == {"rfnet", "average"}
    assert stored["fusion"]["rfnet"]["en"]["n"] == 2

    assert [record["folder"] for record in stored["per_image"]] == ["images/one", "images/cat__two"]
    for record in stored["per_image"]:
        assert set(record["registration"]["ecc"]) >= {"failed", "reason", "correlation"}
        assert set(record["seconds"]) == {"rfnet_model", "ecc", "metrics", "images"}
        for name in record["files"].values():
            assert (out / record["folder"] / name).is_file()
    assert stored["config"]["methods"]["fusion_registration"] == "rfnet"
    # One pair has a category, the other none: no per-category table.
    assert stored["registration_by_category"] == {}
    assert (out / outputs.SUCCESS_PLOT).is_file() and stored["config"]["success_plot"] == outputs.SUCCESS_PLOT
    assert stored["config"]["metrics"]["conventions"] == "standard"
    markdown = (out / "results.md").read_text()
    assert markdown == result.markdown and "# RFNet evaluation: test pairs" in markdown
    assert "ECC" in result.terminal and "Registration (paper Table 1)" in result.terminal
    # Perfect registration: RFNet's EPE cell is the bold one.
    epe_row = [line for line in markdown.splitlines() if line.startswith("| EPE")][0]
    assert epe_row.split("|")[2].strip().startswith("**")


@pytest.mark.parametrize("refused", [(), ("cat/two",)])
def test_the_guard_on_f2ms_flow_is_reported_per_pair_and_in_the_notes(tmp_path, rng, refused):
    dataset = synthetic_set(rng, kind="local")
    plan = pipeline.plan_methods(("rfnet", "rfnet_fine", "identity"), FULL, True)
    result = pipeline.run_evaluation(
        dataset, oracle_predictor(dataset.samples, refused), plan, pipeline.Options(progress=False), tmp_path / "out"
    )
    for record in result.results["per_image"]:
        for method in ("rfnet", "rfnet_fine"):
            details = record["registration"][method]
            assert details["fine_kept"] == (record["name"] not in refused)
            assert details["fine_gain"] == (-0.5 if record["name"] in refused else 0.25)
        assert "fine_kept" not in record["registration"]["identity"]
    for label in ("RFNet", "RFNet fine (F2M alone)"):
        if refused:
            assert f"{label}: the guard refused F2M's flow on 1 of 2 pair(s)" in result.markdown
            assert "fused them unmoved: cat/two." in result.markdown
        else:
            assert f"{label}: F2M's flow was applied on every pair." in result.markdown


def test_a_run_of_f2m_alone_scores_its_own_flow_and_fusion(tmp_path, rng):
    """Under a local misalignment a perfect F2M alone registers exactly, and its fused
    image (the oracle's NIR / 2) is the one scored and shown."""
    dataset = synthetic_set(rng, kind="local")
    plan = pipeline.plan_methods(("rfnet_fine", "identity", "average"), FULL, True)
    out = tmp_path / "out"
    result = pipeline.run_evaluation(dataset, oracle_predictor(dataset.samples), plan, pipeline.Options(progress=False), out)
    stored = result.results
    fine = stored["registration"]["rfnet_fine"]
    assert fine["epe"]["mean"] < 1e-4 and fine["rmse"]["mean"] < 1e-3
    assert stored["registration"]["identity"]["epe"]["mean"] > 0.1
    assert list(stored["fusion"]) == ["rfnet_fine", "average"]
    record = stored["per_image"][0]
    assert set(record["seconds"]) == {"rfnet_fine_model", "metrics", "images"}
    sample = dataset.samples[0]
    fine_call = {FINE_CALL: {"flow": sample.truth.field.registration}}
    base = methods.apply_registration(sample, methods.register("rfnet_fine", sample, fine_call))
    half_nir = 127.5 * sample.pair.nir[..., 0].astype(np.float64)
    expected = methods.fusion_scores(base, sample.pair.nir, half_nir, paper_conventions=False)
    assert record["fusion"]["rfnet_fine"] == pytest.approx(expected)
    assert stored["config"]["images"] == {"registration": "rfnet_fine", "fusion": "rfnet_fine", "flow": "rfnet_fine", "checkerboard_tiles": 8}
    assert "flow" in record["files"] and "RFNet fine (F2M alone)" in result.markdown


def test_a_failing_run_leaves_no_results(tmp_path, rng):
    dataset = synthetic_set(rng)

    def broken(vis, nir):
        raise RuntimeError("inference failed")

    plan = pipeline.plan_methods(("rfnet", "identity"), FULL, True)
    with pytest.raises(RuntimeError):
        pipeline.run_evaluation(
            dataset, Predictor(FULL, FULL_OUTPUTS, broken), plan, pipeline.Options(progress=False), tmp_path / "out"
        )
    assert list(tmp_path.iterdir()) == []


def test_real_pairs_report_only_image_similarity(tmp_path, rng):
    dataset = EvaluationSet([Sample(make_pair(rng, (40, 48), "p"))], "pair", "one pair", False, None, {})
    plan = pipeline.plan_methods(("identity", "average"), None, True)
    result = pipeline.run_evaluation(dataset, None, plan, pipeline.Options(progress=False), tmp_path / "o")
    assert set(result.results["registration"]["identity"]) == {"psnr", "ssim"}
    not_applicable = result.results["config"]["metrics"]["registration_not_applicable"]
    assert set(not_applicable) == {"rmse", "mae", "mee", *methods.SUCCESS_METRICS, "epe"}
    # Without landmarks, no success rates and no plot of them.
    assert result.results["config"]["success_plot"] is None
    assert not (tmp_path / "o" / outputs.SUCCESS_PLOT).exists()
    assert result.results["config"]["weights"] is None
    files = result.results["per_image"][0]["files"]
    assert "flow" not in files and "fused_rgb" in files


def test_a_run_on_pairs_with_known_affines_reports_success_rates_by_category(
    tmp_path, known_affine_dir
):
    dataset = sources.known_affine_folder(sources.Folder(known_affine_dir))
    plan = pipeline.plan_methods(("identity", "sift", "ecc", "laplacian", "average"), None, True)
    options = pipeline.Options(ecc_levels=2, progress=False)
    result = pipeline.run_evaluation(dataset, None, plan, options, tmp_path / "out")
    stored = result.results
    per_image = stored["per_image"]
    assert [record["category"] for record in per_image] == ["field", "field", "forest"]
    for method in ("identity", "sift"):
        rmse = [record["registration"][method]["rmse"] for record in per_image]
        for threshold, metric in zip(methods.SUCCESS_THRESHOLDS_PX, methods.SUCCESS_METRICS):
            share = np.mean([value < threshold for value in rmse])
            assert stored["registration"][method][metric]["mean"] == pytest.approx(share)
        field = stored["registration_by_category"]["field"][method]
        assert field["rmse"]["mean"] == pytest.approx(np.mean(rmse[:2]))
        assert field["success_5px"]["n"] == 2
    assert stored["registration"]["sift"]["success_2px"]["mean"] == 1.0
    assert stored["registration"]["identity"]["success_10px"]["mean"] == 0.0
    assert set(stored["registration_by_category"]) == {"field", "forest"}
    assert set(per_image[0]["registration"]["sift"]) >= {"failed", "reason", "matches", "inliers"}
    assert set(per_image[0]["seconds"]) == {"ecc", "sift", "metrics", "images"}
    config = stored["config"]
    assert config["sift"]["failures"] == 0 and config["sift"]["representation"] == "intensity"
    assert config["data"]["source"] == "known_affine" and "epe" in config["metrics"]["registration"]
    assert list(stored["fusion"]) == ["laplacian", "average"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert f"]({outputs.SUCCESS_PLOT})" in markdown and (tmp_path / "out" / outputs.SUCCESS_PLOT).is_file()
    assert "### Registration by category" in markdown and "| forest (n=1): pairs < 5 px" in markdown
    assert "Registration by category" in result.terminal and "SIFT affine found an affine" in result.terminal
    assert "9x9 grid" in result.terminal
