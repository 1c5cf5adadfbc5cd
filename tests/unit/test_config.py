from __future__ import annotations

from pathlib import Path

import pytest

from dp_spark.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def minimal(**overrides):
    document = {
        "input": {"path": "in.parquet"},
        "output": {"root": "out"},
        "columns": [{"name": "text", "mechanism": "mlap", "epsilon": 10}],
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            target = document[section][0] if section == "columns" else document.setdefault(section, {})
            target[name] = value
        else:
            document[section] = value
    return document


@pytest.mark.parametrize("path", sorted((REPO / "conf").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    if path.name.startswith("evaluate_"):
        from dp_spark.spark.evaluate import load_evaluation_config

        _, settings = load_evaluation_config(str(path))
        assert settings.epsilons
    else:
        assert load_config(path).columns


def test_defaults_and_types():
    config = parse_config(minimal())
    assert config.input.format == "parquet" and config.output.mode == "overwrite"
    assert config.columns[0].epsilon == 10.0 and isinstance(config.columns[0].epsilon, float)
    assert config.columns[0].output_name == "text"
    assert config.embeddings.vocab_size is None and config.index.neighbours == 64
    assert config.job.min_count == 10 and config.columns[0].oov == "replace"
    assert config.columns[0].accept_no_guarantee is False
    assert parse_config(minimal(columns__output="add")).columns[0].output_name == "text_dp"


def test_options_become_strings_and_overrides_apply():
    config = parse_config(minimal(input__options={"header": True, "sep": "\t", "samplingRatio": 0.5}))
    assert config.input.options == {"header": "true", "sep": "\t", "samplingRatio": "0.5"}
    moved = config.with_overrides("other/path", "other/root")
    assert moved.input.path == "other/path" and moved.output.root == "other/root"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"extra": {}}, r"unknown key\(s\) extra in the top level; allowed: columns, embeddings"),
        ({"input__pathh": "x"}, r"unknown key\(s\) pathh in input; allowed: dataset, format"),
        ({"columns__oov": "skip"}, r"columns\[0\]\.oov must be one of keep, drop, replace; got 'skip'"),
        ({"columns__mechanism": "laplace"}, r"columns\[0\]\.mechanism must be one of custext, diffractor, kde, mahalanobis, mlap, santext, tem, tgumbel, vickrey; got 'laplace'"),
        ({"columns__epsilon": -1}, r"columns\[0\]\.epsilon must be positive, got -1"),
        ({"columns__epsilon": "10"}, r"columns\[0\]\.epsilon must be a number, got '10'"),
        ({"columns__params": {"radius": 1}}, r"unknown parameter\(s\) radius for mechanism 'mlap'; allowed: index_type, max_distance"),
        ({"index__type": "annoy"}, r"index\.type must be one of flat, hnsw, ivf; got 'annoy'"),
        ({"index__neighbours": 0}, r"index\.neighbours must be positive"),
        ({"index__neighbours": 200000}, r"index\.neighbours = 200000 is more than 4096.*149\.0 GiB"),
        ({"job__udf": "map"}, r"job\.udf was removed"),
        ({"columns__params": {"beta": 2.0}, "columns__mechanism": "tem"}, r"job\.toml: columns\[0\]: mechanism 'tem': beta must be in \[0, 1\], got 2\.0"),
        ({"columns__epsilon": float("inf")}, r"columns\[0\]\.epsilon must be finite"),
        ({"output__root": ""}, r"output\.root must name a directory"),
        ({"input__path": "out/table/part"}, r"input\.path out/table/part is the output table or inside it"),
        ({"output__root": "in.parquet/x"}, r"output\.root in\.parquet/x is inside input\.path"),
        ({"job__min_count": True}, r"job\.min_count must be an integer"),
        ({"output__partition_by": "ds"}, r"output\.partition_by must be a list of strings"),
        ({"output__partition_by": ["text"]}, r"partition_by cannot include perturbed column\(s\) text"),
        ({"output__mode": "append"}, r"output\.mode must be one of overwrite, error"),
        ({"input__table": "db.t"}, r"exactly one of input\.path or input\.table"),
        ({"embeddings__source": "npy", "embeddings__path": "m.npy"}, r"embeddings\.vocabulary is required"),
        ({"embeddings__source": "text"}, r"embeddings\.path is required"),
        ({"columns": []}, r"at least one column"),
    ],
)
def test_errors_name_the_key_and_allowed_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(minimal(**overrides), source="job.toml")


def test_missing_sections_and_keys():
    with pytest.raises(ConfigError, match=r"missing section \[output\]"):
        parse_config({"input": {"path": "x"}, "columns": []})
    with pytest.raises(ConfigError, match=r"missing required key columns\[0\]\.epsilon"):
        parse_config(minimal(columns=[{"name": "t", "mechanism": "mlap"}]))
    with pytest.raises(ConfigError, match=r"columns\[1\] and columns\[0\] both write column 'text'"):
        parse_config(minimal(columns=[{"name": "text", "mechanism": "mlap", "epsilon": 1}] * 2))


def test_one_column_into_several_outputs():
    columns = [
        {"name": "text", "mechanism": "mlap", "epsilon": 10, "output_column": "text_mlap"},
        {"name": "text", "mechanism": "tgumbel", "epsilon": 100, "output_column": "text_tgumbel"},
    ]
    config = parse_config(minimal(columns=columns))
    assert [c.output_name for c in config.columns] == ["text_mlap", "text_tgumbel"]
    overwrite = [columns[0], {"name": "text", "mechanism": "mlap", "epsilon": 1}]
    with pytest.raises(ConfigError, match=r"columns\[1\] writes column 'text', which columns\[0\] reads"):
        parse_config(minimal(columns=overwrite))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[input\npath = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


def test_a_dataset_named_by_its_path_is_one_dataset_however_the_path_is_spelled(tmp_path, monkeypatch):
    """Regression: base, base/, file:///.../base and ../data/base were four datasets in the ledger."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    spellings = ["data/base", "data/base/", f"file://{tmp_path}/data/base", "data/../data/base"]
    names = {parse_config(minimal(input__path=spelling, input__dataset=None)).input.dataset_name
             for spelling in spellings}
    assert names == {(tmp_path / "data" / "base").as_uri()}
