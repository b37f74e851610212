"""A YAML syntax error in any config file names the file and the line PyYAML marked."""

from __future__ import annotations

import pytest

from radproto.adapter.settings import load_settings
from radproto.model.errors import ConfigError
from radproto.training.config import load_config

BROKEN = "mllp_port: 2575\nhost: [unclosed\n"


@pytest.mark.parametrize("load", [load_settings, load_config])
def test_yaml_syntax_error_names_file_and_line(tmp_path, load):
    path = tmp_path / "config.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == str(path)
    assert info.value.line == 3
    assert "not valid YAML" in str(info.value) and str(path) in str(info.value)
