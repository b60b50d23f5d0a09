"""A zoo of tiny random Hugging Face models for raymerge tests (no downloads).

Self-contained: imports only torch, transformers, safetensors, json, os, math.
No network: every model is built from a config with random weights.

    ARCHS[name]()        -> a tiny transformers config object
    AUTO_CLASS[name]     -> the transformers auto class that loads it
    build(name, folder, seed, dtype=torch.float32, perturb_from=None, noise=0.01)
    build_fp8_llama(folder, seed, ...)   DeepSeek-V3-style block-scaled fp8 Llama
    dequantize_fp8(weight_fp8, scale_inv, block)   the real weight of such a tensor

Written against transformers 5.24 / torch 2.13 (CPU); see zoo.md for what the builds contain.
"""

import json
import math
import os

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# --------------------------------------------------------------------------- configs
# Common tiny sizes: hidden 32, 2 layers (gemma2/gemma3: 4 so that layer_types alternates),
# vocab 128, 4 heads of 8, 2 KV heads.  Every model is well under 1 MB of fp32 weights.
V, H, FF, L, NH, KV, HD, P = 128, 32, 64, 2, 4, 2, 8, 64

_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama():
    return transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        max_position_embeddings=P,
        tie_word_embeddings=False,
        **_IDS,
    )


def _mistral():
    return transformers.MistralConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        head_dim=HD,
        max_position_embeddings=P,
        sliding_window=16,
        tie_word_embeddings=False,
        **_IDS,
    )


def _qwen2():
    return transformers.Qwen2Config(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        max_position_embeddings=P,
        max_window_layers=L,
        tie_word_embeddings=True,
        **_IDS,
    )


def _qwen3():
    return transformers.Qwen3Config(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        head_dim=HD,
        max_position_embeddings=P,
        max_window_layers=L,
        tie_word_embeddings=False,
        **_IDS,
    )


def _gemma2():
    return transformers.Gemma2Config(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=4,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        head_dim=HD,
        max_position_embeddings=P,
        sliding_window=16,
        query_pre_attn_scalar=HD,
        **_IDS,
    )


def _gemma3():
    return transformers.Gemma3TextConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=4,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        head_dim=HD,
        max_position_embeddings=P,
        sliding_window=16,
        query_pre_attn_scalar=HD,
        layer_types=["sliding_attention", "full_attention"] * 2,
        **_IDS,
    )


def _gpt2():
    return transformers.GPT2Config(
        vocab_size=V,
        n_positions=P,
        n_embd=H,
        n_layer=L,
        n_head=NH,
        n_inner=FF,
        bos_token_id=1,
        eos_token_id=2,
    )


def _mixtral():
    return transformers.MixtralConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        head_dim=HD,
        max_position_embeddings=P,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        **_IDS,
    )


def _qwen2_moe():
    # layer 0 sparse (4 experts + shared expert), layer 1 dense (mlp_only_layers=[1])
    return transformers.Qwen2MoeConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        max_position_embeddings=P,
        max_window_layers=L,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        mlp_only_layers=[1],
        decoder_sparse_step=1,
        tie_word_embeddings=False,
        **_IDS,
    )


def _bert():
    return transformers.BertConfig(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=FF,
        max_position_embeddings=P,
        type_vocab_size=2,
        pad_token_id=0,
    )


def _t5():
    # T5 v1.1 style: gated-gelu feed-forward, untied lm_head, no embedding rescale
    return transformers.T5Config(
        vocab_size=V,
        d_model=H,
        d_kv=HD,
        d_ff=FF,
        num_layers=L,
        num_decoder_layers=L,
        num_heads=NH,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def _llava():
    # CLIP vision tower (2 layers, 32x32 images, 8x8 patches) + tiny Llama text model
    vision = transformers.CLIPVisionConfig(
        hidden_size=H,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=NH,
        image_size=32,
        patch_size=8,
        projection_dim=H,
    )
    text = _llama()
    return transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=V - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=16,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def _qwen2_vl():
    # Qwen2-VL: vision blocks `model.visual.blocks.{N}` + text `model.language_model.layers.{N}`
    return transformers.Qwen2VLConfig(
        text_config=dict(
            vocab_size=V,
            hidden_size=H,
            intermediate_size=FF,
            num_hidden_layers=L,
            num_attention_heads=NH,
            num_key_value_heads=KV,
            max_position_embeddings=P,
            max_window_layers=L,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2]),
            tie_word_embeddings=False,
            **_IDS,
        ),
        vision_config=dict(
            depth=L,
            embed_dim=H,
            hidden_size=H,
            num_heads=NH,
            mlp_ratio=2,
            in_channels=3,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=V - 1,
        video_token_id=V - 2,
        vision_start_token_id=V - 3,
        vision_end_token_id=V - 4,
        tie_word_embeddings=False,
    )


ARCHS = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "gpt2": _gpt2,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "bert": _bert,
    "t5": _t5,
    "llava": _llava,
    "qwen2_vl": _qwen2_vl,
}

# the auto class each one is built and loaded with (the model class it resolves to in 5.24)
AUTO_CLASS = {
    "llama": transformers.AutoModelForCausalLM,  # LlamaForCausalLM
    "mistral": transformers.AutoModelForCausalLM,  # MistralForCausalLM
    "qwen2": transformers.AutoModelForCausalLM,  # Qwen2ForCausalLM
    "qwen3": transformers.AutoModelForCausalLM,  # Qwen3ForCausalLM
    "gemma2": transformers.AutoModelForCausalLM,  # Gemma2ForCausalLM
    "gemma3": transformers.AutoModelForCausalLM,  # Gemma3ForCausalLM (Gemma3TextConfig)
    "gpt2": transformers.AutoModelForCausalLM,  # GPT2LMHeadModel
    "mixtral": transformers.AutoModelForCausalLM,  # MixtralForCausalLM
    "qwen2_moe": transformers.AutoModelForCausalLM,  # Qwen2MoeForCausalLM
    "bert": transformers.AutoModelForMaskedLM,  # BertForMaskedLM
    "t5": transformers.AutoModelForSeq2SeqLM,  # T5ForConditionalGeneration
    "llava": transformers.AutoModelForImageTextToText,  # LlavaForConditionalGeneration
    "qwen2_vl": transformers.AutoModelForImageTextToText,  # Qwen2VLForConditionalGeneration
}


def auto_class(name):
    return AUTO_CLASS[name]


# --------------------------------------------------------------------------- build


def _seeded_randn(shape, seed, salt):
    """Deterministic N(0,1) noise for one tensor: depends only on (seed, salt, shape)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _salt(name):
    # stable across processes (str hash is randomised)
    h = 0
    for ch in name:
        h = (h * 131 + ord(ch)) % (2**61 - 1)
    return h


def _read_tensors(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def _untie_t5_lm_head(model, seed):
    """T5 v1.1 has its own lm_head, but T5Config in transformers 5.x forces
    tie_word_embeddings=True and ties lm_head to `shared`.  Give lm_head its own random
    weights; transformers then keeps it untied on load because the file holds both tensors
    with different values (it logs "... we will NOT tie them")."""
    w = _seeded_randn(model.lm_head.weight.shape, seed, _salt("lm_head.weight"))
    model.lm_head.weight = torch.nn.Parameter(w * model.config.d_model**-0.5)


def _fix_t5_config(folder):
    # real T5 v1.1 checkpoints say tie_word_embeddings=false (5.x writes true, and
    # scale_decoder_outputs=false, which is what 5.x derives from false anyway)
    p = os.path.join(folder, "config.json")
    with open(p) as f:
        c = json.load(f)
    c["tie_word_embeddings"] = False
    with open(p, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def build(
    name, folder, seed, dtype=torch.float32, perturb_from=None, noise=0.01, original_format=True
):
    """Build tiny model `name` into `folder` (save_pretrained, safetensors, in `dtype`).

    perturb_from=None: fresh random weights, deterministic in `seed`.
    perturb_from=FOLDER: load that earlier build (any dtype) and add noise*N(0,1), deterministic
    in (seed, tensor name), to every floating tensor of the state dict: a "fine-tune" of it.
    Every saved float tensor of the fine-tune differs from the base's saved one (checked after
    the cast to `dtype`; a tensor that rounded back to the base gets a larger nudge).
    original_format=True (save_pretrained's default) writes the checkpoint layout of the Hub
    (transformers 5 reverts its load-time conversions: Mixtral
    `block_sparse_moe.experts.{E}.w1/w2/w3`, Qwen2-MoE `mlp.experts.{E}.*_proj`, Llava
    `language_model.model.*`, Qwen2-VL `model.layers` + `visual.*`); False writes the
    in-memory 5.x names (fused 3-D `mlp.experts.gate_up_proj` / `down_proj`,
    `model.language_model.*`, `model.visual.*`).
    Returns the model (in `dtype`).
    """
    cls = AUTO_CLASS[name]
    if perturb_from is None:
        torch.manual_seed(seed)
        cfg = ARCHS[name]()
        model = cls.from_config(cfg, dtype=torch.float32)
        if name == "t5":
            _untie_t5_lm_head(model, seed)
    else:
        model = cls.from_pretrained(perturb_from, dtype=torch.float32)
        base = _read_tensors(perturb_from)
        sd = model.state_dict()
        with torch.no_grad():
            seen = set()
            for k, t in sd.items():
                if not t.is_floating_point() or t.data_ptr() in seen:
                    continue  # tied weights: perturb once
                seen.add(t.data_ptr())
                t.add_(noise * _seeded_randn(t.shape, seed, _salt(k)))
                ref = base.get(k)
                if ref is not None:
                    scale = 1.0
                    while torch.equal(t.to(dtype), ref.to(dtype)):
                        scale *= 4.0  # e.g. bf16 ulp > noise on large values
                        t.add_(noise * scale * _seeded_randn(t.shape, seed + 1, _salt(k)))
    model = model.to(dtype)
    model.eval()
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, save_original_format=original_format)
    if name == "t5":
        _fix_t5_config(folder)
    if perturb_from is not None:
        same = [
            k
            for k, t in _read_tensors(folder).items()
            if t.is_floating_point() and k in base and torch.equal(t, base[k].to(t.dtype))
        ]
        if same:
            raise AssertionError(f"fine-tune equals its base in {same}; raise noise")
    return model


# --------------------------------------------------------------------------- fp8

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max

# DeepSeek-V3 quantises the Linear layers of the decoder blocks; embeddings, norms and
# lm_head stay in bf16/fp32.
_FP8_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def dequantize_fp8(weight_fp8, scale_inv, block):
    """Real weight = fp8.float() * scale_inv broadcast over [block[0] x block[1]] tiles
    (scale_inv[i, j] applies to rows i*b0:(i+1)*b0, cols j*b1:(j+1)*b1; edge tiles partial)."""
    out, inp = weight_fp8.shape
    b0, b1 = block
    s = scale_inv.float().repeat_interleave(b0, 0)[:out].repeat_interleave(b1, 1)[:, :inp]
    return weight_fp8.float() * s


def quantize_fp8(w, block, scale_factor=None):
    """w (float) -> (fp8 e4m3fn weight, float32 scale_inv [ceil(out/b0), ceil(in/b1)]).
    scale_inv = amax(tile) / 448 * scale_factor (factor >= 1 so nothing clips)."""
    out, inp = w.shape
    b0, b1 = block
    nr, nc = math.ceil(out / b0), math.ceil(inp / b1)
    pad = torch.zeros(nr * b0, nc * b1, dtype=torch.float32)
    pad[:out, :inp] = w.float()
    tiles = pad.view(nr, b0, nc, b1)
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = amax / FP8_MAX
    if scale_factor is not None:
        scale_inv = scale_inv * scale_factor
    q = (tiles / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = q.view(nr * b0, nc * b1)[:out, :inp].to(torch.float8_e4m3fn)
    return q.contiguous(), scale_inv.float().contiguous()


def build_fp8_llama(
    folder,
    seed,
    scale_perturb=0.0,
    base_seed=None,
    noise=0.01,
    block=(16, 16),
    other_dtype=torch.bfloat16,
):
    """A tiny Llama (ARCHS['llama']) with DeepSeek-V3-style block-fp8 Linear weights.

    Underlying weights: the llama build of `base_seed` (default: `seed`); when seed != base_seed
    they get noise*N(0,1) from `seed` (a fine-tune).  Each block Linear weight is stored as
    `<name>.weight` float8_e4m3fn plus `<name>.weight_scale_inv` float32
    [ceil(out/b0), ceil(in/b1)]; real weight = dequantize_fp8(weight, scale_inv, block).
    scale_perturb > 0 multiplies every tile's scale by a seeded factor in [1, 1+scale_perturb]
    (a "re-quantised" copy: same real weights up to fp8 rounding, different scales).
    Other tensors (embeddings, norms, lm_head) in `other_dtype`.
    block=(128, 128) is DeepSeek's real size (one tile per tiny matrix); the default (16, 16)
    gives several tiles per matrix.
    Writes model.safetensors (plain save_file, metadata format=pt) and config.json with
    quantization_config.  Returns {name: dequantised float32 tensor} (the real weights).
    """
    base_seed = seed if base_seed is None else base_seed
    torch.manual_seed(base_seed)
    cfg = ARCHS["llama"]()
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if seed != base_seed:
        for k in sd:
            sd[k] += noise * _seeded_randn(sd[k].shape, seed, _salt(k))
    tensors, real = {}, {}
    for k, w in sd.items():
        parts = k.split(".")
        if len(parts) >= 2 and parts[-2] in _FP8_LINEARS and parts[-1] == "weight":
            factor = None
            if scale_perturb:
                nr, nc = math.ceil(w.shape[0] / block[0]), math.ceil(w.shape[1] / block[1])
                g = torch.Generator().manual_seed((seed * 7919 + _salt(k)) % (2**63))
                factor = 1.0 + scale_perturb * torch.rand(nr, nc, generator=g)
            q, s = quantize_fp8(w, block, factor)
            tensors[k] = q
            tensors[k + "_scale_inv"] = s
            real[k] = dequantize_fp8(q, s, block)
        else:
            tensors[k] = w.to(other_dtype).contiguous()
            real[k] = tensors[k].float()
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = other_dtype
    cfg.save_pretrained(folder)  # the same config.json save_pretrained would write
    p = os.path.join(folder, "config.json")
    with open(p) as f:
        c = json.load(f)
    c["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
    }
    with open(p, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    return real


# --------------------------------------------------------------------------- helpers


def tensor_names(folder):
    """{name: (dtype str, shape)} from the safetensors headers of a folder."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    out[k] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


def dummy_inputs(name, n=6):
    """A few token ids (and whatever else the forward needs) for a smoke forward pass."""
    ids = torch.tensor([[1, 5, 9, 17, 33, 65][:n]])
    if name == "t5":
        return dict(input_ids=ids, decoder_input_ids=torch.tensor([[0, 3, 7]]))
    if name == "bert":
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if name == "llava":
        # 32x32 image, 8x8 patches -> 16 image tokens (image_token_id = V-1) + pixel_values
        img = torch.tensor([[V - 1] * 16])
        g = torch.Generator().manual_seed(0)
        return dict(
            input_ids=torch.cat([ids[:, :1], img, ids[:, 1:]], 1),
            pixel_values=torch.randn(1, 3, 32, 32, generator=g),
        )
    return dict(input_ids=ids)


def name_pattern(key):
    """'model.layers.3.mlp.experts.7.w1.weight' -> 'model.layers.{N}.mlp.experts.{E}.w1.weight'
    (first numeric component {N}, any later ones {E})."""
    out, n = [], 0
    for p in key.split("."):
        if p.isdigit():
            out.append("{N}" if n == 0 else "{E}")
            n += 1
        else:
            out.append(p)
    return ".".join(out)


def layer_stacks(names):
    """{prefix: sorted indices} for the first numeric component of each tensor name, e.g.
    {'model.layers': [0, 1]}.  Also catches non-layer Sequentials (qwen2_vl
    'visual.merger.mlp': [0, 2]); T5's 'block.{N}.layer.{E}' and experts '{E}' are nested
    below the first index and not reported separately."""
    if isinstance(names, str):
        names = tensor_names(names)
    st = {}
    for k in names:
        parts = k.split(".")
        for i, p in enumerate(parts):
            if p.isdigit():
                st.setdefault(".".join(parts[:i]), set()).add(int(p))
                break
    return {p: sorted(v) for p, v in sorted(st.items())}
