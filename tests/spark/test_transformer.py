"""DPTextPerturber as an MLlib pipeline stage."""

from __future__ import annotations

import json

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.feature import HashingTF, Tokenizer

from dp_spark.config import EmbeddingsConfig
from dp_spark.spark.perturber import DPTextPerturber


@pytest.fixture
def perturber(embeddings_files):
    vectors, words = embeddings_files
    stage = DPTextPerturber(inputCol="text", outputCol="text_dp", mechanism="mlap", epsilon=10.0)
    return stage.setEmbeddings(EmbeddingsConfig(source="npy", path=str(vectors), vocabulary=str(words)))


def test_pipeline_with_perturber_and_featurizer(spark, perturber):
    df = spark.createDataFrame([("the movie was terrible",), ("a great film",), (None,)], "text string")
    pipeline = Pipeline(stages=[
        perturber,
        Tokenizer(inputCol="text_dp", outputCol="words"),
        HashingTF(inputCol="words", outputCol="features", numFeatures=64),
    ])
    out = pipeline.fit(df).transform(df.where("text is not null")).collect()
    assert len(out) == 2 and all(len(r.words) == len(r.text.split()) for r in out)
    assert perturber.statistics.value.tokens == 7


def test_saved_stage_keeps_params_but_never_the_seed(spark, perturber, tmp_path):
    perturber.setSeed(b"secret-seed-value")
    perturber.write().overwrite().save(str(tmp_path / "stage"))
    for path in (tmp_path / "stage").rglob("*"):
        assert not path.is_file() or b"secret-seed-value" not in path.read_bytes()
    loaded = DPTextPerturber.load(str(tmp_path / "stage"))
    assert loaded.getOrDefault("mechanism") == "mlap" and loaded.getOrDefault("epsilon") == 10.0
    (part,) = (tmp_path / "stage" / "metadata").glob("part-*")
    metadata = json.loads(part.read_text())
    assert metadata["paramMap"]["outputCol"] == "text_dp"


def test_bad_parameters_fail_on_the_driver(spark, perturber):
    df = spark.createDataFrame([("a",)], "text string")
    with pytest.raises(ValueError, match="unknown parameter"):
        perturber.copy({perturber.mechanismParams: '{"radius": 2}'}).transform(df)
    with pytest.raises(ValueError, match="input has no column 'body'"):
        perturber.copy({perturber.inputCol: "body"}).transform(df)


def test_custom_mechanism_runs_in_the_tasks(spark, embeddings_files):
    """setCustomMechanism: a factory pickled into the tasks replaces the
    registered mechanisms (here: every known word becomes the first word)."""
    import numpy as np

    from dp_spark.mechanisms.base import Mechanism

    class FirstWord(Mechanism):
        name = "first-word"

        def _perturb_in_vocabulary(self, ids, rng):
            return np.zeros_like(ids)

    vectors, words = embeddings_files
    stage = (
        DPTextPerturber(inputCol="text", outputCol="text_dp", mechanism="first-word")
        .setEmbeddings(EmbeddingsConfig(source="npy", path=str(vectors), vocabulary=str(words)))
        .setCustomMechanism(lambda embeddings: FirstWord(embeddings, 1.0))
    )
    df = spark.createDataFrame([("The movie, zzqx!",)], "text string")
    assert stage.transform(df).first().text_dp == "The the, zzqx!"
