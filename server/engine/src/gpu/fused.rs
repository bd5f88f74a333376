//! The DiT block's fused CUDA kernels (bf16): flash attention (`kernels/attention_sm90.cu` on
//! Hopper, `kernels/attention.cu` elsewhere) and the element-wise passes around it
//! (`kernels/fused.cu`). The transformer uses them when
//! [`applies_to`] says so and keeps its plain candle path for the CPU, f32 (the parity path) and
//! any shape the kernels don't cover; tests check each kernel against that plain path.
//!
//! Without the `cuda` feature every function here returns an error and [`applies_to`] is false.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor};

use crate::rope_tables::RopeTables;

/// Set once cuDNN failed on this machine (no libcudnn, unsupported shape): our kernel from then on.
/// (A fact about the machine, not a choice: the choices are a [`Kernels`] value.)
static CUDNN_FAILED: AtomicBool = AtomicBool::new(false);

/// Which kernels a transformer runs in bf16 on a GPU: held by the model
/// (`QwenImageTransformer::set_kernels`) and passed down each forward, so two models (or a bench
/// and a test) can differ without touching any process-wide switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// The fused block kernels; off: the plain candle path (the parity reference).
    pub fused: bool,
    /// GEMMs carry work in their cuBLASLt epilogue ([`super::gemm_epilogue`]): the MLP input
    /// projection its bias and GELU (else the separate [`bias_gelu`] kernel), the v projections
    /// their biases and the joint layout (else [`joint_qkv`]).
    pub gemm_epilogue: bool,
    /// Our flash-attention kernel.
    pub flash: FlashKernel,
    /// cuDNN's SDPA instead of our kernel, where this build has it (the `cudnn-attention`
    /// feature). Off by default: on Hopper our kernel is as fast and writes the two streams'
    /// outputs apart (docs/benchmarks.md); on for comparison.
    pub cudnn_attention: bool,
    /// cuDNN times all its plans for a new shape and keeps the fastest, instead of its
    /// heuristic's first pick (off: on an H100 at 640² the tuned plan was no faster, 0.746 s vs
    /// 0.743 s per step, and tuning costs time on first use).
    pub cudnn_autotune: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Self {
            fused: true,
            gemm_epilogue: true,
            flash: FlashKernel::ALL[0],
            cudnn_attention: false,
            cudnn_autotune: false,
        }
    }
}

impl Kernels {
    /// The plain candle path throughout.
    pub const PLAIN: Kernels = Kernels {
        fused: false,
        gemm_epilogue: false,
        flash: FlashKernel::Sm90,
        cudnn_attention: false,
        cudnn_autotune: false,
    };

    /// Whether the next joint attention will try cuDNN: compiled in, chosen, not failed before.
    pub fn cudnn_attention_active(&self) -> bool {
        cfg!(feature = "cudnn-attention") && self.cudnn_attention && !CUDNN_FAILED.load(Ordering::Relaxed)
    }
}

/// The flash-attention kernels, chosen by measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKernel {
    /// Hopper (compute capability 9.0) only, `kernels/attention_sm90.cu`: wgmma and TMA, a
    /// producer warpgroup and two consumer warpgroups of 64 query rows, 128-key tiles. On any
    /// other GPU [`FlashKernel::W4`] runs in its place.
    Sm90,
    // The mma.sync kernels of `kernels/attention.cu` (sm_80 and later):
    /// 4 warps × 16 query rows, 64-key tiles.
    W4,
    /// 8 warps × 16 rows: each K/V tile serves 128 queries.
    W8,
    /// 4 warps × 32 rows (one K/V fragment feeds two row tiles), 32-key sub-tiles.
    W4M2,
}

impl FlashKernel {
    /// The first is the default.
    pub const ALL: [FlashKernel; 4] = [FlashKernel::Sm90, FlashKernel::W4, FlashKernel::W8, FlashKernel::W4M2];

    pub fn name(self) -> &'static str {
        match self {
            FlashKernel::Sm90 => "sm90",
            FlashKernel::W4 => "w4",
            FlashKernel::W8 => "w8",
            FlashKernel::W4M2 => "w4m2",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn entry(self) -> &'static str {
        match self {
            FlashKernel::Sm90 => "engine_flash_attention_sm90",
            FlashKernel::W4 => "engine_flash_attn_hd128_w4",
            FlashKernel::W8 => "engine_flash_attn_hd128_w8",
            FlashKernel::W4M2 => "engine_flash_attn_hd128_w4_m2",
        }
    }

    /// (threads per block, query rows per block).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn block(self) -> (u32, usize) {
        match self {
            FlashKernel::Sm90 => (384, 128),
            FlashKernel::W4 => (128, 64),
            FlashKernel::W8 => (256, 128),
            FlashKernel::W4M2 => (128, 128),
        }
    }
}

static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Fused kernels launched so far in this process (tests check that a run took the fused path).
pub fn kernel_launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// Whether [`FlashKernel::Sm90`] runs on `device` (a CUDA build for compute capability 9.0 on a
/// Hopper GPU); elsewhere [`FlashKernel::W4`] stands in for it.
pub fn sm90_available(device: &candle_core::Device) -> bool {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = device {
        return cuda::sm90::available(dev);
    }
    let _ = device;
    false
}

/// Whether the fused kernels can serve `x`: a CUDA build and `x` a bf16 tensor on a GPU
/// (whether they do is the caller's [`Kernels::fused`]).
pub fn applies_to(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == DType::BF16
}

/// Head dimension the flash-attention kernel is written for.
pub const FLASH_HEAD_DIM: usize = 128;

/// Widest row the layer-norm kernel holds in registers (256 threads × 2 × 8 elements).
pub const MAX_LN_DIM: usize = 4096;

/// `LayerNorm(x)·(1 + scale) + shift` over the last axis (no affine, statistics in f32) for `x`
/// `[B, S, D]` and per-batch rows `shift`, `scale` `[B, D]` (views with a row stride are fine).
pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::ln_modulate(x, shift, scale, eps);
    #[cfg(not(feature = "cuda"))]
    no_cuda((x, shift, scale, eps))
}

/// `x + gate·(y + bias)` for `x`, `y` `[B, S, D]`, `bias` `[D]`, `gate` `[B, D]` (row-strided
/// views fine).
pub fn gated_residual(x: &Tensor, y: &Tensor, bias: &Tensor, gate: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::gated_residual(x, y, bias, gate);
    #[cfg(not(feature = "cuda"))]
    no_cuda((x, y, bias, gate))
}

/// `gelu_tanh(y + bias)` for `y` `[…, N]`, `bias` `[N]`.
pub fn bias_gelu(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::bias_gelu(y, bias);
    #[cfg(not(feature = "cuda"))]
    no_cuda((y, bias))
}

/// Per-head RMSNorm weights (f32 `[128]`) of the image and text streams, and the norm's eps.
pub struct HeadNorms<'a> {
    pub image: &'a Tensor,
    pub text: &'a Tensor,
    pub eps: f64,
}

/// One of q, k, v of the joint attention as a `[B, S_img + S_txt, H, 128]` buffer in the token
/// order **[image, text]**, from the streams' bias-free projections `x_img` `[B, S_img, H·128]`
/// and `x_txt` `[B, S_txt, H·128]`: adds the biases, then (if given) the per-head RMSNorm, then
/// (if given) RoPE with the tables of the [text, image] order.
pub fn joint_qkv(
    x_img: &Tensor,
    x_txt: &Tensor,
    bias_img: &Tensor,
    bias_txt: &Tensor,
    norms: Option<&HeadNorms>,
    rope: Option<&RopeTables>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::joint_qkv(x_img, x_txt, bias_img, bias_txt, norms, rope);
    #[cfg(not(feature = "cuda"))]
    no_cuda((x_img, x_txt, bias_img, bias_txt, norms.is_some(), rope))
}

/// softmax(q·kᵀ/√128)·v for joint buffers `[B, S, H, 128]` where batch row `b` attends to its
/// first `kv_len[b]` keys (`kv_len` u32 `[B]` on the device). Returns the rows before `split`
/// as `[B, split, H·128]` and the rest as `[B, S − split, H·128]`.
///
/// Runs cuDNN's fused attention when [`Kernels::cudnn_attention_active`], else (or if cuDNN
/// fails, which is logged once and remembered) our own kernel (`kernels.flash`).
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kv_len: &Tensor,
    split: usize,
    kernels: &Kernels,
) -> Result<(Tensor, Tensor)> {
    if kernels.cudnn_attention_active() {
        match super::cudnn_attention::attention(q, k, v, kv_len, split, kernels.cudnn_autotune) {
            Ok(out) => return Ok(out),
            Err(e) => {
                CUDNN_FAILED.store(true, Ordering::Relaxed);
                tracing::warn!("cuDNN attention unavailable, using the engine's own kernel: {e}");
            }
        }
    }
    own_flash_attention(q, k, v, kv_len, split, kernels.flash)
}

/// [`flash_attention`] through our own kernel `kernel` only.
pub fn own_flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kv_len: &Tensor,
    split: usize,
    kernel: FlashKernel,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    return cuda::flash_attention(q, k, v, kv_len, split, kernel);
    #[cfg(not(feature = "cuda"))]
    no_cuda((q, k, v, kv_len, split, kernel))
}

#[cfg(not(feature = "cuda"))]
fn no_cuda<T, A>(_args: A) -> Result<T> {
    candle_core::bail!("the fused kernels need a build with the `cuda` feature")
}

/// The CUDA side; its tensor helpers (`cuda_device`, `check_dtype`, `view`, `output`) also serve
/// `gemm_epilogue`.
#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchArgs, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, DType, Device, Layout, Result, Shape, Storage, Tensor};
    use half::bf16;

    use super::{count_launch, FlashKernel, HeadNorms, FLASH_HEAD_DIM, MAX_LN_DIM};
    use crate::rope_tables::RopeTables;

    const FUSED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    /// Empty when the build targets a GPU other than Hopper (build.rs).
    const ATTENTION_SM90_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention_sm90.ptx"));
    /// Threads per block of the element-wise kernels.
    pub(crate) const THREADS: u32 = 256;

    pub(crate) fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
        match t.device() {
            Device::Cuda(d) => Ok(d.clone()),
            _ => bail!("fused kernel: tensor is not on a CUDA device"),
        }
    }

    pub(crate) fn check_dtype(t: &Tensor, dtype: DType, what: &str) -> Result<()> {
        if t.dtype() != dtype {
            bail!("fused kernel: {what} is {:?}, expected {dtype:?}", t.dtype());
        }
        Ok(())
    }

    /// A contiguous tensor's elements as a CUDA view (borrowing the storage's read guard).
    pub(crate) fn view<'a, T: CudaDType>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<CudaView<'a, T>> {
        let Storage::Cuda(s) = storage else {
            bail!("fused kernel: {what} is not on CUDA")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("fused kernel: {what} is not contiguous")
        };
        Ok(s.as_cuda_slice::<T>()?.slice(start..end))
    }

    /// A `[B, D]` tensor whose rows may be `stride` elements apart (a column slice of a wider
    /// contiguous tensor): the view from its first element, and the stride.
    fn rows_view<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<(CudaView<'a, bf16>, i64)> {
        let Storage::Cuda(s) = storage else {
            bail!("fused kernel: {what} is not on CUDA")
        };
        let (dims, stride) = (layout.dims(), layout.stride());
        if dims.len() != 2 || stride[1] != 1 {
            bail!("fused kernel: {what} must be [B, D] with unit column stride, got {dims:?} / {stride:?}");
        }
        let start = layout.start_offset();
        let end = start + (dims[0].max(1) - 1) * stride[0] + dims[1];
        Ok((s.as_cuda_slice::<bf16>()?.slice(start..end), stride[0] as i64))
    }

    /// `let $v = <CUDA view of the contiguous tensor $t>;`, its storage's read guard held (under a
    /// hygienic name) until the end of the enclosing block.
    macro_rules! cuda_view {
        ($v:ident: $ty:ty = $t:expr) => {
            let guard = $t.storage_and_layout();
            let $v = view::<$ty>(&guard.0, guard.1, stringify!($t))?;
        };
    }

    /// `let ($v, $stride) = <view of the row-strided [B, D] tensor $t>;`, guard held likewise.
    macro_rules! cuda_rows {
        ($v:ident, $stride:ident = $t:expr) => {
            let guard = $t.storage_and_layout();
            let ($v, $stride) = rows_view(&guard.0, guard.1, stringify!($t))?;
        };
    }

    /// Launches `grid` blocks of `threads` threads on candle's stream and counts the launch.
    ///
    /// # Safety
    /// The kernel's reads and writes must stay within the buffers passed to `builder`.
    pub(crate) unsafe fn launch(builder: &mut LaunchArgs<'_>, grid: (u32, u32, u32), threads: u32) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { launch_with_smem(builder, grid, threads, 0) }
    }

    /// [`launch`] with `smem` bytes of dynamic shared memory per block.
    ///
    /// # Safety
    /// As for [`launch`].
    unsafe fn launch_with_smem(
        builder: &mut LaunchArgs<'_>,
        grid: (u32, u32, u32),
        threads: u32,
        smem: u32,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: forwarded to the caller.
        unsafe { builder.launch(cfg) }.w()?;
        count_launch();
        Ok(())
    }

    pub(crate) fn output<T: CudaDType>(dev: &CudaDevice, slice: CudaSlice<T>, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
            shape,
            BackpropOp::none(),
            false,
        )
    }

    /// Grid size for a grid-stride loop over `n` items, a few waves deep.
    pub(crate) fn grid_for(n: usize) -> u32 {
        n.div_ceil(THREADS as usize).clamp(1, 132 * 16) as u32
    }

    pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        if d % 8 != 0 || d > MAX_LN_DIM || shift.dims() != [b, d] || scale.dims() != [b, d] {
            bail!(
                "ln_modulate: x {:?}, shift {:?}, scale {:?} unsupported",
                x.dims(),
                shift.dims(),
                scale.dims()
            );
        }
        for (t, w) in [(x, "x"), (shift, "shift"), (scale, "scale")] {
            check_dtype(t, DType::BF16, w)?;
        }
        let dev = cuda_device(x)?;
        let x = x.contiguous()?;
        cuda_view!(xv: bf16 = x);
        cuda_rows!(shv, sh_stride = shift);
        cuda_rows!(scv, sc_stride = scale);
        if sh_stride != sc_stride {
            bail!("ln_modulate: shift and scale rows must share a stride");
        }
        let rows = b * s;
        // SAFETY: every element is written by the kernel (one block per row).
        let mut out = unsafe { dev.alloc::<bf16>(rows * d)? };
        if rows > 0 {
            let func = dev.get_or_load_custom_func("engine_ln_modulate_bf16", "engine_fused", FUSED_PTX)?;
            let mut builder = func.builder();
            let (rows_per_batch, dim, eps) = (s as i32, d as i32, eps as f32);
            builder.arg(&xv).arg(&shv).arg(&scv).arg(&sh_stride).arg(&mut out);
            builder.arg(&rows_per_batch).arg(&dim).arg(&eps);
            // SAFETY: reads rows × d of x and b rows of shift/scale, writes rows × d of out.
            unsafe { launch(&mut builder, (rows as u32, 1, 1), THREADS) }?;
        }
        Ok(output(&dev, out, (b, s, d)))
    }

    pub fn gated_residual(x: &Tensor, y: &Tensor, bias: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        if d % 8 != 0 || y.dims() != x.dims() || bias.dims() != [d] || gate.dims() != [b, d] {
            bail!(
                "gated_residual: x {:?}, y {:?}, bias {:?}, gate {:?} unsupported",
                x.dims(),
                y.dims(),
                bias.dims(),
                gate.dims()
            );
        }
        for (t, w) in [(x, "x"), (y, "y"), (bias, "bias"), (gate, "gate")] {
            check_dtype(t, DType::BF16, w)?;
        }
        let dev = cuda_device(x)?;
        let (x, y, bias) = (x.contiguous()?, y.contiguous()?, bias.contiguous()?);
        cuda_view!(xv: bf16 = x);
        cuda_view!(yv: bf16 = y);
        cuda_view!(bv: bf16 = bias);
        cuda_rows!(gv, g_stride = gate);
        let n = b * s * d;
        // SAFETY: the grid-stride loop writes every element.
        let mut out = unsafe { dev.alloc::<bf16>(n.max(1))? };
        if n > 0 {
            let func = dev.get_or_load_custom_func("engine_gated_residual_bf16", "engine_fused", FUSED_PTX)?;
            let mut builder = func.builder();
            let (rows_per_batch, dim, vecs) = (s as i64, d as i32, (n / 8) as i64);
            builder.arg(&xv).arg(&yv).arg(&bv).arg(&gv).arg(&g_stride).arg(&mut out);
            builder.arg(&rows_per_batch).arg(&dim).arg(&vecs);
            // SAFETY: reads n elements of x and y, d of bias, b rows of gate; writes n of out.
            unsafe { launch(&mut builder, (grid_for(n / 8), 1, 1), THREADS) }?;
        }
        Ok(output(&dev, out, (b, s, d)))
    }

    pub fn bias_gelu(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let d = *y.dims().last().unwrap_or(&0);
        if !d.is_multiple_of(8) || bias.dims() != [d] {
            bail!("bias_gelu: y {:?}, bias {:?} unsupported", y.dims(), bias.dims());
        }
        check_dtype(y, DType::BF16, "y")?;
        check_dtype(bias, DType::BF16, "bias")?;
        let dev = cuda_device(y)?;
        let (y, bias) = (y.contiguous()?, bias.contiguous()?);
        cuda_view!(yv: bf16 = y);
        cuda_view!(bv: bf16 = bias);
        let n = y.elem_count();
        // SAFETY: the grid-stride loop writes every element.
        let mut out = unsafe { dev.alloc::<bf16>(n.max(1))? };
        if n > 0 {
            let func = dev.get_or_load_custom_func("engine_bias_gelu_bf16", "engine_fused", FUSED_PTX)?;
            let mut builder = func.builder();
            let (dim, vecs) = (d as i32, (n / 8) as i64);
            builder.arg(&yv).arg(&bv).arg(&mut out).arg(&dim).arg(&vecs);
            // SAFETY: reads n elements of y and d of bias, writes n of out.
            unsafe { launch(&mut builder, (grid_for(n / 8), 1, 1), THREADS) }?;
        }
        Ok(output(&dev, out, y.shape().clone()))
    }

    pub fn joint_qkv(
        x_img: &Tensor,
        x_txt: &Tensor,
        bias_img: &Tensor,
        bias_txt: &Tensor,
        norms: Option<&HeadNorms>,
        rope: Option<&RopeTables>,
    ) -> Result<Tensor> {
        let (b, s_img, width) = x_img.dims3()?;
        let (b2, s_txt, width2) = x_txt.dims3()?;
        if b2 != b || width2 != width || width % FLASH_HEAD_DIM != 0 {
            bail!(
                "joint_qkv: image {:?} and text {:?} projections don't match",
                x_img.dims(),
                x_txt.dims()
            );
        }
        let heads = width / FLASH_HEAD_DIM;
        let seq = s_img + s_txt;
        for (t, w) in [
            (x_img, "x_img"),
            (x_txt, "x_txt"),
            (bias_img, "bias_img"),
            (bias_txt, "bias_txt"),
        ] {
            check_dtype(t, DType::BF16, w)?;
        }
        if bias_img.dims() != [width] || bias_txt.dims() != [width] {
            bail!(
                "joint_qkv: biases {:?} / {:?}, expected [{width}]",
                bias_img.dims(),
                bias_txt.dims()
            );
        }
        if let Some(n) = norms {
            if n.image.dims() != [FLASH_HEAD_DIM] || n.text.dims() != [FLASH_HEAD_DIM] {
                bail!("joint_qkv: RMSNorm weights must be [{FLASH_HEAD_DIM}]");
            }
            check_dtype(n.image, DType::F32, "norm weight")?;
            check_dtype(n.text, DType::F32, "norm weight")?;
        }
        if let Some(r) = rope {
            if r.cos.dims() != [seq, FLASH_HEAD_DIM / 2] || r.txt_len != s_txt {
                bail!(
                    "joint_qkv: RoPE tables {:?} (text {}) for {s_txt} text + {s_img} image tokens",
                    r.cos.dims(),
                    r.txt_len
                );
            }
        }
        let dev = cuda_device(x_img)?;
        let (x_img, x_txt, bias_img, bias_txt) = (
            x_img.contiguous()?,
            x_txt.contiguous()?,
            bias_img.contiguous()?,
            bias_txt.contiguous()?,
        );
        // Absent norms/RoPE: the kernel ignores those pointers; any valid f32 buffer stands in.
        let placeholder = Tensor::zeros(1, DType::F32, x_img.device())?;
        let (w_img, w_txt, eps) = match norms {
            Some(n) => (n.image.contiguous()?, n.text.contiguous()?, n.eps as f32),
            None => (placeholder.clone(), placeholder.clone(), 0.0),
        };
        let (cos, sin) = match rope {
            Some(r) => (r.cos.contiguous()?, r.sin.contiguous()?),
            None => (placeholder.clone(), placeholder.clone()),
        };
        let flags = i32::from(norms.is_some()) | (i32::from(rope.is_some()) << 1);

        cuda_view!(xi: bf16 = x_img);
        cuda_view!(xt: bf16 = x_txt);
        cuda_view!(bi: bf16 = bias_img);
        cuda_view!(bt: bf16 = bias_txt);
        cuda_view!(wi: f32 = w_img);
        cuda_view!(wt: f32 = w_txt);
        cuda_view!(cv: f32 = cos);
        cuda_view!(sv: f32 = sin);

        let tokens = b * seq;
        if tokens * width > i32::MAX as usize {
            bail!("joint_qkv: {tokens} tokens × {width} exceed the kernel's 32-bit indexing");
        }
        // SAFETY: one half-warp writes each (token, head) vector of 128 elements.
        let mut out = unsafe { dev.alloc::<bf16>((tokens * width).max(1))? };
        if tokens > 0 {
            let func = dev.get_or_load_custom_func("engine_joint_qkv_bf16", "engine_fused", FUSED_PTX)?;
            let mut builder = func.builder();
            let (bb, si, st, hh) = (b as i32, s_img as i32, s_txt as i32, heads as i32);
            builder
                .arg(&xi)
                .arg(&xt)
                .arg(&bi)
                .arg(&bt)
                .arg(&wi)
                .arg(&wt)
                .arg(&cv)
                .arg(&sv)
                .arg(&mut out);
            builder.arg(&bb).arg(&si).arg(&st).arg(&hh).arg(&eps).arg(&flags);
            let grid = (tokens * heads.div_ceil(2)).div_ceil(8).clamp(1, 132 * 16) as u32;
            // SAFETY: reads the two projections, biases, weights and tables within their shapes
            // (checked above); writes b × seq × heads × 128 elements.
            unsafe { launch(&mut builder, (grid, 1, 1), THREADS) }?;
        }
        Ok(output(&dev, out, (b, seq, heads, FLASH_HEAD_DIM)))
    }

    pub fn flash_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv_len: &Tensor,
        split: usize,
        kernel: FlashKernel,
    ) -> Result<(Tensor, Tensor)> {
        let (b, seq, heads, dh) = q.dims4()?;
        if dh != FLASH_HEAD_DIM || k.dims() != q.dims() || v.dims() != q.dims() || split > seq {
            bail!(
                "flash_attention: q {:?}, k {:?}, v {:?}, split {split} unsupported",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        for (t, w) in [(q, "q"), (k, "k"), (v, "v")] {
            check_dtype(t, DType::BF16, w)?;
        }
        check_dtype(kv_len, DType::U32, "kv_len")?;
        if kv_len.dims() != [b] {
            bail!("flash_attention: kv_len {:?}, expected [{b}]", kv_len.dims());
        }
        let dev = cuda_device(q)?;
        let (q, k, v, kv_len) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, kv_len.contiguous()?);
        cuda_view!(qv: bf16 = q);
        cuda_view!(kv: bf16 = k);
        cuda_view!(vv: bf16 = v);
        cuda_view!(lv: u32 = kv_len);
        let width = heads * dh;
        // SAFETY: every query row of every head is written (rows past `seq` are skipped).
        let mut out0 = unsafe { dev.alloc::<bf16>((b * split * width).max(1))? };
        let mut out1 = unsafe { dev.alloc::<bf16>((b * (seq - split) * width).max(1))? };
        let kernel = if kernel == FlashKernel::Sm90 && !sm90::usable(&dev, [&qv, &kv, &vv])? {
            FlashKernel::W4
        } else {
            kernel
        };
        if b * seq * heads > 0 {
            let (s, h, sp) = (seq as i32, heads as i32, split as i32);
            let scale_log2 = std::f32::consts::LOG2_E / (dh as f32).sqrt();
            let (threads, rows_per_block) = kernel.block();
            let grid = (seq.div_ceil(rows_per_block) as u32, heads as u32, b as u32);
            if kernel == FlashKernel::Sm90 {
                let stream = dev.cuda_stream();
                let map_q = sm90::tensor_map(&qv, &stream, b, seq, heads)?;
                let map_k = sm90::tensor_map(&kv, &stream, b, seq, heads)?;
                let map_v = sm90::tensor_map(&vv, &stream, b, seq, heads)?;
                let func = dev.get_or_load_custom_func(kernel.entry(), "engine_attention_sm90", ATTENTION_SM90_PTX)?;
                func.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    sm90::SMEM_BYTES as i32,
                )
                .w()?;
                let mut builder = func.builder();
                builder
                    .arg(&map_q)
                    .arg(&map_k)
                    .arg(&map_v)
                    .arg(&lv)
                    .arg(&mut out0)
                    .arg(&mut out1);
                builder.arg(&s).arg(&h).arg(&sp).arg(&scale_log2);
                // SAFETY: the tensor maps cover q, k, v ([b, seq, heads, 128], checked; the copy
                // engine zero-fills past their ends); kv_len has b entries; the outputs hold
                // b × split and b × (seq − split) rows of heads × 128.
                unsafe { launch_with_smem(&mut builder, grid, threads, sm90::SMEM_BYTES) }?;
            } else {
                let func = dev.get_or_load_custom_func(kernel.entry(), "engine_attention", ATTENTION_PTX)?;
                let mut builder = func.builder();
                builder
                    .arg(&qv)
                    .arg(&kv)
                    .arg(&vv)
                    .arg(&mut out0)
                    .arg(&mut out1)
                    .arg(&lv);
                builder.arg(&s).arg(&h).arg(&sp).arg(&scale_log2);
                // SAFETY: q, k, v are [b, seq, heads, 128] (checked); kv_len has b entries; the
                // outputs hold b × split and b × (seq − split) rows of heads × 128.
                unsafe { launch(&mut builder, grid, threads) }?;
            }
        }
        Ok((
            output(&dev, out0, (b, split, width)),
            output(&dev, out1, (b, seq - split, width)),
        ))
    }

    /// What the Hopper kernel needs from the host: its shared-memory size and the copy engine's
    /// tensor maps (descriptors of q, k, v that the kernel's TMA loads read).
    pub(super) mod sm90 {
        use std::ffi::c_void;

        use candle_core::cuda_backend::cudarc::driver::sys::{
            self, CUresult, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
            CUtensorMapL2promotion, CUtensorMapSwizzle,
        };
        use candle_core::cuda_backend::cudarc::driver::{CudaStream, CudaView, DevicePtr, DeviceRepr};
        use candle_core::cuda_backend::CudaDevice;
        use candle_core::{bail, Result};
        use half::bf16;

        /// `sm90::SMEM_BYTES` of the kernel: Q, two stages of K and V (32 KB each), the
        /// barriers, and 1 KB to align the tiles to the swizzle pattern.
        pub const SMEM_BYTES: u32 = 32768 * 5 + 128 + 1024;

        /// A `CUtensorMap` passed to the kernel by value (`__grid_constant__`).
        #[repr(transparent)]
        pub struct TensorMap(sys::CUtensorMap);

        // SAFETY: plain bytes the driver copies into the kernel's parameter space.
        unsafe impl DeviceRepr for TensorMap {}

        /// Whether this build has the kernel's PTX and the GPU is compute capability 9.x.
        pub fn available(dev: &CudaDevice) -> bool {
            !super::ATTENTION_SM90_PTX.is_empty()
                && matches!(dev.cuda_stream().context().compute_capability(), Ok((9, _)))
        }

        /// Whether the kernel can run on these inputs: [`available`], and the inputs start
        /// 16-byte aligned (the copy engine's rule).
        pub fn usable(dev: &CudaDevice, inputs: [&CudaView<'_, bf16>; 3]) -> Result<bool> {
            let stream = dev.cuda_stream();
            Ok(available(dev) && inputs.iter().all(|v| v.device_ptr(&stream).0 % 16 == 0))
        }

        /// The tensor map of a `[batch, seq, heads, 128]` bf16 tensor as boxes of 64 dims × 1
        /// head × 128 tokens, 128-byte swizzled (the layout the kernel's wgmma descriptors read).
        pub fn tensor_map(
            t: &CudaView<'_, bf16>,
            stream: &CudaStream,
            batch: usize,
            seq: usize,
            heads: usize,
        ) -> Result<TensorMap> {
            let row = 128 * std::mem::size_of::<bf16>() as u64;
            let dims = [128, heads as u64, seq as u64, batch as u64];
            let strides = [row, heads as u64 * row, (seq * heads) as u64 * row];
            let boxes = [64u32, 1, 128, 1];
            let steps = [1u32; 4];
            let (ptr, _sync) = t.device_ptr(stream);
            let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
            // SAFETY: the arrays hold the 4 (3 for strides) entries a rank-4 map reads; `ptr`
            // addresses `batch · seq · heads · 128` elements (the caller's checked shape).
            let status = unsafe {
                sys::cuTensorMapEncodeTiled(
                    map.as_mut_ptr(),
                    CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                    4,
                    ptr as *mut c_void,
                    dims.as_ptr(),
                    strides.as_ptr(),
                    boxes.as_ptr(),
                    steps.as_ptr(),
                    CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                    CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                    CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                )
            };
            if status != CUresult::CUDA_SUCCESS {
                bail!("flash_attention: cuTensorMapEncodeTiled failed ({status:?}) for [{batch}, {seq}, {heads}, 128]");
            }
            // SAFETY: initialised by the successful call above.
            Ok(TensorMap(unsafe { map.assume_init() }))
        }
    }
}
