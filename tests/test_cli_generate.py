"""`specdecode generate` through the real entry point: JSON contract, streaming text, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fixtures import PROMPTS, oracle_greedy
from specdecode.cli.app import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_json_lines_follow_the_contract(capsys, llama_pair, tmp_path):
    prompts = [PROMPTS[0], PROMPTS[3], PROMPTS[5]]
    pf = tmp_path / "p.jsonl"
    pf.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts[1:]) + "\n")
    code, out, err = run(
        capsys, "generate", prompts[0], "--prompts-file", str(pf), "--target", str(llama_pair.target),
        "--draft", str(llama_pair.draft), "--k", "3", "--max-new-tokens", "12", "--json", "--batch-size", "2",
        "--device", "cpu", "--dtype", "float32", "--no-chat",
    )
    assert code == 0, err
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["prompt"] for x in lines] == prompts  # input order
    oracle = oracle_greedy(llama_pair.target, prompts, 12)
    for obj, ref in zip(lines, oracle):
        assert set(obj) == {"prompt", "text", "token_ids", "stats"}
        assert set(obj["stats"]) == {"new_tokens", "rounds", "draft_tokens", "accepted_tokens", "acceptance_rate",
                                     "block_efficiency", "time_s", "tokens_per_s"}
        assert obj["token_ids"] == ref
        assert obj["stats"]["new_tokens"] == len(ref)
        assert 0.0 <= obj["stats"]["acceptance_rate"] <= 1.0
        assert 1.0 <= obj["stats"]["block_efficiency"] <= 4.0
        assert isinstance(obj["text"], str) and obj["text"]


def test_plain_stream_when_not_a_terminal(capsys, llama_pair):
    code, out, err = run(
        capsys, "generate", PROMPTS[2], "--target", str(llama_pair.target), "--draft", str(llama_pair.draft),
        "--max-new-tokens", "10", "--device", "cpu", "--dtype", "float32",
    )
    assert code == 0, err
    assert "\x1b[" not in out  # no styles when piped
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    dec = SpeculativeDecoder.from_settings(Settings(target=str(llama_pair.target), draft=str(llama_pair.draft),
                                                    max_new_tokens=10, device="cpu", dtype="float32"))
    assert out.strip() == dec.generate(PROMPTS[2])[0].text.strip()


def test_chat_template_is_applied_when_present(chat_model):
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    s = Settings(target=str(chat_model), drafter="none", device="cpu", dtype="float32")
    dec = SpeculativeDecoder.from_settings(s)
    with_chat = dec.encode("hello")
    plain = dec.with_settings(chat=False).encode("hello")
    assert len(with_chat) > len(plain)
    assert dec.decode(with_chat).startswith("user")


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--k", "0"], 2, "--k"),
        (["--temperature", "-1"], 2, "--temperature"),
        (["--top-p", "1.5"], 2, "--top-p"),
        (["--preset", "nope"], 2, "unknown preset"),
        (["--target", "/no/such/model/dir"], 1, "does not exist"),
        (["--max-new-tokens", "abc"], 2, "--max-new-tokens"),
        (["--device", "cuda:0"], 1, "CUDA"),
        (["--overlap", "--drafter", "ngram"], 2, "--overlap"),
        (["--overlap", "--k", "auto"], 2, "--overlap needs a fixed --k"),
        (["--overlap-sms", "16"], 2, "add --overlap"),
        (["--overlap", "--overlap-sms", "0"], 2, "--overlap-sms"),
        (["--overlap", "--overlap-sms", "16"], 2, "--overlap-sms divides a CUDA GPU"),
    ],
)
def test_errors_are_one_line_with_exit_codes(capsys, llama_pair, args, code, needle):
    import torch

    if ("cuda:0" in args or args == ["--overlap", "--overlap-sms", "16"]) and torch.cuda.is_available():
        pytest.skip("has a GPU")
    base = ["generate", "hello", "--target", str(llama_pair.target), "--draft", str(llama_pair.draft)]
    got, out, err = run(capsys, *(base + args))
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_malformed_yaml_is_exit_2_one_line(capsys, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("k: [1, 2\n")
    got, out, err = run(capsys, "generate", "x", "--config", str(p))
    assert got == 2 and len(err.strip().splitlines()) == 1 and str(p) in err


def test_incompatible_tokenizers_are_refused(capsys, llama_pair, qwen2_pair):
    got, out, err = run(capsys, "generate", "hello", "--target", str(llama_pair.target),
                        "--draft", str(qwen2_pair.draft), "--device", "cpu")
    assert got == 1 and "tokenizers differ" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception):
        main(["generate", "hello", "--target", "/no/such/model/dir", "--debug"])


def test_dry_run_loads_nothing(capsys):
    got, out, err = run(capsys, "generate", "--preset", "gemma-4b", "--dry-run", "--json", "--k", "3")
    assert got == 0
    data = json.loads(out)
    assert data["target"] == "google/gemma-3-4b-it" and data["k"] == 3


def test_help_is_fast_and_python_m_works():
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "specdecode", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    assert r.returncode == 0 and "generate" in r.stdout
    # not a timing assertion: --help must not import torch at all
    r = subprocess.run([sys.executable, "-c", "import sys; from specdecode.cli.app import app; "
                        "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
    print(f"python -m specdecode --help: {elapsed:.2f}s")


def test_format_json_is_json_for_dry_run_and_output(capsys, llama_pair):
    got, out, err = run(capsys, "generate", "--preset", "gemma-4b", "--dry-run", "--format", "json")
    assert got == 0 and json.loads(out)["target"] == "google/gemma-3-4b-it"
    got, out, err = run(capsys, "generate", PROMPTS[0], "--target", str(llama_pair.target), "--draft",
                        str(llama_pair.draft), "--max-new-tokens", "4", "--format", "json", "--device", "cpu")
    assert got == 0
    obj = json.loads(out.strip())
    assert 1 <= obj["stats"]["new_tokens"] == len(obj["token_ids"]) <= 4
    got, out, err = run(capsys, "generate", "x", "--format", "xml")
    assert got == 2 and "--format" in err


def test_overlap_gives_the_same_tokens(capsys, llama_pair):
    """`generate --overlap --json`: the same token ids as plain rounds (greedy, float32), with its
    own round counts."""
    base = ["generate", PROMPTS[2], PROMPTS[0], "--target", str(llama_pair.target), "--draft", str(llama_pair.draft),
            "--max-new-tokens", "20", "--device", "cpu", "--dtype", "float32", "--no-chat", "--json", "--k", "2"]
    got, out, _ = run(capsys, *base)
    assert got == 0
    plain = [json.loads(line) for line in out.splitlines()]
    got, out, _ = run(capsys, *base, "--overlap")
    assert got == 0
    overlapped = [json.loads(line) for line in out.splitlines()]
    assert [o["token_ids"] for o in overlapped] == [o["token_ids"] for o in plain]
    assert all(o["stats"]["rounds"] > 0 for o in overlapped)
