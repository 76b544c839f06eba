"""The tiny configs and dummy-input shapes of diffusers' own transformer tests, as plain data.

Re-created from ``tests/models/transformers/test_models_transformer_*.py`` (and the DiT/PixArt
tests) of huggingface/diffusers: the ``init_dict`` of each test and the shapes of its dummy
inputs, nothing else. Inputs are described by small specs that :func:`make_inputs` turns into
tensors with a seeded generator, so "fresh" inputs are the same specs at another seed:

- ``("randn", shape)``, ``("rand", shape)``: float32 normal / uniform;
- ``("randint", high, shape)``: int64 in ``[0, high)``;
- ``("ones", shape)`` / ``("zeros", shape)`` (optional dtype name as a third item);
- ``("tensor", values)`` (optional dtype name); ``("ids", sizes)``: ``cartesian_prod`` of
  ``arange(n)`` for each size, with a leading batch axis of 1 (Flux2's position ids);
- ``("list", [spec, ...])``: a list of tensors; anything else is passed through as is.
"""
from __future__ import annotations

from typing import Any

import torch

# name -> (diffusers class name, init kwargs, input specs)
CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "Wan": ("WanTransformer3DModel",
            dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                 text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
            dict(hidden_states=("randn", (1, 4, 2, 16, 16)), encoder_hidden_states=("randn", (1, 12, 16)),
                 timestep=("randint", 1000, (1,)))),
    "WanVACE": ("WanVACETransformer3DModel",
                dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                     out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads", rope_max_seq_len=32, vace_layers=[0, 2], vace_in_channels=48),
                dict(hidden_states=("randn", (1, 16, 2, 16, 16)), encoder_hidden_states=("randn", (1, 12, 32)),
                     control_hidden_states=("randn", (1, 48, 2, 16, 16)), timestep=("randint", 1000, (1,)))),
    "ChronoEdit": ("ChronoEditTransformer3DModel",
                   dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-06, image_dim=None, added_kv_proj_dim=None,
                        rope_max_seq_len=64, pos_embed_seq_len=None, rope_temporal_skip_len=8),
                   dict(hidden_states=("randn", (1, 16, 2, 8, 8)), timestep=("randint", 1000, (1,)),
                        encoder_hidden_states=("randn", (1, 12, 32)), encoder_hidden_states_image=None)),
    "SkyReelsV2": ("SkyReelsV2Transformer3DModel",
                   dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                        out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
                   dict(hidden_states=("randn", (1, 4, 2, 16, 16)), encoder_hidden_states=("randn", (1, 12, 16)),
                        timestep=("randint", 1000, (1,)))),
    # sin-cos positional embedding; inputs (1 frame, 8x8) differ from sample_frames=8 on purpose (test's own)
    "CogVideoX": ("CogVideoXTransformer3DModel",
                  dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                       text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
                       temporal_compression_ratio=4, max_text_seq_length=8),
                  dict(hidden_states=("randn", (2, 1, 4, 8, 8)), encoder_hidden_states=("randn", (2, 8, 8)),
                       timestep=("randint", 1000, (2,)))),
    "CogVideoX1.5": ("CogVideoXTransformer3DModel",
                     dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                          time_embed_dim=2, text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8,
                          sample_frames=8, patch_size=2, patch_size_t=2, temporal_compression_ratio=4,
                          max_text_seq_length=8, use_rotary_positional_embeddings=True),
                     dict(hidden_states=("randn", (2, 2, 4, 8, 8)), encoder_hidden_states=("randn", (2, 8, 8)),
                          timestep=("randint", 1000, (2,)))),
    "ConsisID": ("ConsisIDTransformer3DModel",
                 dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                      text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
                      temporal_compression_ratio=4, max_text_seq_length=8, cross_attn_interval=1, is_kps=False,
                      is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1, LFE_id_dim=2, LFE_vit_dim=2,
                      LFE_depth=5, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1,
                      LFE_output_dim=10, LFE_ff_mult=1, LFE_num_scale=1),
                 dict(hidden_states=("randn", (2, 1, 4, 8, 8)), encoder_hidden_states=("randn", (2, 8, 8)),
                      timestep=("randint", 1000, (2,)), id_vit_hidden=("list", [("ones", (2, 2, 2))]),
                      id_cond=("ones", (2, 2)))),
    "Flux": ("FluxTransformer2DModel",
             dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
             dict(hidden_states=("randn", (1, 16, 4)), encoder_hidden_states=("randn", (1, 48, 32)),
                  pooled_projections=("randn", (1, 32)), img_ids=("randn", (16, 3)), txt_ids=("randn", (48, 3)),
                  timestep=("tensor", [1.0]))),
    "Flux2": ("Flux2Transformer2DModel",
              dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
                   axes_dims_rope=[4, 4, 4, 4]),
              dict(hidden_states=("randn", (1, 16, 4)), encoder_hidden_states=("randn", (1, 48, 32)),
                   img_ids=("ids", (1, 4, 4, 1)), txt_ids=("ids", (1, 1, 1, 48)), timestep=("tensor", [1.0]),
                   guidance=("tensor", [1.0]))),
    "Chroma": ("ChromaTransformer2DModel",
               dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                    num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8]),
               dict(hidden_states=("randn", (1, 16, 4)), encoder_hidden_states=("randn", (1, 48, 32)),
                    img_ids=("randn", (16, 3)), txt_ids=("randn", (48, 3)), timestep=("tensor", [1.0]))),
    "Bria": ("BriaTransformer2DModel",
             dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4]),
             dict(hidden_states=("randn", (1, 16, 4)), encoder_hidden_states=("randn", (1, 48, 32)),
                  img_ids=("randn", (16, 3)), txt_ids=("randn", (48, 3)), timestep=("tensor", [1.0]))),
    "SD3": ("SD3Transformer2DModel",
            dict(sample_size=32, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=4,
                 caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
                 pos_embed_max_size=96, dual_attention_layers=(), qk_norm=None),
            dict(hidden_states=("randn", (2, 4, 32, 32)), encoder_hidden_states=("randn", (2, 154, 32)),
                 pooled_projections=("randn", (2, 64)), timestep=("randint", 1000, (2,)))),
    "SD3.5": ("SD3Transformer2DModel",
              dict(sample_size=32, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=8,
                   num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
                   out_channels=4, pos_embed_max_size=96, dual_attention_layers=(0,), qk_norm="rms_norm"),
              dict(hidden_states=("randn", (2, 4, 32, 32)), encoder_hidden_states=("randn", (2, 154, 32)),
                   pooled_projections=("randn", (2, 64)), timestep=("randint", 1000, (2,)))),
    "AuraFlow": ("AuraFlowTransformer2DModel",
                 dict(sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
                      attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                      out_channels=4, pos_embed_max_size=256),
                 dict(hidden_states=("randn", (2, 4, 32, 32)), encoder_hidden_states=("randn", (2, 256, 32)),
                      timestep=("randint", 1000, (2,)))),
    "LTXVideo": ("LTXVideoTransformer3DModel",
                 dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                      num_layers=1, qk_norm="rms_norm_across_heads", caption_channels=16),
                 dict(hidden_states=("randn", (2, 512, 4)), encoder_hidden_states=("randn", (2, 16, 16)),
                      timestep=("randint", 1000, (2,)), encoder_attention_mask=("ones", (2, 16), "bool"),
                      num_frames=2, height=16, width=16)),
    "LTX2Video": ("LTX2VideoTransformer3DModel",
                  dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
                       attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
                       audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
                       num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=16,
                       rope_double_precision=False),
                  dict(hidden_states=("randn", (2, 512, 4)), audio_hidden_states=("randn", (2, 9, 4)),
                       encoder_hidden_states=("randn", (2, 16, 16)), audio_encoder_hidden_states=("randn", (2, 16, 16)),
                       timestep=("randint", 1000, (2,)), encoder_attention_mask=("ones", (2, 16), "bool"),
                       num_frames=2, height=16, width=16, audio_num_frames=9, fps=25.0)),
    "HunyuanVideo": ("HunyuanVideoTransformer3DModel",
                     dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
                          num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1,
                          guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
                          image_condition_type=None),
                     dict(hidden_states=("randn", (1, 4, 1, 16, 16)), timestep=("randint", 1000, (1,), "float32"),
                          encoder_hidden_states=("randn", (1, 12, 16)), pooled_projections=("randn", (1, 8)),
                          encoder_attention_mask=("ones", (1, 12)), guidance=("randint", 1000, (1,), "float32"))),
    "HunyuanVideo15": ("HunyuanVideo15Transformer3DModel",
                       dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                            num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
                            text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16,
                            task_type="t2v"),
                       dict(hidden_states=("randn", (1, 4, 1, 8, 8)), timestep=("tensor", [1.0]),
                            encoder_hidden_states=("randn", (1, 6, 16)), encoder_hidden_states_2=("randn", (1, 4, 8)),
                            encoder_attention_mask=("ones", (1, 6)), encoder_attention_mask_2=("ones", (1, 4)),
                            image_embeds=("zeros", (1, 3, 12)))),
    "HunyuanVideoFramepack": ("HunyuanVideoFramepackTransformer3DModel",
                              dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                                   num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
                                   patch_size_t=1, guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
                                   rope_axes_dim=(2, 4, 4), image_condition_type=None, has_image_proj=True,
                                   image_proj_dim=16, has_clean_x_embedder=True),
                              dict(hidden_states=("randn", (1, 4, 3, 4, 4)), timestep=("randint", 1000, (1,)),
                                   encoder_hidden_states=("randn", (1, 12, 16)), pooled_projections=("randn", (1, 8)),
                                   encoder_attention_mask=("ones", (1, 12)), guidance=("randint", 1000, (1,)),
                                   image_embeds=("randn", (1, 12, 16)), indices_latents=("ones", (3,)),
                                   latents_clean=("randn", (1, 4, 2, 4, 4)), indices_latents_clean=("ones", (2,)),
                                   latents_history_2x=("randn", (1, 4, 2, 4, 4)),
                                   indices_latents_history_2x=("ones", (2,)),
                                   latents_history_4x=("randn", (1, 4, 8, 4, 4)),
                                   indices_latents_history_4x=("ones", (8,)))),
    "HunyuanDiT": ("HunyuanDiT2DModel",
                   dict(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                        num_attention_heads=2, cross_attention_dim=8, cross_attention_dim_t5=8, pooled_projection_dim=4,
                        hidden_size=16, text_len=4, text_len_t5=4, activation_fn="gelu-approximate"),
                   dict(hidden_states=("randn", (2, 4, 8, 8)), encoder_hidden_states=("randn", (2, 4, 8)),
                        text_embedding_mask=("ones", (2, 4)), encoder_hidden_states_t5=("randn", (2, 4, 8)),
                        text_embedding_mask_t5=("ones", (2, 4)), timestep=("randint", 1000, (2,), "float32"),
                        image_meta_size=("tensor", [[1024, 1024, 16, 16, 0, 0]] * 2, "float32"),
                        style=("zeros", (2,), "int64"),
                        image_rotary_emb=("list", [("ones", (1, 8)), ("zeros", (1, 8))]))),
    "Mochi": ("MochiTransformer3DModel",
              dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
                   in_channels=4, out_channels=None, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4,
                   activation_fn="swiglu", max_sequence_length=16),
              dict(hidden_states=("randn", (2, 4, 2, 16, 16)), encoder_hidden_states=("randn", (2, 16, 16)),
                   timestep=("randint", 1000, (2,)), encoder_attention_mask=("ones", (2, 16), "bool"))),
    "Allegro": ("AllegroTransformer3DModel",
                dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=1,
                     cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=8),
                dict(hidden_states=("randn", (2, 4, 8, 8, 8)), encoder_hidden_states=("randn", (2, 16, 8)),
                     timestep=("randint", 1000, (2,)))),
    "Latte": ("LatteTransformer3DModel",
              dict(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=4, num_attention_heads=2,
                   caption_channels=8, in_channels=4, cross_attention_dim=8, out_channels=8, attention_bias=True,
                   activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                   norm_elementwise_affine=False, norm_eps=1e-6),
              dict(hidden_states=("randn", (2, 4, 1, 8, 8)), encoder_hidden_states=("randn", (2, 8, 8)),
                   timestep=("randint", 1000, (2,)), enable_temporal_attentions=True)),
    "EasyAnimate": ("EasyAnimateTransformer3DModel",
                    dict(attention_head_dim=16, num_attention_heads=2, in_channels=4, mmdit_layers=2, num_layers=2,
                         out_channels=4, patch_size=2, sample_height=60, sample_width=90, text_embed_dim=16,
                         time_embed_dim=8, time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
                    dict(hidden_states=("randn", (2, 4, 2, 16, 16)), timestep=("randint", 1000, (2,)),
                         encoder_hidden_states=("randn", (2, 16, 16)))),
    "Cosmos": ("CosmosTransformer3DModel",
               dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
                    mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
                    rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type="learnable"),
               dict(hidden_states=("randn", (1, 4, 1, 16, 16)), timestep=("randint", 1000, (1,)),
                    encoder_hidden_states=("randn", (1, 12, 16)), attention_mask=("ones", (1, 12)), fps=30,
                    padding_mask=("zeros", (1, 1, 16, 16)))),
    "CogView3Plus": ("CogView3PlusTransformer2DModel",
                     dict(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
                          out_channels=4, text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8,
                          sample_size=8),
                     dict(hidden_states=("randn", (2, 4, 8, 8)), encoder_hidden_states=("randn", (2, 8, 8)),
                          original_size=("tensor", [[64, 64]] * 2), target_size=("tensor", [[64, 64]] * 2),
                          crop_coords=("tensor", [[0, 0]] * 2), timestep=("randint", 1000, (2,)))),
    "CogView4": ("CogView4Transformer2DModel",
                 dict(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4,
                      out_channels=4, text_embed_dim=8, time_embed_dim=8, condition_dim=4),
                 dict(hidden_states=("randn", (2, 4, 8, 8)), encoder_hidden_states=("randn", (2, 8, 8)),
                      timestep=("randint", 1000, (2,)), original_size=("tensor", [[64, 64]] * 2),
                      target_size=("tensor", [[64, 64]] * 2), crop_coords=("tensor", [[0, 0]] * 2))),
    "HiDream": ("HiDreamImageTransformer2DModel",
                dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1,
                     attention_head_dim=8, num_attention_heads=4, caption_channels=[8, 4], text_emb_dim=8,
                     num_routed_experts=2, num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32),
                     llama_layers=(0, 1), force_inference_output=True),
                dict(hidden_states=("randn", (2, 4, 32, 32)), encoder_hidden_states_t5=("randn", (2, 8, 8)),
                     encoder_hidden_states_llama3=("randn", (2, 2, 8, 4)), pooled_embeds=("randn", (2, 8)),
                     timesteps=("randint", 1000, (2,)))),
    "Lumina2": ("Lumina2Transformer2DModel",
                dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=1,
                     num_attention_heads=3, num_kv_heads=1, multiple_of=2, ffn_dim_multiplier=None, norm_eps=1e-5,
                     scaling_factor=1.0, axes_dim_rope=(4, 2, 2), axes_lens=(128, 128, 128), cap_feat_dim=32),
                dict(hidden_states=("randn", (2, 4, 16, 16)), encoder_hidden_states=("randn", (2, 16, 32)),
                     timestep=("rand", (2,)), encoder_attention_mask=("ones", (2, 16), "bool"))),
    "LuminaNextDiT": ("LuminaNextDiT2DModel",
                      dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2,
                           num_attention_heads=3, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None,
                           norm_eps=1e-5, learn_sigma=False, qk_norm=True, cross_attention_dim=32, scaling_factor=1.0),
                      dict(hidden_states=("randn", (2, 4, 16, 16)), encoder_hidden_states=("randn", (2, 16, 32)),
                           timestep=("rand", (2,)), encoder_mask=("randn", (2, 16)),
                           image_rotary_emb=("randn", (384, 384, 4)), cross_attention_kwargs={})),
    "OmniGen": ("OmniGenTransformer2DModel",
                dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=20,
                     pad_token_id=0, vocab_size=1000, in_channels=4, time_step_dim=4,
                     rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]}),
                dict(hidden_states=("randn", (2, 4, 8, 8)), timestep=("rand", (2,)),
                     input_ids=("randint", 10, (2, 24)), input_img_latents=("list", [("randn", (1, 4, 8, 8))]),
                     input_image_sizes={0: [[0, 16]]}, attention_mask=("ones", (2, 41, 41)),
                     position_ids=("tensor", [list(range(41))] * 2))),
    "ZImage": ("ZImageTransformer2DModel",
               dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=16, n_layers=1, n_refiner_layers=1,
                    n_heads=1, n_kv_heads=2, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
                    axes_dims=[8, 4, 4], axes_lens=[256, 32, 32]),
               dict(x=("list", [("randn", (16, 1, 16, 16))]), cap_feats=("list", [("randn", (16, 16))]),
                    t=("tensor", [0.0]))),
    "QwenImage": ("QwenImageTransformer2DModel",
                  dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                       num_attention_heads=4, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4)),
                  dict(hidden_states=("randn", (1, 16, 16)), encoder_hidden_states=("randn", (1, 8, 16)),
                       encoder_hidden_states_mask=("ones", (1, 8), "int64"), timestep=("tensor", [1.0]),
                       img_shapes=[(1, 4, 4)])),
    "Sana": ("SanaTransformer2DModel",
             dict(patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=4, num_attention_heads=2,
                  num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
                  sample_size=32),
             dict(hidden_states=("randn", (2, 4, 32, 32)), encoder_hidden_states=("randn", (2, 8, 8)),
                  timestep=("randint", 1000, (2,)))),
    "PixArt": ("PixArtTransformer2DModel",
               dict(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=2, num_attention_heads=2,
                    in_channels=4, cross_attention_dim=8, out_channels=8, attention_bias=True,
                    activation_fn="gelu-approximate", num_embeds_ada_norm=8, norm_type="ada_norm_single",
                    norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
                    caption_channels=None),
               dict(hidden_states=("rand", (4, 4, 8, 8)), timestep=("randint", 1000, (4,)),
                    encoder_hidden_states=("rand", (4, 8, 8)),
                    added_cond_kwargs={"aspect_ratio": None, "resolution": None})),
    "DiT": ("DiTTransformer2DModel",
            dict(in_channels=4, out_channels=8, activation_fn="gelu-approximate", num_attention_heads=2,
                 attention_head_dim=4, attention_bias=True, num_layers=1, norm_type="ada_norm_zero",
                 num_embeds_ada_norm=8, patch_size=2, sample_size=8),
            dict(hidden_states=("rand", (4, 4, 8, 8)), timestep=("randint", 1000, (4,)),
                 class_labels=("randint", 4, (4,)))),
}

#: configs whose model needs a package the project does not install: name -> (module, reason)
NEEDS = {"Cosmos": ("torchvision", "CosmosTransformer3DModel's forward calls torchvision.transforms")}

#: configs LSGQuant W4A4 must also run on (issue 19)
LSGQUANT = ("Wan", "CogVideoX1.5", "Flux", "SD3", "LTXVideo", "HunyuanVideo", "Mochi")
#: a CI-sized subset covering each capture route: plain graph (Wan), list output (ZImage), module
#: form (Lumina2); the tests also run CogVideoX (sin-cos rewrite), LTX2Video (several outputs) and
#: HunyuanVideo15 (a specialised + guarded branch) on their own
CI_SUBSET = ("Wan", "ZImage", "Lumina2")

_DTYPES = {"bool": torch.bool, "int64": torch.int64, "float32": torch.float32}


def _make(spec: Any, g: torch.Generator) -> Any:
    if not (isinstance(spec, tuple) and spec and isinstance(spec[0], str)):
        return spec
    kind = spec[0]
    if kind == "randn":
        return torch.randn(spec[1], generator=g)
    if kind == "rand":
        return torch.rand(spec[1], generator=g)
    if kind == "randint":
        t = torch.randint(0, spec[1], spec[2], generator=g)
        return t.to(_DTYPES[spec[3]]) if len(spec) > 3 else t
    if kind in ("ones", "zeros"):
        return getattr(torch, kind)(spec[1], dtype=_DTYPES[spec[2]] if len(spec) > 2 else torch.float32)
    if kind == "tensor":
        return torch.tensor(spec[1], dtype=_DTYPES[spec[2]]) if len(spec) > 2 else torch.tensor(spec[1])
    if kind == "ids":
        return torch.cartesian_prod(*[torch.arange(n) for n in spec[1]]).unsqueeze(0)
    if kind == "list":
        return [_make(s, g) for s in spec[1]]
    return spec


def make_inputs(name: str, seed: int = 0) -> dict[str, Any]:
    """The dummy inputs of config ``name`` drawn at ``seed`` (a new seed gives fresh inputs)."""
    g = torch.Generator().manual_seed(seed)
    return {k: _make(v, g) for k, v in CONFIGS[name][2].items()}


def make_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model of config ``name`` with seeded random weights, in eval mode."""
    import diffusers

    cls_name, init, _ = CONFIGS[name]
    torch.manual_seed(seed)
    return getattr(diffusers, cls_name)(**init).eval()
