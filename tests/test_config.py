"""Workflow config: typed validation, overrides, errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from laion_pipe.config import ConfigError, load_workflow, workflow_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_laion5b_settings():
    wf = workflow_from_dict({})
    assert wf.extract.min_text_chars == 5
    assert wf.download.min_bytes == 5000
    assert wf.cluster.kind == "local"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"download\.timout: unknown key"):
        workflow_from_dict({"download": {"timout": 3}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"extract\.min_text_chars"):
        workflow_from_dict({"extract": {"min_text_chars": "five"}})
    with pytest.raises(ConfigError, match=r"cluster\.kind"):
        workflow_from_dict({"cluster": {"kind": "mainframe"}})


def test_set_overrides_are_parsed_as_yaml_and_validated():
    wf = workflow_from_dict({}, ["download.timeout=2.5", "extract.excluded_extensions=[.svg]", "cluster.n_workers=3"])
    assert wf.download.timeout == 2.5 and wf.extract.excluded_extensions == [".svg"] and wf.cluster.n_workers == 3
    with pytest.raises(ConfigError, match=r"download\.nope: unknown key"):
        workflow_from_dict({}, ["download.nope=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        workflow_from_dict({}, ["download.timeout"])
    with pytest.raises(ConfigError, match=r"name: Input should be a valid string"):
        workflow_from_dict({}, ["name.x=1"])
    with pytest.raises(ConfigError, match="not a section"):
        workflow_from_dict({"name": "a"}, ["name.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_workflow(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extract: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_workflow(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_workflow(lst)


@pytest.mark.parametrize("path", sorted((REPO / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_workflows_validate(path):
    load_workflow(path)
