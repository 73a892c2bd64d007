"""GGUF checkpoints: `--target x.gguf`, a directory plus `--gguf-file`, pairs, inspect, and the
failures (missing file, not a GGUF file, --quantized). Tiny GGUF files are written from a tiny
qwen2 model with the `gguf` package (tests/gguf_fixture.py); nothing is downloaded."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("gguf", reason="the test extra installs gguf")

import torch  # noqa: E402

from fixtures import build_model  # noqa: E402
from gguf_fixture import write_gguf  # noqa: E402
from specdecode.cli.app import main  # noqa: E402

PROMPT = "the cat saw the dog"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, qwen2_tokenizer_dir):
    """A 2-layer qwen2 target and a 1-layer draft over one tokenizer: safetensors dirs, F32 and
    Q8_0 GGUF files of the target, an F32 GGUF of the draft."""
    root = tmp_path_factory.mktemp("gguf")
    target = build_model("qwen2", root / "target", vocab_size=112, num_layers=2, seed=0,
                         tokenizer_dir=qwen2_tokenizer_dir)
    draft = build_model("qwen2", root / "draft", vocab_size=112, num_layers=1, seed=0, from_model=target,
                        noise=0.05)
    files = root / "files"
    files.mkdir()
    return {
        "target_dir": target,
        "target": write_gguf(target, files / "target-f32.gguf"),
        "target_q8": write_gguf(target, files / "target-q8_0.gguf", quantize="Q8_0"),
        "draft": write_gguf(draft, files / "draft-f32.gguf"),
        "files": files,
    }


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


CPU = ("--device", "cpu", "--no-chat", "--max-new-tokens", "8")


def generate_ids(capsys, *args: str) -> list[int]:
    code, out, err = run(capsys, "generate", PROMPT, *args, *CPU, "--json")
    assert code == 0, err
    return json.loads(out)["token_ids"]


def test_gguf_weights_and_tokenizer_round_trip(ggufs):
    from specdecode.models.loading import load_model

    cpu = torch.device("cpu")
    ref = load_model(str(ggufs["target_dir"]), device=cpu, dtype=torch.float32)
    got = load_model(str(ggufs["target"]), device=cpu, dtype=torch.float32)
    ids = ref.tokenizer(PROMPT)["input_ids"]
    assert got.tokenizer(PROMPT)["input_ids"] == ids  # the tokenizer comes from the file
    x = torch.tensor([ids])
    assert torch.equal(ref.model(x).logits, got.model(x).logits)  # F32 GGUF: exactly the same weights
    half = load_model(str(ggufs["target"]), device=cpu, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16 and half.name == str(ggufs["target"])


def test_generate_from_a_gguf_file_matches_its_safetensors_twin(capsys, ggufs):
    ref = generate_ids(capsys, "--target", str(ggufs["target_dir"]), "--drafter", "none")
    assert generate_ids(capsys, "--target", str(ggufs["target"]), "--drafter", "ngram") == ref
    # a GGUF pair with the model drafter: lossless against the target alone
    assert generate_ids(capsys, "--target", str(ggufs["target"]), "--draft", str(ggufs["draft"])) == ref
    # a directory plus --gguf-file (applies to the GGUF side only)
    assert generate_ids(capsys, "--target", str(ggufs["files"]), "--gguf-file", ggufs["target"].name,
                        "--drafter", "none") == ref


def test_inspect_says_gguf_and_its_quantization(capsys, ggufs):
    code, out, err = run(capsys, "inspect", "--target", str(ggufs["target_q8"]), "--draft", str(ggufs["draft"]),
                         "--device", "cpu", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    t, d = report["target"], report["draft"]
    assert t["format"] == "gguf" and t["gguf"]["quantization"] == "Q8_0"
    assert t["gguf"]["architecture"] == "qwen2" and t["gguf"]["tensor_types"]["Q8_0"] > 0
    assert t["stored_dtype"] == "GGUF Q8_0"
    assert d["gguf"]["quantization"] == "F32"
    assert report["compatible"] is True
    code, out, err = run(capsys, "inspect", "--target", str(ggufs["target_q8"]), "--drafter", "ngram",
                         "--device", "cpu")
    assert code == 0, err
    assert "stored as GGUF Q8_0" in out.replace("\n", " ").replace("│", " ") or "GGUF Q8_0" in out


@pytest.mark.parametrize("case", ["missing", "bogus", "empty", "dir-without-file", "path-as-file", "quantized"])
def test_gguf_failures_are_one_line(capsys, ggufs, tmp_path, case):
    args = ["--drafter", "ngram"]
    if case == "missing":
        target, expect, code = tmp_path / "nope.gguf", "does not exist", 1
    elif case == "bogus":
        target = tmp_path / "bogus.gguf"
        target.write_bytes(b"not a model at all" * 10)
        expect, code = "is not a GGUF file", 1
    elif case == "empty":
        target = tmp_path / "empty.gguf"
        target.write_bytes(b"GGUF\x03\x00\x00\x00")  # the header's magic and version, nothing else
        expect, code = f"could not read the GGUF file '{target}' (damaged or cut short", 1
    elif case == "dir-without-file":
        target, expect, code = tmp_path, "--gguf-file: 'x.gguf' is not in", 1
        args += ["--gguf-file", "x.gguf"]
    elif case == "path-as-file":
        target, expect, code = ggufs["files"], "--gguf-file: give the name of the file inside", 1
        args += ["--gguf-file", ggufs["target"].name + "/"]
    else:
        target, expect, code = ggufs["target"], "--no-quantized", 1
        args += ["--quantized"]
    got, out, err = run(capsys, "generate", "x", "--target", str(target), *args, "--device", "cpu")
    assert got == code, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert expect in err, err


def test_a_copied_gguf_next_to_a_transformers_checkpoint(capsys, ggufs, tmp_path):
    """--gguf-file names the file of a GGUF directory; a transformers directory beside it (here
    the draft) keeps loading from its config.json."""
    d = tmp_path / "only-gguf"
    d.mkdir()
    shutil.copy(ggufs["target"], d / "t.gguf")
    draft_dir = tmp_path / "draft"
    shutil.copytree(ggufs["target_dir"], draft_dir)
    ids = generate_ids(capsys, "--target", str(d), "--gguf-file", "t.gguf", "--draft", str(draft_dir))
    assert ids == generate_ids(capsys, "--target", str(ggufs["target_dir"]), "--drafter", "none")
