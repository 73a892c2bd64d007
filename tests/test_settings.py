"""Settings layering, the seed YAML, presets and the error contract of invalid settings."""

from __future__ import annotations

import pytest

from specdecode.settings import Settings, SettingsError, list_presets, load_settings

SEED_YAML = """\
draft_model: "google/gemma-3-270m-it"
target_model: "google/gemma-3-4b-it"
k: 5
max_new_tokens: 256
max_length: 512
num_samples: 100
dataset: {path: "openai/gsm8k", name: "main"}
batch_size: 4
device: "cuda"
quantized: true
summary_file_name: "my_experiment"
"""


def test_seed_yaml_loads_unchanged(tmp_path):
    p = tmp_path / "seed.yaml"
    p.write_text(SEED_YAML)
    s = load_settings(config=str(p))
    assert s.target == "google/gemma-3-4b-it" and s.draft == "google/gemma-3-270m-it"
    assert (s.k, s.max_new_tokens, s.max_length, s.num_samples, s.batch_size) == (5, 256, 512, 100, 4)
    assert s.dataset.path == "openai/gsm8k" and s.dataset.name == "main" and s.dataset.split == "test"
    assert s.device == "cuda" and s.quantized is True and s.summary_file_name == "my_experiment"


def test_layering_defaults_preset_config_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("k: 7\nmax_new_tokens: 9\n")
    s = load_settings(preset="gemma-4b", config=str(cfg), overrides={"max_new_tokens": 3, "k": None})
    assert s.target == "google/gemma-3-4b-it"  # from the preset
    assert s.k == 7  # config beats preset; a flag left unset (None) changes nothing
    assert s.max_new_tokens == 3  # flags beat everything
    assert s.temperature == 0.0  # default


def test_dataset_flags_merge_into_preset_dataset():
    s = load_settings(preset="gemma-4b", overrides={"dataset.split": "train"})
    assert s.dataset.path == "openai/gsm8k" and s.dataset.name == "main" and s.dataset.split == "train"


def test_presets_are_packaged_and_valid():
    names = list_presets()
    assert {"gemma-4b", "qwen2.5-7b", "qwen2.5-coder-1.5b", "llama-3.1-8b"} <= set(names)
    for name in names:
        s = load_settings(preset=name)
        assert s.target and (s.draft or s.drafter != "model")


def test_k_auto_and_numeric_strings():
    assert Settings(k="auto").k == "auto"
    assert Settings(k="3").k == 3


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"k": 0}, "--k"),
        ({"k": "many"}, "--k"),
        ({"temperature": -1.0}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
        ({"batch_size": 0}, "--batch-size"),
        ({"device": "tpu"}, "--device"),
        ({"drafter": "magic"}, "--drafter"),
    ],
)
def test_invalid_flags_name_the_flag(overrides, needle):
    flags = {"k": "--k", "temperature": "--temperature", "top_p": "--top-p", "batch_size": "--batch-size",
             "device": "--device", "drafter": "--drafter"}
    with pytest.raises(SettingsError) as e:
        load_settings(overrides=overrides, flag_names=flags)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_yaml_key_names_key_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("k: 5\nmax_new_tokens: 8\nbogus_key: 1\n")
    with pytest.raises(SettingsError) as e:
        load_settings(config=str(p))
    assert "bogus_key" in str(e.value) and f"{p}:3" in str(e.value)


def test_malformed_yaml_reports_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("k: 5\ndataset: {path: x\nmax_new_tokens: 3\n")
    with pytest.raises(SettingsError) as e:
        load_settings(config=str(p))
    assert str(p) in str(e.value) and "malformed YAML" in str(e.value)
    assert ":" in str(e.value).split(str(p))[1][:3]  # a line number follows the path


def test_yaml_is_read_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("k: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SettingsError):
        load_settings(config=str(p))


def test_yaml_that_is_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(config=str(p))


def test_early_exit_needs_exit_layer():
    with pytest.raises(Exception, match="exit-layer"):
        Settings(drafter="early-exit")


def test_unknown_preset_lists_builtins():
    with pytest.raises(SettingsError, match="gemma-4b"):
        load_settings(preset="no-such-preset")
