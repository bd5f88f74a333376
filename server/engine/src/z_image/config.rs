//! `transformer/config.json` of Z-Image (diffusers `ZImageTransformer2DModel`).

use serde::Deserialize;

/// Width of the timestep conditioning (`ADALN_EMBED_DIM`): the AdaLN inputs are
/// `min(dim, ADALN_EMBED_DIM)` wide.
pub const ADALN_EMBED_DIM: usize = 256;
/// Image and caption token runs are padded to a multiple of this (`SEQ_MULTI_OF`), with the
/// model's learned pad tokens, which take part in attention like any other token.
pub const SEQ_MULTI_OF: usize = 32;
/// Hidden width of the timestep MLP (`TimestepEmbedder(…, mid_size=1024)`).
pub const T_EMBED_MID: usize = 1024;
/// Sinusoidal features of the timestep.
pub const T_FREQ_DIM: usize = 256;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Config {
    #[serde(default = "patch")]
    pub all_patch_size: Vec<usize>,
    #[serde(default = "f_patch")]
    pub all_f_patch_size: Vec<usize>,
    #[serde(default = "in_channels")]
    pub in_channels: usize,
    pub dim: usize,
    pub n_layers: usize,
    #[serde(default = "refiners")]
    pub n_refiner_layers: usize,
    pub n_heads: usize,
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub qk_norm: bool,
    pub cap_feat_dim: usize,
    #[serde(default)]
    pub siglip_feat_dim: Option<usize>,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "t_scale")]
    pub t_scale: f64,
    pub axes_dims: Vec<usize>,
    pub axes_lens: Vec<usize>,
}

fn patch() -> Vec<usize> {
    vec![2]
}
fn f_patch() -> Vec<usize> {
    vec![1]
}
fn in_channels() -> usize {
    16
}
fn refiners() -> usize {
    2
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn rope_theta() -> f64 {
    256.0
}
fn t_scale() -> f64 {
    1000.0
}

impl Config {
    /// Refuses what this port does not implement, naming the key.
    pub fn validate(&self) -> candle_core::Result<()> {
        if self.all_patch_size != [2] || self.all_f_patch_size != [1] {
            candle_core::bail!(
                "z-image transformer: only all_patch_size=[2], all_f_patch_size=[1] are supported (got {:?}, {:?})",
                self.all_patch_size,
                self.all_f_patch_size
            );
        }
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            candle_core::bail!(
                "z-image transformer: dim={} is not a multiple of n_heads={}",
                self.dim,
                self.n_heads
            );
        }
        if self.n_kv_heads.is_some_and(|kv| kv != self.n_heads) {
            candle_core::bail!("z-image transformer: n_kv_heads must equal n_heads (the reference ignores it)");
        }
        if self.axes_dims.len() != 3 || self.axes_lens.len() != 3 {
            candle_core::bail!("z-image transformer: axes_dims and axes_lens must have 3 entries");
        }
        if self.axes_dims.iter().sum::<usize>() != self.head_dim() || self.axes_dims.iter().any(|d| d % 2 != 0) {
            candle_core::bail!(
                "z-image transformer: axes_dims {:?} must be even and sum to the head dim {}",
                self.axes_dims,
                self.head_dim()
            );
        }
        if !self.qk_norm {
            candle_core::bail!("z-image transformer: qk_norm=false is not supported (the released model uses it)");
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// The feed-forward width, `int(dim / 3 * 8)` as Python computes it (floor of the float
    /// product; 10240 for the release, 170 for dim 64 — not `dim / 3 * 8` in integers).
    pub fn ffn_dim(&self) -> usize {
        (self.dim as f64 / 3.0 * 8.0) as usize
    }

    /// `min(dim, ADALN_EMBED_DIM)`.
    pub fn adaln_dim(&self) -> usize {
        self.dim.min(ADALN_EMBED_DIM)
    }

    /// Channels of one 2×2 patch token (`pF·pH·pW·C`).
    pub fn patch_channels(&self) -> usize {
        4 * self.in_channels
    }
}
