"""Train the embedded demo pair: `python -m specdecode.demo.train --out DIR`.

What it does, reproducibly from `--seed`:

  1. corpus: every `*.py` file of this interpreter's standard library
     (`sysconfig.get_paths()["stdlib"]`), minus test directories, idlelib, lib2to3,
     turtledemo, ensurepip and site-packages (PSF licence; see README.md here). Files are
     split by a hash of their relative path: about 1 in 20 is held out (`is_held_out`).
     `--corpus FILE.jsonl.gz` reads a corpus saved earlier with `--save-corpus` instead,
     so a run on another machine (another Python) sees the same files.
  2. tokenizer: byte-level BPE (`tokenizers`), whitespace and indentation kept byte for
     byte; one special token `<|endoftext|>` (id 0) separates files and is BOS, EOS and pad.
  3. target: a deep, narrow Llama (LlamaForCausalLM), next-token cross-entropy on random
     windows of the training stream, AdamW + cosine schedule, bf16 autocast on CUDA; the
     checkpoint with the best held-out loss is kept.
  4. drafts: 1-2 layer Llamas, first cross-entropy on the corpus, then distilled on the
     target (KL(p_target || q_draft)) over corpus windows and over the target's own greedy
     continuations. Greedy agreement (draft argmax == target argmax) is measured before and
     after distillation on held-out files and on the target's greedy continuations of
     held-out prompts.
  5. saves `OUT/target` and `OUT/draft-<L>x<H>` (config, generation config, float16
     safetensors, tokenizer) and `OUT/report.json`.

What it does not: download anything, import the rest of specdecode (it runs where only
torch, tokenizers and transformers are installed), or pick which draft ships (the report
says how each one did; the shipped pair lives in specdecode/assets/demo/).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

EOT = "<|endoftext|>"
SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages",
             "__pycache__"}
HELD_OUT_EVERY = 20  # about 1 file in 20 is held out, chosen by hash


# ---- 1. corpus ---------------------------------------------------------------------------


def is_held_out(relpath: str) -> bool:
    """A file is held out when the SHA-1 of its relative path (posix) is 0 mod 20."""
    return int(hashlib.sha1(relpath.encode("utf-8")).hexdigest(), 16) % HELD_OUT_EVERY == 0


def build_corpus(root: str | None = None) -> list[tuple[str, str]]:
    """(relative path, text) for every standard-library .py file kept, sorted by path."""
    root = root or sysconfig.get_paths()["stdlib"]
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if any(p in SKIP_DIRS or p.startswith("config-") for p in parts):
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            rel = "/".join(parts + [name])
            try:
                text = Path(dirpath, name).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            text = text.replace("\r\n", "\n").replace(EOT, "")
            if text.strip():
                out.append((rel, text))
    out.sort()
    return out


def save_corpus(files: list[tuple[str, str]], path: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for rel, text in files:
            f.write(json.dumps({"path": rel, "text": text}) + "\n")


def load_corpus(path: str) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted((r["path"], r["text"]) for r in rows)


# ---- 2. tokenizer ------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE over the training files; returned as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # every prompt starts like a file: BOS first
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, tok.token_to_id(EOT))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    return fast


def encode_files(tok, texts: list[str]):
    """One stream: <eot> file <eot> file ... as an int32 tensor."""
    import torch

    eot = tok.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    enc = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    for e in enc:
        ids.append(eot)
        ids.extend(e.ids)
    ids.append(eot)
    return torch.tensor(ids, dtype=torch.int32)


# ---- 3-4. models and training ------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    ffn: int

    @classmethod
    def parse(cls, spec: str) -> Shape:
        """'24x192' -> 24 layers, 192 wide, heads of 64, SwiGLU width 8/3 * hidden (multiple of 64)."""
        layers, hidden = (int(x) for x in spec.lower().split("x"))
        heads = max(1, hidden // 64)
        ffn = max(64, int(round(hidden * 8 / 3 / 64)) * 64)
        return cls(layers, hidden, heads, ffn)

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden}"


def make_model(shape: Shape, vocab_size: int, max_positions: int, eot_id: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # GPT-2 style: scale the residual projections by depth
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.mul_(1.0 / math.sqrt(2 * shape.layers))
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Batches:
    """Random windows of a token stream, from a seeded generator."""

    def __init__(self, stream, seq_len: int, batch_size: int, seed: int, device):
        import torch

        self.stream = stream.to(device)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.offsets = torch.arange(seq_len + 1, device=device)
        self.device = device

    def next(self, batch_size: int | None = None, seq_len: int | None = None):
        import torch

        b = batch_size or self.batch_size
        t = seq_len or self.seq_len
        start = torch.randint(0, len(self.stream) - t - 1, (b,), generator=self.gen).to(self.device)
        return self.stream[start[:, None] + self.offsets[: t + 1]].long()  # [b, t+1]


def fixed_windows(stream, seq_len: int, count: int):
    """Evenly spaced, non-random windows of a held-out stream: [count, seq_len+1]."""
    import torch

    n = len(stream) - seq_len - 1
    count = max(1, min(count, n // max(1, seq_len // 2)))
    starts = torch.linspace(0, n - 1, count).long()
    return torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()]).long()


def autocast(device):
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def logits_of(model, x):
    return model(input_ids=x, use_cache=False).logits


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model, lr: float, weight_decay: float, device):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **kw)


def eval_loss(model, windows, device, batch_size: int = 32) -> float:
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast(device):
        for i in range(0, len(windows), batch_size):
            w = windows[i : i + batch_size].to(device)
            logits = logits_of(model, w[:, :-1]).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += w[:, 1:].numel()
    model.train()
    return total / count


def train_ce(model, batches: Batches, steps: int, lr: float, warmup: int, weight_decay: float, device,
             val_windows, eval_every: int, log, tag: str, keep_best: bool = True) -> dict:
    """Next-token cross-entropy; returns a log dict. Keeps the best held-out checkpoint."""
    import torch
    import torch.nn.functional as F

    model.train()
    opt = make_optimizer(model, lr, weight_decay, device)
    best = (float("inf"), -1)
    best_state = None
    history = []
    t0 = time.perf_counter()
    loss_val = float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        x = batches.next()
        with autocast(device):
            logits = logits_of(model, x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            loss_val = eval_loss(model, val_windows, device)
            train_loss = float(loss.detach())
            elapsed = time.perf_counter() - t0
            history.append({"step": step + 1, "train": round(train_loss, 4), "val": round(loss_val, 4),
                            "s": round(elapsed, 1)})
            log(f"[{tag}] step {step + 1}/{steps} train {train_loss:.4f} val {loss_val:.4f} ({elapsed:.0f}s)")
            if keep_best and loss_val < best[0]:
                best = (loss_val, step + 1)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"steps": steps, "best_val": round(best[0], 4), "best_step": best[1], "history": history,
            "time_s": round(time.perf_counter() - t0, 1)}


def greedy_continue(model, prompts, new_tokens: int, device, batch_size: int = 256):
    """The model's greedy continuations (full recompute each step: simple, cache-API free)."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad(), autocast(device):
        for i in range(0, len(prompts), batch_size):
            seq = prompts[i : i + batch_size].to(device)
            for _ in range(new_tokens):
                nxt = model(input_ids=seq, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
            outs.append(seq.cpu())
    return torch.cat(outs)


def agreement(target, draft, seqs, device, start: int = 1, batch_size: int = 64) -> float:
    """Fraction of positions >= start where draft argmax == target argmax (teacher-forced on seqs)."""
    import torch

    hit = total = 0
    with torch.no_grad(), autocast(device):
        for i in range(0, len(seqs), batch_size):
            s = seqs[i : i + batch_size].to(device)
            a = logits_of(target, s).argmax(-1)[:, start:]
            b = logits_of(draft, s).argmax(-1)[:, start:]
            hit += int((a == b).sum())
            total += a.numel()
    return hit / max(1, total)


def distill(draft, target, batches: Batches, gen_seqs, steps: int, lr: float, warmup: int, device, log,
            tag: str, seq_len: int, batch_size: int) -> dict:
    """KL(p_target || q_draft) on corpus windows, and on the target's greedy text when given."""
    import torch
    import torch.nn.functional as F

    draft.train()
    target.eval()
    opt = make_optimizer(draft, lr, 0.0, device)
    gen = torch.Generator(device="cpu").manual_seed(1234)
    t0 = time.perf_counter()
    history = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        if gen_seqs is not None and step % 2 == 1:
            idx = torch.randint(0, len(gen_seqs), (batch_size,), generator=gen)
            x = gen_seqs[idx].to(device)
        else:
            x = batches.next(batch_size, seq_len)[:, :-1]
        with torch.no_grad(), autocast(device):
            t_logp = F.log_softmax(logits_of(target, x).float(), dim=-1)
        with autocast(device):
            d_logits = logits_of(draft, x)
        d_logp = F.log_softmax(d_logits.float(), dim=-1)
        loss = F.kl_div(d_logp.reshape(-1, d_logp.shape[-1]), t_logp.reshape(-1, t_logp.shape[-1]),
                        log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            history.append({"step": step + 1, "kl": round(float(loss.detach()), 4), "s": round(time.perf_counter() - t0, 1)})
            log(f"[{tag}] distill step {step + 1}/{steps} kl {float(loss.detach()):.4f}")
    draft.eval()
    return {"steps": steps, "history": history, "time_s": round(time.perf_counter() - t0, 1)}


# ---- 5. saving ---------------------------------------------------------------------------


def save_model(model, tok, out: Path, dtype_name: str) -> None:
    import torch
    from transformers import GenerationConfig

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True, max_shard_size="1GB")
    tok.save_pretrained(out)
    # the generic class name: any transformers 5.x resolves it to its tokenizers-backed class
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    for f in out.iterdir():
        f.chmod(0o644)


# ---- main --------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m specdecode.demo.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--corpus", help="a corpus .jsonl.gz saved by --save-corpus (default: build from this stdlib)")
    ap.add_argument("--save-corpus", help="write the corpus as .jsonl.gz and continue (or stop: --corpus-only)")
    ap.add_argument("--corpus-only", action="store_true", help="build/save the corpus, then stop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--target", default="24x192", help="target shape LAYERSxHIDDEN")
    ap.add_argument("--drafts", default="1x192,2x192", help="draft shapes, comma-separated")
    ap.add_argument("--target-steps", type=int, default=1500)
    ap.add_argument("--target-lr", type=float, default=2e-3)
    ap.add_argument("--draft-ce-steps", type=int, default=600)
    ap.add_argument("--draft-kd-steps", type=int, default=800)
    ap.add_argument("--draft-lr", type=float, default=3e-3)
    ap.add_argument("--kd-seq-len", type=int, default=256)
    ap.add_argument("--gen-prompts", type=int, default=2048, help="prompts for the target's greedy text (0 = off)")
    ap.add_argument("--gen-prompt-len", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=192)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--val-windows", type=int, default=96)
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--save-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--device", default="auto")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train.log", "a", encoding="utf-8")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    t_start = time.perf_counter()
    files = load_corpus(args.corpus) if args.corpus else build_corpus()
    if args.save_corpus:
        save_corpus(files, args.save_corpus)
    train_files = [(p, t) for p, t in files if not is_held_out(p)]
    held_files = [(p, t) for p, t in files if is_held_out(p)]
    report: dict = {
        "args": vars(args),
        "python": sys.version.split()[0],
        "corpus": {
            "source": args.corpus or sysconfig.get_paths()["stdlib"],
            "files": len(files),
            "train_files": len(train_files),
            "held_out_files": len(held_files),
            "train_bytes": sum(len(t.encode()) for _, t in train_files),
            "held_out_bytes": sum(len(t.encode()) for _, t in held_files),
            "sha1": hashlib.sha1("".join(p + "\0" + t for p, t in files).encode()).hexdigest(),
        },
    }
    log(f"corpus: {report['corpus']}")
    if args.corpus_only:
        return 0

    import torch

    torch.manual_seed(args.seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tok = train_tokenizer([t for _, t in train_files], args.vocab_size)
    eot_id = tok.convert_tokens_to_ids(EOT)
    train_stream = encode_files(tok, [t for _, t in train_files])
    held_stream = encode_files(tok, [t for _, t in held_files])
    report["tokenizer"] = {"vocab_size": len(tok), "train_tokens": len(train_stream),
                           "held_out_tokens": len(held_stream),
                           "bytes_per_token": round(report["corpus"]["train_bytes"] / len(train_stream), 3)}
    log(f"tokenizer: {report['tokenizer']} ({time.perf_counter() - t_start:.0f}s)")
    max_pos = max(2 * args.seq_len, 1024)  # RoPE runs past the trained length; quality fades beyond it
    val_windows = fixed_windows(held_stream, args.seq_len, args.val_windows)
    batches = Batches(train_stream, args.seq_len, args.batch_size, args.seed, device)

    # 3. target
    t_shape = Shape.parse(args.target)
    target = make_model(t_shape, len(tok), max_pos, eot_id, args.seed).to(device)
    log(f"target {t_shape}: {n_params(target) / 1e6:.2f}M params")
    report["target"] = {"shape": asdict(t_shape), "params": n_params(target)}
    report["target"]["train"] = train_ce(target, batches, args.target_steps, args.target_lr, args.warmup,
                                         args.weight_decay, device, val_windows, args.eval_every, log, "target")
    target.requires_grad_(False)

    # evaluation text: held-out prompts and the target's greedy continuations of them
    eval_prompts = fixed_windows(held_stream, args.gen_prompt_len - 1, args.eval_prompts)
    t0 = time.perf_counter()
    eval_seqs = greedy_continue(target, eval_prompts, args.eval_tokens, device)
    log(f"target greedy continuations for evaluation: {tuple(eval_seqs.shape)} ({time.perf_counter() - t0:.1f}s)")
    agree_windows = val_windows[:, :-1]

    gen_seqs = None
    if args.gen_prompts > 0:
        t0 = time.perf_counter()
        gen_prompts = Batches(train_stream, args.gen_prompt_len - 1, args.gen_prompts, args.seed + 7, "cpu").next()
        gen_seqs = greedy_continue(target, gen_prompts, args.gen_tokens, device)
        report["kd_generated"] = {"sequences": len(gen_seqs), "tokens": int(gen_seqs.numel()),
                                  "time_s": round(time.perf_counter() - t0, 1)}
        log(f"target greedy text for distillation: {tuple(gen_seqs.shape)} ({time.perf_counter() - t0:.1f}s)")
        gen_seqs = gen_seqs.to(device)

    # 4. drafts
    report["drafts"] = {}
    for spec in [s for s in args.drafts.split(",") if s.strip()]:
        d_shape = Shape.parse(spec)
        draft = make_model(d_shape, len(tok), max_pos, eot_id, args.seed + 1).to(device)
        entry: dict = {"shape": asdict(d_shape), "params": n_params(draft)}
        log(f"draft {d_shape}: {n_params(draft) / 1e6:.2f}M params")
        d_batches = Batches(train_stream, args.seq_len, args.batch_size, args.seed + 2, device)
        entry["ce"] = train_ce(draft, d_batches, args.draft_ce_steps, args.draft_lr, args.warmup, args.weight_decay,
                               device, val_windows, max(args.eval_every, args.draft_ce_steps // 4), log,
                               f"draft {d_shape.name}")
        entry["before"] = {
            "agreement_held_out": round(agreement(target, draft, agree_windows, device), 4),
            "agreement_greedy": round(agreement(target, draft, eval_seqs, device, start=args.gen_prompt_len - 1), 4),
        }
        log(f"[draft {d_shape.name}] before distillation: {entry['before']}")
        if args.draft_kd_steps > 0:
            entry["kd"] = distill(draft, target, d_batches, gen_seqs, args.draft_kd_steps, args.draft_lr / 2,
                                  args.warmup, device, log, f"draft {d_shape.name}", args.kd_seq_len,
                                  args.batch_size)
            entry["after"] = {
                "agreement_held_out": round(agreement(target, draft, agree_windows, device), 4),
                "agreement_greedy": round(agreement(target, draft, eval_seqs, device, start=args.gen_prompt_len - 1), 4),
                "val_loss": round(eval_loss(draft, val_windows, device), 4),
            }
            log(f"[draft {d_shape.name}] after distillation: {entry['after']}")
        save_model(draft, tok, out / f"draft-{d_shape.name}", args.save_dtype)
        report["drafts"][d_shape.name] = entry

    save_model(target, tok, out / "target", args.save_dtype)
    report["time_s"] = round(time.perf_counter() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log(f"done in {report['time_s']}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
