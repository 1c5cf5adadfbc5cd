"""DPTextPerturber as an MLlib pipeline stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import HashingTF, Tokenizer

from dp_spark.config import EmbeddingsConfig
from dp_spark.errors import ConfigError, InputError, PrivacyRefusal
from dp_spark.mechanisms.base import Mechanism
from dp_spark.spark.perturber import DPTextPerturber, perturb
from dp_spark.spark.statistics import collect_statistics


@pytest.fixture
def perturber(embeddings_files):
    vectors, words = embeddings_files
    stage = DPTextPerturber(inputCol="text", outputCol="text_dp", mechanism="mlap", epsilon=10.0)
    return stage.setEmbeddings(EmbeddingsConfig(source="npy", path=str(vectors), vocabulary=str(words)))


@pytest.mark.e2e
def test_pipeline_with_perturber_and_featurizer(spark, perturber):
    df = spark.createDataFrame([("the movie was terrible",), ("a great film",), (None,)], "text string")
    pipeline = Pipeline(stages=[
        perturber,
        Tokenizer(inputCol="text_dp", outputCol="words"),
        HashingTF(inputCol="words", outputCol="features", numFeatures=64),
    ])
    out = pipeline.fit(df).transform(df.where("text is not null")).collect()
    assert len(out) == 2 and all(len(r.words) == len(r.text.split()) for r in out)
    perturbation = perturb(df, [perturber], statistics=True)
    (statistics, _), = collect_statistics(perturbation.stat_rows, perturbation.outputs, 5000, 1).values()
    assert (statistics.tokens, statistics.rows, statistics.null_rows) == (7, 2, 1)


@pytest.mark.e2e
def test_a_saved_pipeline_keeps_its_embeddings_and_never_the_seed(spark, perturber, tmp_path):
    """Regression: a reloaded stage fell back to the default GloVe 100k."""
    df = spark.createDataFrame([("the movie was terrible",)], "text string")
    perturber.setSeed(b"secret-seed-value")
    model = Pipeline(stages=[perturber]).fit(df)
    first = model.transform(df).first().text_dp
    model.write().overwrite().save(str(tmp_path / "model"))
    for path in (tmp_path / "model").rglob("*"):
        assert not path.is_file() or b"secret-seed-value" not in path.read_bytes()
    loaded = PipelineModel.load(str(tmp_path / "model")).stages[0]
    assert loaded.embeddings_config() == perturber.embeddings_config()
    assert loaded.getOrDefault("embeddingsFingerprint") == perturber.runtime().artifact.fingerprint
    assert loaded.setSeed(b"secret-seed-value").transform(df).first().text_dp == first


def test_a_reloaded_stage_refuses_changed_embeddings(spark, embeddings_files, tmp_path):
    vectors, words = embeddings_files
    copy = tmp_path / "vectors.npy"
    np.save(copy, np.load(vectors))
    stage = DPTextPerturber(inputCol="text", outputCol="text_dp").setEmbeddings(
        EmbeddingsConfig(source="npy", path=str(copy), vocabulary=str(words)))
    stage.transform(spark.createDataFrame([("a film",)], "text string"))
    stage.write().overwrite().save(str(tmp_path / "stage"))
    changed = np.load(copy)
    changed[0] += 1.0
    np.save(copy, changed)
    with pytest.raises(ConfigError, match="the files changed; refusing to perturb with another vocabulary"):
        DPTextPerturber.load(str(tmp_path / "stage")).transform(spark.createDataFrame([("a",)], "text string"))
    metadata = json.loads(next((tmp_path / "stage" / "metadata").glob("part-*")).read_text())
    assert metadata["paramMap"]["outputCol"] == "text_dp"


def test_bad_parameters_and_columns_fail_on_the_driver(spark, perturber):
    df = spark.createDataFrame([("a",)], "text string")
    with pytest.raises(ConfigError, match="unknown parameter"):
        perturber.copy({perturber.mechanismParams: '{"radius": 2}'}).transform(df)
    with pytest.raises(InputError, match="input has no column 'body'"):
        perturber.copy({perturber.inputCol: "body"}).transform(df)
    with pytest.raises(PrivacyRefusal, match="acceptNoGuarantee=True"):
        perturber.copy({perturber.mechanism: "tgumbel", perturber.epsilon: 2000.0}).transform(df)


def test_custom_mechanism_runs_in_the_tasks(spark, embeddings_files):
    """setCustomMechanism: a factory pickled into the tasks replaces the
    registered mechanisms (here: every known word becomes the first word);
    it states no guarantee, so it runs only when that is accepted."""

    class FirstWord(Mechanism):
        name = "first-word"

        def _perturb_in_vocabulary(self, ids, rng):
            return np.zeros_like(ids)

    vectors, words = embeddings_files
    stage = (
        DPTextPerturber(inputCol="text", outputCol="text_dp", mechanism="first-word", acceptNoGuarantee=True,
                        oov="keep")
        .setEmbeddings(EmbeddingsConfig(source="npy", path=str(vectors), vocabulary=str(words)))
        .setCustomMechanism(lambda embeddings: FirstWord(embeddings, 1.0))
    )
    df = spark.createDataFrame([("The movie, zzqx!",)], "text string")
    assert stage.transform(df).first().text_dp == "The the, zzqx!"
