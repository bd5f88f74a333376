//! `transformer/config.json` of a QwenImageTransformer2DModel checkpoint, with the HF key names.

use serde::Deserialize;

/// The transformer's hyper-parameters, as diffusers writes them (`register_to_config` keys).
///
/// Unknown keys (`_class_name`, `_diffusers_version`, …) are ignored; missing ones take the
/// defaults of `QwenImageTransformer2DModel.__init__` in diffusers 0.42.1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Channels of a packed latent token: 16 latent channels × 2×2 patch.
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Latent channels predicted per patch position (`None` in the file means `in_channels`).
    #[serde(default = "default_out_channels")]
    pub out_channels: Option<usize>,
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the text encoder's hidden states (3584 for Qwen2.5-VL-7B).
    #[serde(default = "default_joint_attention_dim")]
    pub joint_attention_dim: usize,
    /// Guidance-distilled variant (an extra guidance embedder); not used by the released models.
    #[serde(default)]
    pub guidance_embeds: bool,
    /// Widths of the frame / height / width RoPE axes; they sum to `attention_head_dim`.
    #[serde(default = "default_axes_dims_rope")]
    pub axes_dims_rope: [usize; 3],
    /// Edit-2511: the condition images' tokens are modulated with the embedding of t = 0 (the
    /// noisy tokens, the text and the output norm with the step's t); off for Layered and 2509.
    #[serde(default)]
    pub zero_cond_t: bool,
    /// Layered: `addition_t_embedding` (2 rows) added to the timestep embedding.
    #[serde(default)]
    pub use_additional_t_cond: bool,
    /// Layered: frames 0..L for generated layers, −1 for the condition image.
    #[serde(default)]
    pub use_layer3d_rope: bool,
}

fn default_patch_size() -> usize {
    2
}
fn default_in_channels() -> usize {
    64
}
fn default_out_channels() -> Option<usize> {
    Some(16)
}
fn default_num_layers() -> usize {
    60
}
fn default_attention_head_dim() -> usize {
    128
}
fn default_num_attention_heads() -> usize {
    24
}
fn default_joint_attention_dim() -> usize {
    3584
}
fn default_axes_dims_rope() -> [usize; 3] {
    [16, 56, 56]
}

impl Config {
    /// Qwen/Qwen-Image-Layered `transformer/config.json` (mirrors Runware/Qwen-Image-Layered and
    /// diffusers/Qwen-Image-Layered-modular).
    pub fn layered() -> Self {
        Self {
            use_additional_t_cond: true,
            use_layer3d_rope: true,
            ..Self::edit_2509()
        }
    }

    /// Qwen/Qwen-Image-Edit-2509 `transformer/config.json` (lightx2v upload): the base Qwen-Image
    /// transformer without the layered flags.
    pub fn edit_2509() -> Self {
        Self {
            patch_size: default_patch_size(),
            in_channels: default_in_channels(),
            out_channels: default_out_channels(),
            num_layers: default_num_layers(),
            attention_head_dim: default_attention_head_dim(),
            num_attention_heads: default_num_attention_heads(),
            joint_attention_dim: default_joint_attention_dim(),
            guidance_embeds: false,
            axes_dims_rope: default_axes_dims_rope(),
            zero_cond_t: false,
            use_additional_t_cond: false,
            use_layer3d_rope: false,
        }
    }

    /// Model width D = heads × head_dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels of a packed output token: patch² × out_channels.
    pub fn out_token_channels(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels.unwrap_or(self.in_channels)
    }

    /// Rejects configurations this port does not implement, naming the key.
    pub fn validate(&self) -> candle_core::Result<()> {
        if self.guidance_embeds {
            candle_core::bail!("transformer config: guidance_embeds=true (guidance-distilled model) is not supported");
        }
        let axes: usize = self.axes_dims_rope.iter().sum();
        if axes != self.attention_head_dim || self.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            candle_core::bail!(
                "transformer config: axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                self.axes_dims_rope,
                self.attention_head_dim
            );
        }
        Ok(())
    }
}
