//! The profile phase: the pieces of one transformer block timed alone, with the card's ceilings.

use candle_core::{DType, Device, Tensor};
use engine::gpu::{flops, RandomWeights};

use crate::args::Args;
use crate::common::*;

/// Times the pieces of one DiT block at the bench's shapes (batch 2, text 30) and the card's
/// ceilings; emits one JSON line per piece with its per-step total (× uses per block × blocks).
pub(crate) fn profile_phase(args: &Args, cfgs: &Configs, device: &Device) -> engine::Result<()> {
    use candle_nn::Module;
    use engine::transformer::attention::{scaled_dot_product_attention, KeyMask};
    use engine::transformer::block::TransformerBlock;
    use engine::transformer::norm::layer_norm;
    use engine::transformer::rope::{apply_rope, Rope, RopeVariant};

    let tcfg = &cfgs.transformer;
    let dtype = args.dtype;
    let (d, heads, dh) = (tcfg.inner_dim(), tcfg.num_attention_heads, tcfg.attention_head_dim);
    let grid = args.resolution / 16;
    let frames = args.layers + 2;
    let s_img = frames * grid * grid;
    let s_txt = 30;
    let s = s_img + s_txt;
    let blocks = tcfg.num_layers as f64;
    let reps = 5;
    let randn =
        |shape: &[usize]| -> engine::Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?) };
    let report = |name: &str, secs: f64, per_block: f64, flops: f64, bytes: f64| {
        emit(serde_json::json!({
            "run": "ours_profile", "tag": args.tag, "op": name, "ms": secs * 1e3, "uses_per_block": per_block,
            "ms_per_step": secs * 1e3 * per_block * blocks,
            "tflops": if flops > 0.0 { Some(flops / secs / 1e12) } else { None },
            "gbps": if bytes > 0.0 { Some(bytes / secs / 1e9) } else { None },
        }));
    };

    // Ceilings: a large bf16 GEMM, the same in f32 (TF32 when configured), a device copy.
    let n = if device.is_cuda() { 8192 } else { 256 };
    let (a, b) = (randn(&[n, n])?, randn(&[n, n])?);
    let t = time_op(device, reps, || Ok(a.matmul(&b)?))?;
    report("ceiling_gemm_8192", t, 0.0, 2.0 * (n as f64).powi(3), 0.0);
    let (a32, b32) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let t = time_op(device, reps, || Ok(a32.matmul(&b32)?))?;
    report("ceiling_gemm_8192_f32", t, 0.0, 2.0 * (n as f64).powi(3), 0.0);
    let big = Tensor::randn(0f32, 1.0, if device.is_cuda() { 1usize << 30 } else { 1 << 20 }, device)?;
    let t = time_op(device, reps, || Ok(big.copy()?))?;
    report("ceiling_copy_4GiB", t, 0.0, 0.0, 2.0 * 4.0 * (1u64 << 30) as f64);
    drop((a, b, a32, b32, big));
    if let Some((pinned, pageable)) = h2d_bandwidth(device)? {
        report("ceiling_h2d_pinned_1GiB", pinned, 0.0, 0.0, (1u64 << 30) as f64);
        report("ceiling_h2d_pageable_1GiB", pageable, 0.0, 0.0, (1u64 << 30) as f64);
    }

    // The block's pieces on the image stream (the text stream is 30 tokens: negligible).
    let x = randn(&[2, s_img, d])?;
    let lin = |i: usize, o: usize| -> engine::Result<candle_nn::Linear> {
        Ok(candle_nn::Linear::new(randn(&[o, i])?, Some(randn(&[o])?)))
    };
    let x_bytes = (2 * s_img * d * dtype.size_in_bytes()) as f64;
    let (proj, up, down) = (lin(d, d)?, lin(d, 4 * d)?, lin(4 * d, d)?);
    let t = time_op(device, reps, || Ok(proj.forward(&x)?))?;
    report(
        "linear_d_to_d (q,k,v,out)",
        t,
        4.0,
        2.0 * (2 * s_img * d * d) as f64,
        0.0,
    );
    let t = time_op(device, reps, || Ok(up.forward(&x)?))?;
    report(
        "linear_d_to_4d (mlp in)",
        t,
        1.0,
        2.0 * (2 * s_img * d * 4 * d) as f64,
        0.0,
    );
    let h = randn(&[2, s_img, 4 * d])?;
    let t = time_op(device, reps, || Ok(down.forward(&h)?))?;
    report(
        "linear_4d_to_d (mlp out)",
        t,
        1.0,
        2.0 * (2 * s_img * d * 4 * d) as f64,
        0.0,
    );
    let t = time_op(device, reps, || Ok(h.gelu()?))?;
    report("gelu_tanh (mlp)", t, 1.0, 0.0, 2.0 * 4.0 * x_bytes);
    drop(h);
    let (scale, shift) = (randn(&[2, 1, d])?, randn(&[2, 1, d])?);
    let t = time_op(device, reps, || Ok(layer_norm(&x, 1e-6)?))?;
    report("layer_norm (f32 statistics)", t, 2.0, 0.0, 2.0 * x_bytes);
    let t = time_op(device, reps, || {
        Ok(x.broadcast_mul(&(&scale + 1.0)?)?.broadcast_add(&shift)?)
    })?;
    report("modulate scale/shift", t, 2.0, 0.0, 2.0 * x_bytes);
    let t = time_op(device, reps, || Ok((&x + x.broadcast_mul(&scale)?)?))?;
    report("gated residual", t, 2.0, 0.0, 3.0 * x_bytes);

    // Attention: q/k RMSNorm, joint layout, RoPE, the attention itself and its parts.
    let heads_x = x.reshape((2, s_img, heads, dh))?;
    let w = Tensor::ones(dh, DType::F32, device)?;
    let t = time_op(device, reps, || {
        Ok(candle_nn::ops::rms_norm(&heads_x.to_dtype(DType::F32)?.contiguous()?, &w, 1e-6)?.to_dtype(dtype)?)
    })?;
    report("rms_norm q/k (f32)", t, 2.0, 0.0, 2.0 * x_bytes);
    let txt = randn(&[2, s_txt, heads, dh])?;
    let t = time_op(device, reps, || {
        Ok(Tensor::cat(&[&txt, &heads_x], 1)?.transpose(1, 2)?.contiguous()?)
    })?;
    report("joint cat + transpose (q,k,v)", t, 3.0, 0.0, 2.0 * x_bytes);
    let rope = Rope::new(tcfg.axes_dims_rope, RopeVariant::Layer3d, device);
    let tables = rope.tables(&vec![(1, grid, grid); frames], s_txt)?;
    let q = randn(&[2, heads, s, dh])?;
    let k = randn(&[2, heads, s, dh])?;
    let v = randn(&[2, heads, s, dh])?;
    let t = time_op(device, reps, || Ok(apply_rope(&q, &tables.cos, &tables.sin)?))?;
    report("rope (f32)", t, 2.0, 0.0, 2.0 * x_bytes);
    let mask = Tensor::cat(
        &[
            Tensor::ones((1, s_txt), DType::U8, device)?,
            Tensor::cat(
                &[
                    Tensor::ones((1, 6), DType::U8, device)?,
                    Tensor::zeros((1, s_txt - 6), DType::U8, device)?,
                ],
                1,
            )?,
        ],
        0,
    )?;
    let key_mask = KeyMask::from_text_mask(&mask, s_img)?;
    let attn_flops = 4.0 * (2 * heads * s * s * dh) as f64;
    let t = time_op(device, 3, || {
        Ok(scaled_dot_product_attention(&q, &k, &v, Some(&key_mask))?)
    })?;
    report("attention (masked CFG batch, all parts)", t, 1.0, attn_flops, 0.0);
    // One query chunk of one batch row, as the attention runs it.
    let rows = ((1usize << 26) / (heads * s)).clamp(1, s);
    let q32 = q
        .narrow(0, 0, 1)?
        .narrow(2, 0, rows)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let k32t = k.narrow(0, 0, 1)?.to_dtype(DType::F32)?.contiguous()?.t()?;
    let v32 = v.narrow(0, 0, 1)?.to_dtype(DType::F32)?.contiguous()?;
    let chunks = 2.0 * (s as f64 / rows as f64).ceil();
    let scores = q32.matmul(&k32t)?;
    let t = time_op(device, reps, || Ok(q32.matmul(&k32t)?))?;
    report(
        "attn chunk: q kᵀ (f32/TF32)",
        t,
        chunks,
        2.0 * (heads * rows * s * dh) as f64,
        0.0,
    );
    let score_bytes = (heads * rows * s * 4) as f64;
    let t = time_op(device, reps, || Ok(engine::gpu::softmax::softmax_last_dim(&scores)?))?;
    report("attn chunk: softmax (ours)", t, chunks, 0.0, 2.0 * score_bytes);
    let t = time_op(device, reps, || Ok(candle_nn::ops::softmax_last_dim(&scores)?))?;
    report("attn chunk: softmax (candle, not used)", t, 0.0, 0.0, 2.0 * score_bytes);
    let probs = engine::gpu::softmax::softmax_last_dim(&scores)?;
    let t = time_op(device, reps, || Ok(probs.matmul(&v32)?))?;
    report(
        "attn chunk: p v (f32/TF32)",
        t,
        chunks,
        2.0 * (heads * rows * s * dh) as f64,
        0.0,
    );
    drop((scores, probs, q32, k32t, v32));

    // The fused path's pieces (bf16 on CUDA): what a block costs with the fused kernels.
    if args.fused && engine::gpu::fused::applies_to(&x) {
        use engine::gpu::fused;
        let wq = randn(&[d, d])?;
        let x2 = x.reshape((2 * s_img, d))?;
        let t = time_op(device, reps, || Ok(x2.matmul(&wq.t()?)?))?;
        // Uses per block of the separate passes the epilogues replace (1 or 0), and of the
        // bias-free D→D GEMM (v's goes to the epilogue GEMM when on).
        let separate = if args.gemm_epilogue { 0.0 } else { 1.0 };
        let d_to_d_uses = 3.0 + separate;
        report(
            "fused: GEMM D→D without bias (q,k,v,out)",
            t,
            d_to_d_uses,
            2.0 * (2 * s_img * d * d) as f64,
            0.0,
        );
        let wu = randn(&[4 * d, d])?;
        let t = time_op(device, reps, || Ok(x2.matmul(&wu.t()?)?))?;
        report(
            "fused: GEMM D→4D without bias (mlp in)",
            t,
            separate,
            2.0 * (2 * s_img * d * 4 * d) as f64,
            0.0,
        );
        let h2 = randn(&[2 * s_img, 4 * d])?;
        let t = time_op(device, reps, || Ok(h2.matmul(&wu)?))?;
        report(
            "fused: GEMM 4D→D without bias (mlp out)",
            t,
            1.0,
            2.0 * (2 * s_img * d * 4 * d) as f64,
            0.0,
        );
        let bias4 = randn(&[4 * d])?;
        let h3 = h2.reshape((2, s_img, 4 * d))?;
        let t = time_op(device, reps, || Ok(fused::bias_gelu(&h3, &bias4)?))?;
        report("fused: bias + GELU", t, separate, 0.0, 2.0 * 4.0 * x_bytes);
        let t = time_op(device, reps, || {
            Ok(engine::gpu::gemm_epilogue::linear_bias_gelu(&x, &wu, &bias4)?)
        })?;
        let mlp_in_flops = 2.0 * (2 * s_img * d * 4 * d) as f64;
        report(
            "fused: cuBLASLt GEMM D→4D + bias + GELU epilogue",
            t,
            1.0 - separate,
            mlp_in_flops,
            0.0,
        );
        drop((h2, h3));
        let params = randn(&[2, 6 * d])?;
        let (p0, p1) = (params.narrow(1, 0, d)?, params.narrow(1, d, d)?);
        let t = time_op(device, reps, || Ok(fused::ln_modulate(&x, &p0, &p1, 1e-6)?))?;
        report("fused: LayerNorm + modulate", t, 2.0, 0.0, 2.0 * x_bytes);
        let bias = randn(&[d])?;
        let y = randn(&[2, s_img, d])?;
        let t = time_op(device, reps, || Ok(fused::gated_residual(&x, &y, &bias, &p0)?))?;
        report("fused: gated residual + bias", t, 2.0, 0.0, 3.0 * x_bytes);
        let txt_p = randn(&[2, s_txt, d])?;
        let w = Tensor::ones(dh, DType::F32, device)?;
        let norms = fused::HeadNorms {
            image: &w,
            text: &w,
            eps: 1e-6,
        };
        let t = time_op(device, reps, || {
            Ok(fused::joint_qkv(&x, &txt_p, &bias, &bias, Some(&norms), Some(&tables))?)
        })?;
        report("fused: joint q/k (bias, RMSNorm, RoPE)", t, 2.0, 0.0, 2.0 * x_bytes);
        let t = time_op(device, reps, || {
            Ok(fused::joint_qkv(&x, &txt_p, &bias, &bias, None, None)?)
        })?;
        report("fused: joint v (bias)", t, separate, 0.0, 2.0 * x_bytes);
        let txt_in = randn(&[2, s_txt, d])?;
        let t = time_op(device, reps, || {
            Ok(engine::gpu::gemm_epilogue::joint_linear(
                &x, &wq, &bias, &txt_in, &wq, &bias,
            )?)
        })?;
        report(
            "fused: cuBLASLt joint v GEMMs + bias epilogue",
            t,
            1.0 - separate,
            2.0 * (2 * s * d * d) as f64,
            0.0,
        );
        let (jq, jk, jv) = (
            randn(&[2, s, heads, dh])?,
            randn(&[2, s, heads, dh])?,
            randn(&[2, s, heads, dh])?,
        );
        let kv_len = Tensor::new(&[s as u32, (s_img + 6) as u32], device)?;
        let cudnn = args.kernels().cudnn_attention_active();
        for kernel in fused::FlashKernel::ALL {
            let t = time_op(device, reps, || {
                Ok(fused::own_flash_attention(&jq, &jk, &jv, &kv_len, s_img, kernel)?.0)
            })?;
            let uses = if !cudnn && kernel == args.flash_kernel {
                1.0
            } else {
                0.0
            };
            report(
                &format!("fused: flash attention, our kernel {}", kernel.name()),
                t,
                uses,
                attn_flops,
                0.0,
            );
        }
        if cudnn {
            match time_op(device, reps, || {
                Ok(engine::gpu::cudnn_attention::attention(&jq, &jk, &jv, &kv_len, s_img, args.cudnn_autotune)?.0)
            }) {
                Ok(t) => report("fused: attention, cuDNN SDPA", t, 1.0, attn_flops, 0.0),
                Err(e) => emit(
                    serde_json::json!({"run": "ours_profile", "tag": args.tag, "op": "fused: attention, cuDNN SDPA", "error": e.to_string()}),
                ),
            }
        }
    }

    // The whole block, for the sum check: the path the run uses, and the plain one.
    let block_vb = RandomWeights::var_builder_with(args.init, dtype, device);
    let block = TransformerBlock::new(d, heads, dh, 0, block_vb.pp("transformer_blocks").pp(0))?;
    let txt_x = randn(&[2, s_txt, d])?;
    let temb = randn(&[2, d])?;
    let block_flops = flops::dit_forward(args.resolution, args.layers, 30) / blocks * 2.0;
    let kernels = args.kernels();
    let t = time_op(device, 3, || {
        Ok(block.forward(&x, &txt_x, &temb, &tables, Some(&key_mask), &kernels)?.0)
    })?;
    report("whole block", t, 1.0, block_flops, 0.0);
    if kernels.fused && engine::gpu::fused::applies_to(&x) {
        let plain = engine::gpu::fused::Kernels::PLAIN;
        let t = time_op(device, 3, || {
            Ok(block.forward(&x, &txt_x, &temb, &tables, Some(&key_mask), &plain)?.0)
        })?;
        report("whole block, plain path (not used)", t, 0.0, block_flops, 0.0);
    }
    Ok(())
}

/// Seconds to copy 1 GiB host → device from page-locked and from ordinary memory (the offload
/// path's ceiling), CUDA only.
pub(crate) fn h2d_bandwidth(device: &Device) -> engine::Result<Option<(f64, f64)>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let err =
            |e: candle_core::cuda::cudarc::driver::DriverError| engine::Error::InvalidInput(format!("h2d: {e:?}"));
        let stream = dev.cuda_stream();
        let ctx = stream.context().clone();
        let n = 1usize << 30;
        // SAFETY: contents are irrelevant to a bandwidth measurement; both buffers are n bytes.
        let pinned = unsafe { ctx.alloc_pinned::<u8>(n) }.map_err(err)?;
        let pageable = vec![1u8; n];
        let mut dst = unsafe { stream.alloc::<u8>(n) }.map_err(err)?;
        let mut time = |src: &dyn Fn(&mut candle_core::cuda::cudarc::driver::CudaSlice<u8>) -> engine::Result<()>| -> engine::Result<f64> {
            src(&mut dst)?;
            stream.synchronize().map_err(err)?;
            let mut ts = Vec::new();
            for _ in 0..3 {
                let t = std::time::Instant::now();
                src(&mut dst)?;
                stream.synchronize().map_err(err)?;
                ts.push(t.elapsed().as_secs_f64());
            }
            Ok(median(ts))
        };
        let t_pinned = time(&|d| stream.memcpy_htod(&pinned, d).map_err(err))?;
        let t_pageable = time(&|d| stream.memcpy_htod(&pageable, d).map_err(err))?;
        return Ok(Some((t_pinned, t_pageable)));
    }
    let _ = device;
    Ok(None)
}
