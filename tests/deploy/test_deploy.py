"""Deploy checkpoint: save_pretrained -> from_pretrained in a fresh process, targets, refusals.

Thresholds, per deploy kind, of the loaded model against the compiled QuantizedModel on the CPU:
- ``int4r_fp8``, ``int4_fp8``, ``fp8_row``, ``int4_weight`` (CUDA targets, run here by their float CPU reference
  of the same numbers): bit-exact (the reference computes what the fake quantizers compute);
- ``int8_row`` (target ``cpu``, real ``torch._int_mm``): >= 40 dB SQNR (integer accumulation
  against the fake-quant float GEMM);
- ``sim`` (any format, simulated): >= 80 dB (same math, other float evaluation order).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsgq_compiler import QuantConfig, compile_quantized, from_pretrained, save_pretrained
from lsgq_compiler.deploy.checkpoint import CheckpointError, check_kernel_library

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import cogvideox_inputs, tiny_cogvideox, tiny_wan, wan_inputs  # noqa: E402

ATTN = {"attention_min_kv": 16}


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    e = (ref.double() - out.double()).pow(2).sum()
    return math.inf if e == 0 else 10 * math.log10(float(ref.double().pow(2).sum() / e))


def _out(o):
    return o[0] if isinstance(o, (tuple, list)) else o


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Compiled models, their checkpoints and outputs at the captured shape."""
    from lsgq_compiler.vsr.models import load_tiny_vsr

    root = tmp_path_factory.mktemp("deploy")
    out = {}
    wan, winp = tiny_wan(), wan_inputs(frames=2, size=16)
    for tgt, bits in (("cuda-sm90", (4, 4)), ("cpu", (8, 8)), ("sim", (4, 4))):
        qm = compile_quantized(wan, winp, QuantConfig(recipe="minmax", weight_bits=bits[0], act_bits=bits[1],
                                                      target=tgt, attention_bits=8, options=ATTN),
                               calib_data=[winp], progress=False)
        d = save_pretrained(qm, root / f"wan-{tgt}")
        out[f"wan-{tgt}"] = (qm, d, winp, qm(**winp).detach())
    cog, cinp = tiny_cogvideox(), cogvideox_inputs()
    qm = compile_quantized(cog, cinp, QuantConfig(recipe="minmax", weight_bits=8, act_bits=8, target="cuda-sm90",
                                                  attention_bits=8, options=ATTN), calib_data=[cinp], progress=False)
    out["cog-cuda-sm90"] = (qm, save_pretrained(qm, root / "cog-cuda-sm90"), cinp, qm(**cinp).detach())
    vsr = load_tiny_vsr()
    lq = torch.rand(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    vinp = vsr.transformer_inputs(lq)
    qm = compile_quantized(vsr.transformer, vinp, QuantConfig(recipe="minmax", weight_bits=4, act_bits=4,
                                                              target="cuda-sm90-g128"), calib_data=[vinp],
                           progress=False)
    out["vsr-cuda-sm90-g128"] = (qm, save_pretrained(qm, root / "vsr-cuda-sm90-g128"), vinp, qm(**vinp).detach())
    # LSGQuant (DRAQ folded, low-rank, Hadamard, QAO), quick budget
    qm = compile_quantized(wan, winp, QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, target="cuda-sm90",
                                                  options={"sensitivity": "qerror", "light_iters": 2, "full_iters": 3,
                                                           "lowrank_share": 0.2}),
                           calib_data=[winp], progress=False)
    out["wanlsgq-cuda-sm90"] = (qm, save_pretrained(qm, root / "wanlsgq-cuda-sm90"), winp, qm(**winp).detach())
    return root, out


FRESH = r"""
import json, sys, torch
from safetensors.torch import load_file, save_file
import lsgq_compiler
from lsgq_compiler.vsr.models.tiny_vsr import build_tiny_vsr, upscale_clip
root = sys.argv[1]
jobs = json.load(open(root + "/jobs.json"))
res = {}
for name, inputs_file in jobs.items():
    m = lsgq_compiler.from_pretrained(root + "/" + name, allow_reference=True)
    assert "lsgq" not in type(m).__module__, type(m)
    inp = load_file(inputs_file)
    kw = {k: v for k, v in inp.items()}
    if name.startswith("cog"):
        kw["image_rotary_emb"] = None
    with torch.no_grad():
        res[name] = m(**kw, return_dict=False)[0].contiguous()
        if name.startswith("vsr"):
            vsr = build_tiny_vsr()  # random weights: only the wrapper (bicubic, latent maps); the transformer is m
            import numpy as np
            clip = (np.random.default_rng(0).random((4, 96, 160, 3)) * 255).astype("uint8")
            hq = upscale_clip(vsr, clip, transformer=m)
            res["vsr-96x160"] = torch.from_numpy(hq).contiguous()
save_file(res, root + "/outputs.safetensors")
"""


def test_fresh_process_load_matches(ckpts):
    """Load every checkpoint in a new process (no base model, no calibration) and compare."""
    from safetensors.torch import load_file, save_file

    root, out = ckpts
    jobs = {}
    for name, (_, d, inp, _) in out.items():
        f = root / f"{name}-inputs.safetensors"
        save_file({k: v.contiguous() for k, v in inp.items() if isinstance(v, torch.Tensor)}, str(f))
        jobs[name] = str(f)
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", FRESH, str(root)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_file(str(root / "outputs.safetensors"))
    for name in ("wan-cuda-sm90", "vsr-cuda-sm90-g128", "wanlsgq-cuda-sm90", "cog-cuda-sm90"):
        assert sqnr(out[name][3], got[name]) >= 40.0, (name, sqnr(out[name][3], got[name]))
    for name in ("wan-cuda-sm90", "vsr-cuda-sm90-g128"):  # same CPU math as the fake quantizers: bit for bit
        assert torch.equal(got[name], out[name][3].reshape(got[name].shape)), (name, sqnr(out[name][3], got[name]))
    assert sqnr(out["wan-cpu"][3], got["wan-cpu"]) >= 40.0
    assert sqnr(out["wan-sim"][3], got["wan-sim"]) >= 80.0
    assert got["vsr-96x160"].shape == (4, 384, 640, 3)  # whole clip in one call, no tiling


def test_uncaptured_shapes_match_recompile(ckpts):
    """At two shapes never captured, the loaded model equals the plan re-compiled there."""
    _, out = ckpts
    qm, d, _, _ = out["wan-cuda-sm90"]
    lm = from_pretrained(d, allow_reference=True)
    for frames, size in ((3, 8), (1, 24)):
        inp = wan_inputs(frames=frames, size=size, seed=5)
        ref = compile_quantized(tiny_wan(), inp, qm.config, calib_data=[inp], plan=qm.plan,
                                quant_state=qm.quant_state_dict(), progress=False)
        with torch.no_grad():
            got = lm(**inp, return_dict=False)[0]
        assert torch.equal(got, ref(**inp)), sqnr(ref(**inp), got)
    cog = from_pretrained(out["cog-cuda-sm90"][1], allow_reference=True)
    for frames in (2, 5):
        inp = cogvideox_inputs()
        inp["hidden_states"] = torch.randn(1, frames, 4, 16, 16)
        with torch.no_grad():
            y = cog(**inp, return_dict=False)[0]
        assert y.shape == (1, frames, 4, 16, 16) and torch.isfinite(y).all()


def test_fuse_gelu_keeps_outputs(ckpts):
    """Moving each feed-forward's tanh-GELU into the next deploy layer (what prepare() does on CUDA,
    where the Triton prologue applies it) leaves the CPU outputs bit for bit unchanged; state-dict
    keys stay; layers of other kinds are left alone."""
    from lsgq_compiler.deploy.modules import DeferredGELU, DeployLinear, fuse_gelu

    _, out = ckpts
    for name in ("wanlsgq-cuda-sm90", "cog-cuda-sm90"):
        _, d, inp, _ = out[name]
        m = from_pretrained(d, allow_reference=True)
        kw = dict(inp, image_rotary_emb=None) if name.startswith("cog") else dict(inp)
        keys = set(m.state_dict())
        with torch.no_grad():
            ref = m(**kw, return_dict=False)[0]
        assert fuse_gelu(m, "cuda") == 0  # nothing on CUDA here
        n = fuse_gelu(m, None)
        fused = [x for x in m.modules() if isinstance(x, DeployLinear) and x.input_act]
        assert n == len(fused) == sum(isinstance(x, DeferredGELU) for x in m.modules()) > 0, name
        assert set(m.state_dict()) == keys
        with torch.no_grad():
            assert torch.equal(m(**kw, return_dict=False)[0], ref), name
        assert fuse_gelu(m, None) == 0  # idempotent
    vsr = from_pretrained(out["vsr-cuda-sm90-g128"][1], allow_reference=True)  # int4_fp8 (mslk): no prologue
    assert fuse_gelu(vsr, None) == 0


def test_report_and_targets(ckpts):
    """The plan records what each layer asked for and became; the loaded model says which kernels run."""
    from lsgq_compiler.deploy.module_form import deploy_report

    _, out = ckpts
    qm = out["wan-cuda-sm90"][0]
    rows = [r for r in qm.report() if r.get("target")]
    assert rows and all(r["asked"] == "W4A4" for r in rows)
    # cuda-sm90: W4 -> int4 per row x FP8 rows (K = 32 / 64 are multiples of 16); A4 -> A8, and the note says so
    assert all(r["became"].startswith("W4 int4 sym per row") and "A4 -> A8 FP8" in r["note"] for r in rows)
    kinds = {s.extra["target"]["kind"] for s in qm.plan.layers.values() if "target" in s.extra}
    assert kinds == {"int4r_fp8"}
    # cuda-sm90-g128 on tiny Wan would need K % 128: K = 32 / 64 -> FP8 rowwise W8A8, with the reason
    from lsgq_compiler.deploy.targets import resolve
    kind, note = resolve("cuda-sm90-g128", 4, 4, 64)
    assert kind == "fp8_row" and "not a multiple of 128" in note
    vsr = out["vsr-cuda-sm90-g128"][0]
    kinds = {s.extra["target"]["kind"] for s in vsr.plan.layers.values() if "target" in s.extra}
    assert kinds == {"int4_fp8"}  # TinyVSR: K = 384 / 1536, multiples of 128
    lsgq = out["wanlsgq-cuda-sm90"][0]
    recs = [s.extra["target"] for s in lsgq.plan.layers.values() if "target" in s.extra]
    assert recs and all("DRAQ per-call channel range -> static channel scale" in r["note"] for r in recs)
    assert all(r.get("lowrank_dtype") == "bfloat16" for r in recs if lsgq.plan.layers)
    # cuda-sm90 (per-row FP8 kinds): each low-rank branch runs inside the FP8 GEMM, and the checkpoint says so
    lr = [r for r in recs if "lowrank" in r]
    assert lr and all(r["lowrank"].startswith("FP8 in the GEMM") for r in lr)
    cfg = json.loads((out["wanlsgq-cuda-sm90"][1] / "config.json").read_text())
    layers = cfg["quantization_config"]["layers"]
    assert sum(bool(c.get("lowrank_in_gemm")) for c in layers.values()) == len(lr)
    lm = from_pretrained(out["wan-cpu"][1])
    rep = deploy_report(lm)
    assert {r["kind"] for r in rep} == {"int8_row", "int8-attention"}
    assert all(r["real_kernel"] for r in rep if r["kind"] == "int8_row")


def test_deploy_linear_bit_exact_with_quant_linear():
    """One layer with smoothing, a bf16 low-rank branch and a Hadamard rotation: the deploy
    module's CPU path equals the fake-quant layer bit for bit, for each CUDA kind (per-row FP8 kinds
    with the low-rank branch in the GEMM and beside it)."""
    from lsgq_compiler.deploy.modules import DeployLinear
    from lsgq_compiler.deploy.numerics import KIND_QUANTIZERS, TargetActQuant, TargetWeightQuant, snap_bf16
    from lsgq_compiler.hadamard import random_signs
    from lsgq_compiler.plan import LayerSpec
    from lsgq_compiler.qlinear import QuantLinear

    torch.manual_seed(0)
    for kind, in_gemm in (("int4r_fp8", True), ("int4r_fp8", False), ("int4_fp8", False), ("int4_weight", False),
                          ("fp8_row", True), ("fp8_row", False)):
        m = QuantLinear(torch.randn(256, 384), torch.randn(256), LayerSpec("x", 384, 256, 4, 8))
        m.lowrank_in_gemm = in_gemm
        m.apply_smoothing(torch.rand(384) + 0.5)
        m.apply_lowrank(4)
        with torch.no_grad():
            m.lr_down.copy_(snap_bf16(m.lr_down))
            m.lr_up.copy_(snap_bf16(m.lr_up))
        m.apply_rotation(random_signs(384, 0), 128)
        wk, ak = KIND_QUANTIZERS[kind]
        m.wq, m.aq = TargetWeightQuant(wk), TargetActQuant(ak) if ak else None
        d = DeployLinear.from_quant_linear(m, kind)
        assert bool(d.cfg.get("lowrank_in_gemm")) == in_gemm
        x = torch.randn(2, 50, 384)
        with torch.no_grad():
            assert torch.equal(m(x), d(x)), kind


def test_torch_compile_loaded(ckpts):
    _, out = ckpts
    _, d, inp, ref = out["wan-cuda-sm90"]
    lm = from_pretrained(d, allow_reference=True)
    with torch.no_grad():
        assert torch._dynamo.explain(lm)(**inp, return_dict=False).graph_break_count == 0
        y = torch.compile(lm, backend="aot_eager")(**inp, return_dict=False)[0]  # inductor: ~90 s on 2 cores
    assert torch.equal(y, ref)


def test_shared_prologue_groups_self_attention_qkv(ckpts):
    """``share_prologues`` (opt-in) groups each self-attention's ``to_q``/``to_k``/``to_v`` (one prologue for
    the three), never a cross-attention's; outputs equal the ungrouped model's bit for bit on the CPU (>= 45 dB
    on CUDA, where the grouped layers run the multi-output kernel, autotuned separately), also under
    ``torch.compile`` with no graph break; a member called on another tensor than the group's input
    computes alone."""
    from lsgq_compiler.deploy.modules import DeployLinear, share_prologues
    from lsgq_compiler.kernels import fp8_prologue

    _, out = ckpts
    _, d, inp, ref = out["wanlsgq-cuda-sm90"]
    devices = ["cpu"] + (["cuda"] if fp8_prologue.available("cuda") else [])
    for device in devices:
        lm = from_pretrained(d, device=device, allow_reference=True)
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
        blocks = lm.blocks
        assert all(b.attn1.to_q._shared is None for b in blocks)  # off by default
        assert share_prologues(lm) == len(blocks)
        assert all(b.attn1.to_q._shared is not None and b.attn1.to_v._shared is b.attn1.to_q._shared
                   for b in blocks)
        assert all(b.attn2.to_q._shared is None for b in blocks)
        assert share_prologues(lm) == len(blocks)  # idempotent
        with torch.no_grad():
            y = lm(**kw, return_dict=False)[0]
            if device == "cpu":
                assert torch._dynamo.explain(lm)(**kw, return_dict=False).graph_break_count == 0
                assert torch.equal(torch.compile(lm, backend="aot_eager")(**kw, return_dict=False)[0], y)
                torch._dynamo.reset()
            for m in lm.modules():
                if isinstance(m, DeployLinear):
                    m._shared = None
            y0 = lm(**kw, return_dict=False)[0]
        if device == "cpu":
            assert torch.equal(y, y0) and torch.equal(y, ref)
        else:
            assert sqnr(y0.float(), y.float()) >= 45.0, sqnr(y0.float(), y.float())
    lm = from_pretrained(d, allow_reference=True)
    share_prologues(lm)
    a = lm.blocks[0].attn1
    x = torch.randn(1, 8, a.to_q.in_features)
    with torch.no_grad():
        q = a.to_q(x)
        k_other = a.to_k(x + 1)  # not the group's input: computed alone
        assert torch.equal(q, a.to_q._forward(x)) and torch.equal(k_other, a.to_k._forward(x + 1))
        assert torch.equal(a.to_k(x), a.to_k._forward(x)) and torch.equal(a.to_v(x), a.to_v._forward(x))
        assert a.to_q._shared.pending is None


def test_module_form_does_not_copy_planned_weights(monkeypatch):
    """to_module_form copies the model without its planned linears: their full-precision weights
    (most of a DiT's bytes) are never duplicated; the copy's parameters are the rest only."""
    from lsgq_compiler.deploy import to_module_form

    wan, winp = tiny_wan(), wan_inputs(frames=2, size=16)
    qm = compile_quantized(wan, winp, QuantConfig(recipe="minmax", weight_bits=4, act_bits=4, target="cuda-sm90"),
                           calib_data=[winp], progress=False)
    planned = [p for p, m in qm.quant_linears().items() if m.spec.quantized]
    planned_params = sum(wan.get_submodule(p).weight.numel() + (wan.get_submodule(p).bias.numel()
                         if wan.get_submodule(p).bias is not None else 0) for p in planned)
    copied: list[int] = []
    orig = torch.nn.Parameter.__deepcopy__

    def spy(self, memo):
        copied.append(self.numel())
        return orig(self, memo)

    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", spy)
    out = to_module_form(qm, wan)
    total = sum(p.numel() for p in wan.parameters())
    assert planned and planned_params > 0.5 * total
    assert sum(copied) == total - planned_params
    with torch.no_grad():
        assert torch.equal(out(**winp, return_dict=False)[0], qm(**winp))


def test_compile_repeated_blocks(ckpts):
    """Regional compilation: every transformer block compiled in place, outputs unchanged; Wan
    declares ``_repeated_blocks``, CogVideoX does not (found from its ``transformer_blocks``)."""
    from lsgq_compiler.deploy import compile_repeated_blocks
    from lsgq_compiler.deploy.regional import repeated_blocks

    _, out = ckpts
    for name in ("wan-cuda-sm90", "cog-cuda-sm90"):
        _, d, inp, ref = out[name]
        lm = from_pretrained(d, allow_reference=True)
        if name.startswith("cog"):
            inp = {**inp, "image_rotary_emb": None}
        n_blocks = len(lm.blocks if name.startswith("wan") else lm.transformer_blocks)
        assert [id(b) for b in repeated_blocks(lm)] == [id(b) for b in
                                                        (lm.blocks if name.startswith("wan") else lm.transformer_blocks)]
        assert compile_repeated_blocks(lm, backend="aot_eager") == n_blocks >= 2
        with torch.no_grad():
            y = lm(**inp, return_dict=False)[0]
        assert torch.equal(y, ref), name
    assert compile_repeated_blocks(torch.nn.Linear(2, 2)) == 0


def _tiny_wan_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], attn_scales=[],
                            latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()  # one per latent channel


def test_wan_pipeline_end_to_end(ckpts):
    """The loaded transformer in a Wan text-to-video loop with diffusers' own components: the flow-matching
    scheduler, a tiny random-weight Wan VAE, precomputed prompt embeddings (WanPipeline's denoising loop)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    _, out = ckpts
    lm = from_pretrained(out["wan-cuda-sm90"][1], allow_reference=True)
    vae, sched = _tiny_wan_vae(), FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 5, 32, generator=g)
    lat = torch.randn(1, 4, 2, 8, 8, generator=g)  # 5 frames, 64x64 pixels after the VAE
    sched.set_timesteps(2)
    with torch.no_grad():
        for t in sched.timesteps:
            noise = lm(hidden_states=lat, timestep=t.expand(1), encoder_hidden_states=emb, return_dict=False)[0]
            lat = sched.step(noise, t, lat, return_dict=False)[0]
        video = vae.decode(lat, return_dict=False)[0]
    assert video.shape == (1, 3, 5, 64, 64) and torch.isfinite(video).all()


def test_wan_pipeline_class(ckpts):
    """diffusers' WanPipeline itself (needs transformers for its text-encoder type; skipped without it)."""
    pytest.importorskip("transformers")
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    _, out = ckpts
    lm = from_pretrained(out["wan-cuda-sm90"][1], allow_reference=True)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(), transformer=lm,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    emb = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(2))
    video = pipe(prompt_embeds=emb, negative_prompt_embeds=emb, guidance_scale=1.0, height=32, width=32,
                 num_frames=5, num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).frames
    assert torch.isfinite(video).all()


def test_diffusers_from_pretrained_native(ckpts):
    """``WanTransformer3DModel.from_pretrained(dir)`` loads the checkpoint through the registered
    ``lsgq`` quantizer: same class, same outputs as lsgq_compiler.from_pretrained."""
    from diffusers import WanTransformer3DModel

    _, out = ckpts
    _, d, inp, ref = out["wan-cuda-sm90"]
    m = WanTransformer3DModel.from_pretrained(str(d))
    assert type(m) is WanTransformer3DModel
    with torch.no_grad():
        assert torch.equal(m(**inp, return_dict=False)[0], ref)
    # LSGQuant (low-rank factors with recorded strides): the native path lays tensors out as saved,
    # so it computes what lsgq_compiler.from_pretrained does, bit for bit
    _, d2, inp2, _ = out["wanlsgq-cuda-sm90"]
    native = WanTransformer3DModel.from_pretrained(str(d2))
    ours = from_pretrained(d2, allow_reference=True)
    with torch.no_grad():
        assert torch.equal(native(**inp2, return_dict=False)[0], ours(**inp2, return_dict=False)[0])


def test_diffusers_from_pretrained_native_checks_the_folder(ckpts, tmp_path):
    """The native path refuses what lsgq_compiler.from_pretrained refuses: edited weights, edited config."""
    import json

    from diffusers import WanTransformer3DModel

    _, out = ckpts
    bad = _copy(out["wan-cuda-sm90"][1], tmp_path / "bad")
    w = sorted(bad.glob("*.safetensors"))[0]
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 1
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        WanTransformer3DModel.from_pretrained(str(bad))
    edited = _copy(out["wan-cuda-sm90"][1], tmp_path / "edited")
    cfg = json.loads((edited / "config.json").read_text())
    cfg["quantization_config"]["target"] = "sim"
    (edited / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config_sha256"):
        WanTransformer3DModel.from_pretrained(str(edited))


# ---------------------------------------------------------------------- refusals
def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_refuses_other_model_class(ckpts):
    from diffusers import CogVideoXTransformer3DModel

    _, out = ckpts
    with pytest.raises(CheckpointError, match="holds a WanTransformer3DModel, not a CogVideoXTransformer3DModel"):
        from_pretrained(out["wan-cpu"][1], model_class=CogVideoXTransformer3DModel)


def test_refuses_newer_format(ckpts, tmp_path):
    _, out = ckpts
    d = _copy(out["wan-cpu"][1], tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="(?s)format version 99 is newer.*upgrade lsgq-compiler"):
        from_pretrained(d)


@pytest.mark.parametrize("damage", ["edit", "truncate"])
def test_refuses_damaged_tensors(ckpts, tmp_path, damage):
    _, out = ckpts
    d = _copy(out["wan-cpu"][1], tmp_path / "c")
    f = d / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "edit":
        data[-7] ^= 0x55
    else:
        data = data[: len(data) // 2]
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its sha256 check"):
        from_pretrained(d)


def test_refuses_target_this_device_cannot_run(ckpts):
    _, out = ckpts
    d = out["wan-cuda-sm90"][1]
    with pytest.raises(ValueError, match="cuda-sm90.*cannot run its kernels"):
        from_pretrained(d, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            from_pretrained(d, device="cuda")


def test_refuses_missing_kernel_library():
    with pytest.raises(ImportError, match=r"pip install 'lsgq-compiler\[cuda\]'.*mslk-cuda"):
        check_kernel_library("cuda-sm90", {"int4_fp8"}, find_spec=lambda name: None)
    check_kernel_library("cuda-sm90", {"fp8_row"}, find_spec=lambda name: None)  # FP8 needs no mslk


def test_refuses_unknown_target_and_unsupported_recipe():
    with pytest.raises(ValueError, match="unknown target 'cuda-sm70'"):
        QuantConfig(target="cuda-sm70")
    with pytest.raises(ValueError, match="recipe 'qdit4sr' cannot target 'cuda-sm90'"):
        compile_quantized(tiny_wan(), wan_inputs(), QuantConfig(recipe="qdit4sr", weight_bits=4, act_bits=4,
                                                                target="cuda-sm90"), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sm_89+)")
def test_int4r_deploy_linear_on_cuda_matches_cpu_reference():
    """``int4r_fp8`` with smoothing, a bf16 low-rank branch and Hadamard blocks of 0, 128 and 512: the CUDA
    path (Triton prologue with 1 / smooth folded in, int4 -> FP8 unpack, ``_scaled_mm``; the low-rank
    branch as extra FP8 GEMM columns, or by ``addmm``) against the layer's CPU path (the fake-quant
    model's numbers), >= 35 dB (bf16 rounding of ``x / smooth`` and of the output apart); compiled
    (fullgraph) == eager."""
    from lsgq_compiler.deploy.modules import DeployLinear
    from lsgq_compiler.deploy.numerics import KIND_QUANTIZERS, TargetActQuant, TargetWeightQuant, snap_bf16
    from lsgq_compiler.hadamard import random_signs
    from lsgq_compiler.kernels import fp8_prologue
    from lsgq_compiler.plan import LayerSpec
    from lsgq_compiler.qlinear import QuantLinear

    if not fp8_prologue.available("cuda"):
        pytest.skip("needs Triton and sm_89+")
    torch.manual_seed(0)
    for block, in_gemm in ((128, True), (512, True), (128, False), (0, True)):
        m = QuantLinear(torch.randn(384, 1024) * 0.03, torch.randn(384), LayerSpec("x", 1024, 384, 4, 8))
        m.lowrank_in_gemm = in_gemm
        m.apply_smoothing(torch.rand(1024) + 0.5)
        m.apply_lowrank(8)
        with torch.no_grad():
            m.lr_down.copy_(snap_bf16(m.lr_down))
            m.lr_up.copy_(snap_bf16(m.lr_up))
        if block:
            m.apply_rotation(random_signs(1024, 0), block)
        wk, ak = KIND_QUANTIZERS["int4r_fp8"]
        m.wq, m.aq = TargetWeightQuant(wk), TargetActQuant(ak)
        d = DeployLinear.from_quant_linear(m, "int4r_fp8")
        x = torch.randn(3, 700, 1024)
        with torch.no_grad():
            ref = d(x)
            dc = DeployLinear.from_quant_linear(m, "int4r_fp8").cuda()
            for name, b in list(dc._buffers.items()):
                if b is not None and b.is_floating_point() and name in ("bias", "smooth", "rot_signs"):
                    setattr(dc, name, b.to(torch.bfloat16))
            y = dc(x.cuda().to(torch.bfloat16))
            assert y.dtype == torch.bfloat16 and y.shape == (3, 700, 384)
            assert sqnr(ref, y.float().cpu()) >= 35.0, (block, in_gemm, sqnr(ref, y.float().cpu()))
            dc.prepare()  # the kernel operands built once (what from_pretrained does on CUDA)
            assert sqnr(y.float(), dc(x.cuda().to(torch.bfloat16)).float()) >= 50.0
            yc = torch.compile(dc, fullgraph=True)(x.cuda().to(torch.bfloat16))
            assert sqnr(y.float(), yc.float()) >= 50.0
