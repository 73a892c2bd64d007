"""Targets split across devices, on the CPU: `--tp 2` under torchrun (gloo) and accelerate's
device map with layers offloaded to the CPU and to disk give the same greedy tokens as one
process on one device (float32). The torchrun runs are subprocesses of
`python -m torch.distributed.run --nproc-per-node 2 -m specdecode ...`, the way users run it.

What it does not: measure anything on GPUs (benchmarks/ holds that), or test NCCL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

PROMPTS = ["a b c", "the cat she", "one two three four five"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _generate_args(pair, drafter: str, *extra: str) -> list[str]:
    args = ["generate", *PROMPTS, "--target", str(pair.target), "--drafter", drafter, "--k", "3",
            "--max-new-tokens", "16", "--device", "cpu", "--dtype", "float32", "--no-chat", "--json",
            "--batch-size", "2", *extra]
    if drafter == "model":
        args += ["--draft", str(pair.draft)]
    return args


def _run(args: list[str], nproc: int | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    if nproc is None:
        cmd = [sys.executable, "-m", "specdecode", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "specdecode", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    if nproc is not None and proc.returncode not in (0, 2) and any(
            s in proc.stderr.lower() for s in ("address already in use", "eaddrinuse", "rendezvous", "timed out")):
        cmd[cmd.index("--master-port") + 1] = str(_free_port())  # another process took the port: once more
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    return proc


def _tokens(proc: subprocess.CompletedProcess) -> list[list[int]]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [obj["token_ids"] for obj in lines]


def _check_tp_matches_one_process(pair, drafter: str) -> None:
    one = _tokens(_run(_generate_args(pair, drafter)))
    tp = _run(_generate_args(pair, drafter, "--tp", "2"), nproc=2)
    got = _tokens(tp)
    # rank 0 alone prints: one JSON line per prompt, not one per prompt and rank
    assert len(got) == len(PROMPTS)
    assert got == one
    assert all(len(t) == 16 or t[-1:] for t in got)
    assert "sharded over 2 ranks" in tp.stderr  # it really ran tensor parallel


# two torchrun processes each: ~20 s a case on two cores: the slow layer (CI runs it)
@pytest.mark.slow
@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_tp2_under_torchrun_matches_one_process_llama(llama_pair, drafter):
    _check_tp_matches_one_process(llama_pair, drafter)


@pytest.mark.slow
@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_tp2_under_torchrun_matches_one_process_qwen2(qwen2_pair, drafter):
    # a target with 128 embedding rows (16 padded) over a 112-row draft: the sharded embedding
    # and the gathered LM head keep every row
    _check_tp_matches_one_process(qwen2_pair, drafter)


@pytest.mark.slow
def test_tp2_under_torchrun_matches_one_process_gemma3_past_the_window(gemma3_pair):
    # sliding window 8, 16 new tokens after the prompt: rounds roll back past the window
    _check_tp_matches_one_process(gemma3_pair, "model")


@pytest.mark.slow
def test_tp2_sampling_is_the_same_on_every_rank_and_seeded(llama_pair):
    """Sampling under --tp: every rank draws the same numbers (same seeded generator), so the
    ranks stay in step and the output equals one process with the same seed."""
    args = _generate_args(llama_pair, "model", "--temperature", "1.0", "--seed", "7")
    assert _tokens(_run([*args, "--tp", "2"], nproc=2)) == _tokens(_run(args))
    # without --seed, rank 0 draws one and broadcasts it: the ranks still take the same decisions
    # (diverging ranks would stop at different rounds and their collectives would not match)
    unseeded = _generate_args(llama_pair, "model", "--temperature", "1.0", "--tp", "2")
    assert len(_tokens(_run(unseeded, nproc=2, timeout=120))) == len(PROMPTS)


def test_tp_must_match_the_processes_torchrun_started(llama_pair):
    proc = _run(_generate_args(llama_pair, "model", "--tp", "2"))  # no torchrun
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tp 2 needs 2 processes" in lines[0] and "torchrun" in lines[0]


def test_tp_and_device_map_are_settings_errors_together():
    from specdecode.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="--tp and --device-map"):
        load_settings(overrides={"target": "x", "tp": 2, "device_map": "auto"})
    with pytest.raises(SettingsError, match="apply to --device-map"):
        load_settings(overrides={"target": "x", "max_memory": "cpu=1GiB"})
    with pytest.raises(SettingsError, match="--max-memory"):
        load_settings(overrides={"target": "x", "device_map": "auto", "max_memory": "gpu0=1GiB"},
                      flag_names={"max_memory": "--max-memory"})
    s = load_settings(overrides={"target": "x", "device_map": "auto", "max_memory": "0=20GiB, cuda:1=20GiB,cpu=64GiB"})
    assert s.max_memory == {"0": "20GiB", "1": "20GiB", "cpu": "64GiB"}


# ---- accelerate's device map -------------------------------------------------------------------

def _decode(pair, drafter: str, **kw):
    from specdecode.api import SpeculativeDecoder
    from specdecode.settings import Settings

    s = Settings(target=str(pair.target), draft=str(pair.draft) if drafter == "model" else None, drafter=drafter,
                 k=3, max_new_tokens=16, device="cpu", dtype="float32", chat=False, batch_size=2, **kw)
    return SpeculativeDecoder.from_settings(s)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_device_map_with_cpu_and_disk_offload_gives_the_same_tokens(request, tmp_path, family):
    pair = request.getfixturevalue(f"{family}_pair")
    plain = [r.token_ids for r in _decode(pair, "model").generate(PROMPTS)]
    # 400 KB of "cpu" holds the embedding and the first layer; the rest goes to disk
    dec = _decode(pair, "model", device_map="auto", max_memory="cpu=400KB", offload_folder=str(tmp_path / "off"))
    placed = set(dec.target.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}, placed
    # really offloaded: the disk layers hold no data in memory (from a safetensors checkpoint,
    # transformers reads them back from the checkpoint itself, not from the offload folder)
    assert dec.target.model.model.layers[-1].self_attn.q_proj.weight.device.type == "meta"
    assert dec.target.model.model.layers[0].self_attn.q_proj.weight.device.type == "cpu"
    ex = dec.execution(dec.target)
    assert not ex.fused and any(r.startswith("transformers modules: ") for r in ex.reasons)
    assert [r.token_ids for r in dec.generate(PROMPTS)] == plain
    ngram = _decode(pair, "ngram", device_map="auto", max_memory="cpu=400KB", offload_folder=str(tmp_path / "off2"))
    assert [r.token_ids for r in ngram.generate(PROMPTS)] == [r.token_ids for r in _decode(pair, "ngram").generate(PROMPTS)]


def test_device_map_that_leaves_no_room_for_the_embedding_is_one_line(llama_pair, tmp_path):
    from specdecode.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="no room for the input embedding"):
        _decode(llama_pair, "model", device_map="auto", max_memory="cpu=1KB", offload_folder=str(tmp_path / "off"))


def test_native_support_refuses_sharded_weights():
    """A DTensor weight (what --tp loads) keeps the transformers modules, with the reason."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
    from transformers import LlamaConfig, LlamaForCausalLM

    from specdecode.accel.fused import fused_support

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    assert fused_support(model) is None
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    store_owned = not dist.is_initialized()
    if store_owned:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = DeviceMesh("cpu", [0])
        q = model.model.layers[0].self_attn.q_proj
        q.weight = torch.nn.Parameter(distribute_tensor(q.weight.detach(), mesh, [Shard(0)]), requires_grad=False)
        reason = fused_support(model)
        assert reason is not None and "sharded" in reason and "\n" not in reason
    finally:
        if store_owned:
            dist.destroy_process_group()


def test_inspect_reports_the_placement(llama_pair, capsys):
    from specdecode.cli.app import main

    def report(*extra):
        with pytest.raises(SystemExit) as e:
            main(["inspect", "--target", str(llama_pair.target), "--draft", str(llama_pair.draft), "--device", "cpu",
                  "--dtype", "float32", "--format", "json", *extra])
        assert e.value.code == 0
        return json.loads(capsys.readouterr().out)

    one = report()
    assert one["placement"]["mode"] == "one device"
    total, draft = one["target"]["memory_bytes"], one["draft"]["memory_bytes"]
    assert one["placement"]["per_device"] == [{"device": "cpu", "target_bytes": total, "draft_bytes": draft,
                                               "total_bytes": total + draft}]
    tp = report("--tp", "2")["placement"]
    assert tp["mode"] == "tensor parallel" and [r["device"] for r in tp["per_device"]] == ["rank 0", "rank 1"]
    for row in tp["per_device"]:
        # the sharded projections, embedding and head halve; only the norms are replicated
        assert total / 2 <= row["target_bytes"] < total / 2 * 1.01 and row["draft_bytes"] == draft
    dm = report("--device-map", "auto", "--max-memory", "cpu=400KB")["placement"]
    per = {r["device"]: r for r in dm["per_device"]}
    assert set(per) == {"cpu", "disk"}
    assert per["cpu"]["target_bytes"] + per["disk"]["target_bytes"] == total
    assert per["cpu"]["draft_bytes"] == draft and dm["modules"]["model.layers.0"] == "cpu"
    assert dm["modules"]["lm_head"] == "disk"


def test_the_cli_leaves_the_process_group_before_exit(tmp_path, monkeypatch):
    """A torchrun rank that has finished its work must not die in exit's destructors: left alive,
    gloo's threads can abort a rank at exit (exit -6 after every token was printed), and even
    with the group destroyed a c10d thread still joinable at exit sometimes does. So `main`
    destroys the process group on every way out and then leaves by os._exit with the command's
    exit code (output flushed); a process that never joined a group exits as usual."""
    import torch.distributed as dist

    from specdecode.cli.app import main

    class RankExit(Exception):
        pass

    def fake_exit(code):
        raise RankExit(code)

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(SystemExit) as plain:
        main(["inspect", "--help"])
    assert plain.value.code == 0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(RankExit) as ok:
            main(["inspect", "--help"])
        assert ok.value.args == (0,)
        assert not dist.is_initialized()
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store2'}", rank=0, world_size=1)
        with pytest.raises(RankExit) as bad:
            main(["generate", "x", "--k", "0"])  # a settings error: exit 2, one line
        assert bad.value.args == (2,)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
