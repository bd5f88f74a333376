//! cuDNN's fused attention (SDPA forward, `cudnn/sdpa.cpp`) for the DiT's joint attention, in the
//! same layout and with the same per-row key lengths as our own flash kernel
//! ([`super::fused::flash_attention`]), which stays the fallback: a build without the
//! `cudnn-attention` feature, a machine without libcudnn, or a shape cuDNN refuses.

use candle_core::{Result, Tensor};

/// softmax(q·kᵀ/√d)·v for joint buffers `[B, S, H, D]` (bf16) where batch row `b` attends to its
/// first `kv_len[b]` keys (u32 `[B]` on the device); returns `[B, split, H·D]` and
/// `[B, S − split, H·D]` as the flash kernel does, but as row-strided views of one buffer.
/// `autotune`: cuDNN times all its plans for a new shape and keeps the fastest, instead of its
/// heuristic's first pick ([`super::fused::Kernels::cudnn_autotune`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kv_len: &Tensor,
    split: usize,
    autotune: bool,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cudnn-attention")]
    return ffi::attention(q, k, v, kv_len, split, autotune);
    #[cfg(not(feature = "cudnn-attention"))]
    {
        let _ = (q, k, v, kv_len, split, autotune);
        candle_core::bail!("cuDNN attention needs a build with the `cudnn-attention` feature")
    }
}

#[cfg(feature = "cudnn-attention")]
mod ffi {
    use std::ffi::{c_char, c_int, c_void, CStr};

    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
    use candle_core::cuda_backend::{CudaDType, CudaStorage};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, DType, Device, Result, Storage, Tensor};
    use half::bf16;

    extern "C" {
        fn engine_cudnn_sdpa_prepare(
            b: i64,
            h: i64,
            s: i64,
            d: i64,
            scale: f32,
            autotune: c_int,
            workspace_bytes: *mut i64,
            err: *mut c_char,
            err_len: i64,
        ) -> c_int;
        fn engine_cudnn_sdpa_run(
            stream: *mut c_void,
            q: *const c_void,
            k: *const c_void,
            v: *const c_void,
            o: *mut c_void,
            seq_q: *const i32,
            seq_kv: *const i32,
            b: i64,
            h: i64,
            s: i64,
            d: i64,
            scale: f32,
            autotune: c_int,
            workspace: *mut c_void,
            err: *mut c_char,
            err_len: i64,
        ) -> c_int;
    }

    fn message(buf: &[u8]) -> String {
        CStr::from_bytes_until_nul(buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown cuDNN error".into())
    }

    fn range(layout: &candle_core::Layout) -> Result<(usize, usize)> {
        match layout.contiguous_offsets() {
            Some(r) => Ok(r),
            None => bail!("cudnn attention: input not contiguous"),
        }
    }

    fn cuda_slice<T: CudaDType>(storage: &Storage) -> Result<&CudaSlice<T>> {
        match storage {
            Storage::Cuda(c) => c.as_cuda_slice::<T>(),
            _ => bail!("cudnn attention: input not on CUDA"),
        }
    }

    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv_len: &Tensor,
        split: usize,
        autotune: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, h, d) = q.dims4()?;
        if k.dims() != q.dims() || v.dims() != q.dims() || split > s || kv_len.dims() != [b] {
            bail!(
                "cudnn attention: q {:?}, k {:?}, v {:?}, kv_len {:?}, split {split}",
                q.dims(),
                k.dims(),
                v.dims(),
                kv_len.dims()
            );
        }
        if [q.dtype(), k.dtype(), v.dtype()] != [DType::BF16; 3] || kv_len.dtype() != DType::U32 {
            bail!("cudnn attention: bf16 q/k/v and u32 kv_len expected");
        }
        let Device::Cuda(dev) = q.device() else {
            bail!("cudnn attention: not on CUDA")
        };
        let scale = 1.0 / (d as f32).sqrt();
        let autotune = c_int::from(autotune);
        let mut err = [0u8; 1024];
        let mut workspace_bytes = 0i64;
        // SAFETY: plain values in, a size and a NUL-terminated message out (bounded by err_len).
        let rc = unsafe {
            engine_cudnn_sdpa_prepare(
                b as i64,
                h as i64,
                s as i64,
                d as i64,
                scale,
                autotune,
                &mut workspace_bytes,
                err.as_mut_ptr().cast(),
                err.len() as i64,
            )
        };
        if rc != 0 {
            bail!("cuDNN SDPA: {}", message(&err));
        }
        let (q, k, v, kv_len) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, kv_len.contiguous()?);
        let seq_q = Tensor::from_vec(vec![s as u32; b], b, q.device())?;
        let stream = dev.cuda_stream();
        let mut out = unsafe { dev.alloc::<bf16>((b * s * h * d).max(1))? };
        let mut workspace = unsafe { dev.alloc::<u8>((workspace_bytes as usize).max(1))? };

        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (ls, ll) = kv_len.storage_and_layout();
        let (sq, sl) = seq_q.storage_and_layout();
        let ((q0, q1), (k0, k1), (v0, v1)) = (range(ql)?, range(kl)?, range(vl)?);
        let ((l0, l1), (s0, s1)) = (range(ll)?, range(sl)?);
        let (slice16, slice32) = (cuda_slice::<bf16>, cuda_slice::<u32>);
        let (qv, kv, vv) = (
            slice16(&qs)?.slice(q0..q1),
            slice16(&ks)?.slice(k0..k1),
            slice16(&vs)?.slice(v0..v1),
        );
        let (lv, sv) = (slice32(&ls)?.slice(l0..l1), slice32(&sq)?.slice(s0..s1));
        // The guards order these buffers' uses on candle's stream (event tracking) until dropped.
        let (qp, _g1) = qv.device_ptr(&stream);
        let (kp, _g2) = kv.device_ptr(&stream);
        let (vp, _g3) = vv.device_ptr(&stream);
        let (lp, _g4) = lv.device_ptr(&stream);
        let (sp, _g5) = sv.device_ptr(&stream);
        let (op, _g6) = out.device_ptr_mut(&stream);
        let (wp, _g7) = workspace.device_ptr_mut(&stream);
        // SAFETY: every pointer is a live device buffer of the size the graph was built for
        // ([b, s, h, d] bf16; [b] int32 lengths; the workspace cuDNN asked for), all used on
        // candle's stream, which is the stream cuDNN is given.
        let rc = unsafe {
            engine_cudnn_sdpa_run(
                stream.cu_stream() as *mut c_void,
                qp as *const c_void,
                kp as *const c_void,
                vp as *const c_void,
                op as *mut c_void,
                sp as *const i32,
                lp as *const i32,
                b as i64,
                h as i64,
                s as i64,
                d as i64,
                scale,
                autotune,
                wp as *mut c_void,
                err.as_mut_ptr().cast(),
                err.len() as i64,
            )
        };
        drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7));
        if rc != 0 {
            bail!("cuDNN SDPA: {}", message(&err));
        }
        // Freed stream-ordered, after the attention that uses it.
        drop(workspace);
        let o = Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
            (b, s, h * d),
            BackpropOp::none(),
            false,
        );
        // Row-strided views, not copies: the output projections read them as they are
        // (`matmul_without_bias` takes a batch stride), which saves a pass over the output.
        Ok((o.narrow(1, 0, split)?, o.narrow(1, split, s - split)?))
    }
}
