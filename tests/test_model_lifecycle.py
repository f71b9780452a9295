"""The model lifecycle: `vae models list | describe | promote | rollback | history` and `vae calibrate`,
on a real SQLite MLflow store with two tiny trained versions of a model of their own."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli.calibrate import calibrate_command
from pipeline.cli.models import models_command

NAME = "vae-test-lifecycle"


@pytest.fixture(scope="module")
def two_versions(trained_plain):
    """Versions 1 (holds @champion) and 2 (no alias) of a model of their own, NAME: the session's
    tiny trained model (trained with --fpr 0.01) registered twice, as vae train registers it."""
    from dataclasses import replace

    import mlflow

    from training import registry

    results = []
    for _ in range(2):
        version = str(mlflow.register_model(f"runs:/{trained_plain.run_id}/model", NAME).version)
        tags = registry.version_tags(trained_plain.model_name, trained_plain.version)
        registry.set_version_tags(NAME, version, tags)
        results.append(replace(trained_plain, model_name=NAME, version=version))
    registry.set_alias(NAME, results[0].version)
    return tuple(results)


def invoke(command, args, work_dir):
    result = CliRunner().invoke(command, args, obj={"work_dir": work_dir}, catch_exceptions=False)
    return result


def test_list_shows_every_version_with_its_aliases_scores_and_threshold(two_versions, tmp_path):
    first, second = two_versions
    result = invoke(models_command, ["list", NAME], tmp_path)
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:3] == ["name", "version", "aliases"]
    by_version = {row.split()[1]: row for row in rows}
    assert "@champion" in by_version[first.version] and "@champion" not in by_version[second.version]
    assert f"{first.holdout_neg_elbo:.3f}" in by_version[first.version]
    assert f"{first.threshold:.4f}" in by_version[first.version] and " 0.01 " in by_version[first.version]
    assert first.run_id[:8] in by_version[first.version]
    # aligned: every row's version column ends where the header's does
    end = header.index("version") + len("version")
    assert all(row[end - 1] != " " and row[end] == " " for row in rows)

    everything = invoke(models_command, ["list", "--json"], tmp_path)
    mine = [json.loads(line) for line in everything.output.splitlines() if json.loads(line)["name"] == NAME]
    assert {row["version"] for row in mine} >= {first.version, second.version}
    assert next(r for r in mine if r["version"] == first.version)["threshold"] == pytest.approx(first.threshold)


def test_describe_shows_the_calibration_params_and_signature(two_versions, tmp_path):
    first, _ = two_versions
    result = invoke(models_command, ["describe", NAME, "--alias", "champion"], tmp_path)
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"{NAME} version {first.version}  (@champion")
    calibration = _block(text, "calibration")
    assert "score:" in calibration and "anomaly_score" in calibration
    assert f"{first.threshold:.6g}" in calibration and "target fpr:" in calibration and "0.01" in calibration
    assert f"calibration rows: {len(first.split.calibration)}\n" in calibration
    assert "the calibration part of digits (seed 0)" in calibration
    assert first.run_id in text and "signature in:" in text and "8, 8, 1" in text
    assert "latent_dim:" in text and "holdout_fingerprint:" in text

    detail = json.loads(
        invoke(models_command, ["describe", NAME, "--version", first.version, "--json"], tmp_path).output
    )
    assert detail["calibration"]["threshold"] == pytest.approx(first.threshold)
    assert detail["params"]["epochs"] == "4" and detail["summary"]["aliases"] == ["champion"]


def test_promote_then_rollback_restores_the_previous_holder(two_versions, tmp_path):
    first, second = two_versions
    alias = "staging"
    assert invoke(models_command, ["promote", NAME, first.version, "--alias", alias], tmp_path).exit_code == 0
    promoted = invoke(models_command, ["promote", NAME, second.version, "--alias", alias, "--reason", "try"], tmp_path)
    assert promoted.exit_code == 0, promoted.output
    assert promoted.output.splitlines()[0] == f"{NAME}@{alias}: v{first.version} -> v{second.version}"
    assert _holder(alias) == second.version

    rolled = invoke(models_command, ["rollback", NAME, "--alias", alias], tmp_path)
    assert rolled.exit_code == 0, rolled.output
    assert rolled.output.splitlines()[0] == f"{NAME}@{alias}: v{second.version} -> v{first.version}"
    assert _holder(alias) == first.version

    history = invoke(models_command, ["history", NAME, "--alias", alias], tmp_path).output.splitlines()
    assert [line.split()[3] for line in history[1:]] == ["promote", "promote", "rollback"]
    assert "try" in history[2]
    # the first holder took the alias from nobody: nothing further back
    again = invoke(models_command, ["rollback", NAME, "--alias", alias], tmp_path)
    assert again.exit_code == 1 and "no recorded earlier holder" in again.output


def test_rollback_follows_an_alias_moved_outside_the_history(two_versions, tmp_path):
    from training import registry

    first, second = two_versions
    alias = "outside"
    invoke(models_command, ["promote", NAME, first.version, "--alias", alias], tmp_path)
    registry.set_alias(NAME, second.version, alias)  # as vae train --promote or the MLflow UI would
    rolled = invoke(models_command, ["rollback", NAME, "--alias", alias], tmp_path)
    assert rolled.exit_code == 0, rolled.output
    assert f"v{second.version} -> v{first.version}" in rolled.output and "outside `vae models`" in rolled.output
    assert _holder(alias) == first.version


def test_rollback_without_history_and_bad_names_fail_with_one_clean_line(two_versions, tmp_path):
    first, _ = two_versions
    invoke(models_command, ["promote", NAME, first.version, "--alias", "fresh"], tmp_path)
    cases = {
        ("rollback", NAME, "--alias", "fresh"): "no recorded earlier holder",
        ("rollback", NAME, "--alias", "nowhere"): "has no alias @nowhere",
        ("promote", NAME, "999"): "has no version 999 (versions: 1, 2",
        ("promote", "no-such-model", "1"): "no registered model 'no-such-model'",
        ("describe", NAME, "--alias", "nowhere"): "has no alias @nowhere (aliases: ",
        ("describe", NAME, "--version", "999"): "has no version 999",
        ("promote", NAME, first.version, "--alias", "v7"): "not a usable alias",
    }
    for args, message in cases.items():
        result = invoke(models_command, list(args), tmp_path)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: ") and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_calibrate_registers_a_new_version_with_a_new_threshold_and_the_same_weights(two_versions, tmp_path):
    from training import registry

    first, _ = two_versions
    result_json = tmp_path / "calibrate.json"
    args = ["--model", f"models:/{NAME}/{first.version}", "--fpr", "0.1", "--alias", "recal"]
    result = invoke(calibrate_command, [*args, "--result-json", str(result_json)], tmp_path)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result_json.read_text())
    new = outcome["model_version"]
    assert outcome["status"] == "ok" and outcome["model_name"] == NAME and outcome["source_version"] == first.version
    assert int(new) > int(first.version) and outcome["target_fpr"] == 0.1
    assert outcome["threshold"] < first.threshold  # 10 % above it instead of 1 %
    assert outcome["previous_threshold"] == pytest.approx(first.threshold)
    assert outcome["calibration_rows"] == len(first.split.calibration)
    assert f"{NAME}@recal: (unset) -> v{new}" in result.output

    old = registry.pin(f"models:/{NAME}/{first.version}").load()
    recalibrated = registry.pin(f"models:/{NAME}/{new}").load()
    assert len(old.get_weights()) == len(recalibrated.get_weights())
    for a, b in zip(old.get_weights(), recalibrated.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert old.anomaly == recalibrated.anomaly
    assert recalibrated.calibration["threshold"] == outcome["threshold"]
    assert recalibrated.calibration["target_fpr"] == 0.1

    client = registry.client()
    version = client.get_model_version(NAME, new)
    assert version.tags["recalibrated_from"] == first.version
    assert version.tags["holdout_fingerprint"] == first.holdout_fingerprint  # if-better can still compare
    assert f"Recalibration of version {first.version} at FPR 0.1" in version.description
    run = client.get_run(version.run_id)
    assert run.data.tags["mlflow.parentRunId"] == first.run_id and run.data.params["target_fpr"] == "0.1"

    listed = invoke(models_command, ["list", NAME], tmp_path).output
    row = next(line for line in listed.splitlines() if line.split()[1] == new)
    assert "@recal" in row and f"recalibrated v{first.version}" in row and " 0.1 " in row

    # vae score with the new version flags about 10 % of the calibration part (it was fitted there)
    from pipeline.cli.score import score_command

    out = tmp_path / "scored"
    fast = ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"]
    scored = invoke(
        score_command,
        ["--model", f"models:/{NAME}@recal", "--input", "digits:calibration", "--output", str(out), *fast],
        tmp_path,
    )
    assert scored.exit_code == 0, scored.output
    table = pq.read_table(out / "scores", columns=["is_anomaly", "threshold", "model_version"])
    assert set(table.column("model_version").to_pylist()) == {new}
    rate = float(np.mean(table.column("is_anomaly").to_numpy()))
    assert 0.07 <= rate <= 0.13, rate


def test_calibrate_on_other_data_and_recalibrating_at_the_same_rate_reproduces_the_threshold(two_versions, tmp_path):
    first, _ = two_versions
    same = invoke(calibrate_command, ["--model", f"models:/{NAME}/{first.version}", "--fpr", "0.01"], tmp_path)
    assert same.exit_code == 0, same.output
    assert f"{first.threshold:.4f} at FPR 0.01  ->  {first.threshold:.4f} at FPR 0.01" in same.output

    other = invoke(
        calibrate_command,
        ["--model", f"models:/{NAME}/{first.version}", "--fpr", "0.05", "--data", "digits:holdout"],
        tmp_path,
    )
    assert other.exit_code == 0, other.output
    assert "rows, digits:holdout" in other.output and "holdout flagged" not in other.output
    assert "alias:           none moved" in other.output


def test_calibrate_errors_are_one_clean_line(two_versions, tmp_path):
    first, _ = two_versions
    result_json = tmp_path / "failed.json"
    cases = {
        ("--model", f"models:/{NAME}/{first.version}", "--fpr", "1.5"): "--fpr must be in (0, 1), got 1.5",
        ("--model", f"models:/{NAME}/{first.version}", "--fpr", "0"): "--fpr must be in (0, 1)",
        ("--model", f"models:/{NAME}/999", "--fpr", "0.05"): "has no version 999",
        ("--model", f"models:/{NAME}@nowhere", "--fpr", "0.05"): "has no alias 'nowhere'",
        ("--model", "models:/no-such-model/1", "--fpr", "0.05"): "no registered model named 'no-such-model'",
        ("--model", f"models:/{NAME}/{first.version}", "--fpr", "0.05", "--data", str(tmp_path / "missing")): (
            "no such file or folder"
        ),
    }
    for args, message in cases.items():
        result = invoke(calibrate_command, [*args, "--result-json", str(result_json)], tmp_path)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: ") and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        outcome = json.loads(result_json.read_text())
        assert outcome["status"] == "failed" and message in outcome["reason"]


def _block(text: str, title: str) -> str:
    """The indented lines under ``title:`` in ``vae models describe``'s output."""
    lines = text.split(f"\n{title}:\n", 1)[1].splitlines()
    return "\n".join(line for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("  ")), None)])


def _holder(alias: str) -> str:
    from training import registry

    return str(registry.client().get_model_version_by_alias(NAME, alias).version)


def test_calibrate_refuses_a_calibration_part_that_is_not_the_one_set_aside(two_versions, tmp_path):
    """When the training data changed since the run (its train part's fingerprint differs), the
    "calibration part" could hold rows the weights were fitted on: refused, --data suggested."""
    import mlflow

    from training import registry

    first, _ = two_versions
    client = registry.client()
    source = client.get_model_version(NAME, first.version)
    params = client.get_run(first.run_id).data.params
    with mlflow.start_run(run_name="changed-data") as run:
        mlflow.log_params(params)
        mlflow.set_tag("data_fingerprint", "0123456789abcdef")
    changed = client.create_model_version(NAME, source.source, run_id=run.info.run_id).version
    result = invoke(calibrate_command, ["--model", f"models:/{NAME}/{changed}", "--fpr", "0.05"], tmp_path)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "is not the data the model was trained on" in result.output and "--data" in result.output
    assert "the run's 0123456789abcdef" in result.output


def test_the_alias_history_fits_in_a_tag_of_mlflows_sql_stores():
    from training.aliases import TAG_CHARS, _fitting

    entries = [{"to": str(i), "reason": "r" * 200} for i in range(50)]  # about 11,000 characters
    kept = _fitting(entries)
    assert len(json.dumps(kept)) <= TAG_CHARS < 5000 and kept[-1]["to"] == "49"  # the newest kept
    assert kept == entries[-len(kept) :] and len(kept) < 50
    assert _fitting(entries[:3]) == entries[:3]


def test_a_store_error_is_not_taken_for_no_champion(two_versions, monkeypatch):
    """Only "no such model or alias" means no champion: a store that is locked or down must fail the
    promotion, or any new model would take the alias unopposed."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from training import registry

    assert registry.champion_version(NAME) == two_versions[0].version
    assert registry.champion_version("vae-test-no-such-model") is None
    registry.client().create_registered_model("vae-test-no-alias")  # a model, no champion yet
    assert registry.champion_version("vae-test-no-alias") is None

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", locked)
    with pytest.raises(MlflowException, match="database is locked"):
        registry.champion_version(NAME)
