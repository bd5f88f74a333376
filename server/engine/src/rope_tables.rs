//! The RoPE tables one transformer forward consumes, on any path: built by
//! [`crate::transformer::rope::Rope`], applied by the plain attention and by the fused CUDA
//! kernels ([`crate::gpu::fused`]). A leaf module, so those two depend on it and not on each other.

use candle_core::{Result, Tensor};

/// cos/sin tables for one forward: text rows first, then image rows (the joint attention order).
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `[S_txt + S_img, head_dim/2]`, f32.
    pub cos: Tensor,
    /// `[S_txt + S_img, head_dim/2]`, f32.
    pub sin: Tensor,
    pub txt_len: usize,
}

impl RopeTables {
    pub fn txt_cos(&self) -> Result<Tensor> {
        self.cos.narrow(0, 0, self.txt_len)
    }
    pub fn txt_sin(&self) -> Result<Tensor> {
        self.sin.narrow(0, 0, self.txt_len)
    }
    pub fn img_cos(&self) -> Result<Tensor> {
        let n = self.cos.dim(0)? - self.txt_len;
        self.cos.narrow(0, self.txt_len, n)
    }
    pub fn img_sin(&self) -> Result<Tensor> {
        let n = self.sin.dim(0)? - self.txt_len;
        self.sin.narrow(0, self.txt_len, n)
    }
}
