"""Write a tiny GGUF file from a tiny qwen2 model directory (tests/fixtures.build_model), with
the `gguf` package: llama.cpp's tensor names and metadata keys, the byte-level BPE tokenizer
(tokens, merges, special ids, chat template) in the file, nothing downloaded.

qwen2 because llama.cpp stores its q/k projections unpermuted (Llama's are permuted on
export and transformers permutes them back), so weights round-trip exactly. `quantize`
stores the 2-D weight matrices in that GGML type (e.g. "Q8_0") instead of F32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_gguf"]

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    head, rest = name.removeprefix("model.layers.").split(".", 1)
    return f"blk.{head}.{_LAYER_NAMES[rest]}"


def write_gguf(model_dir: str | Path, out_path: str | Path, quantize: str | None = None) -> Path:
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir, out_path = Path(model_dir), Path(out_path)
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "qwen2", "write_gguf writes qwen2 models (see the module docstring)"
    tensors = load_file(str(model_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(str(out_path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    qtype = getattr(gguf.GGMLQuantizationType, quantize) if quantize else None
    file_type = {None: gguf.LlamaFileType.ALL_F32, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantize]
    writer.add_file_type(file_type)

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(spec["model"]["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "token ids must be contiguous"
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges(merges)
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        value = tok_cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value in vocab:
            add(vocab[value])
    writer.add_add_bos_token(True)  # the fixture's tokenizer prepends <bos>
    if tok_cfg.get("chat_template"):
        writer.add_chat_template(tok_cfg["chat_template"])

    for name, t in tensors.items():
        data = t.to(torch.float32).numpy()
        if qtype is not None and data.ndim == 2 and data.shape[-1] % 32 == 0:
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(_gguf_name(name), np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
