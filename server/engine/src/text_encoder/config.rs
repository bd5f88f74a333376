//! `text_encoder/config.json` of Qwen2_5_VLForConditionalGeneration, in either layout:
//!
//! - transformers 4.x (the released checkpoints): text parameters at the top level, RoPE as
//!   `rope_theta` + `rope_scaling: {"type": "mrope", "mrope_section": [16, 24, 24]}`;
//! - transformers 5.x (the tiny fixtures): text parameters under `text_config`, RoPE as
//!   `rope_parameters: {"rope_theta", "rope_type": "default", "mrope_section"}`.
//!
//! Field names are the HF keys; defaults for absent keys are transformers 5.24's class defaults
//! (`configuration_qwen2_5_vl.py`), so a file parses to what transformers would build from it.

use serde::{Deserialize, Deserializer};

/// The whole checkpoint config: language model, vision tower, and the vision token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    /// Whether `lm_head` reuses `embed_tokens` (false for the 7B; v4 saves may put it inside the
    /// text parameters, v5 reads either).
    pub tie_word_embeddings: bool,
}

/// The language model's parameters (`Qwen2_5_VLTextConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent means no GQA (as many kv heads as query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// transformers 4.x spelling of the RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 4.x spelling of the RoPE parameters (`{"type": "mrope", "mrope_section"}`).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5.x spelling (`{"rope_theta", "rope_type", "mrope_section"}`).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Sliding-window attention is not implemented (and unused by Qwen2.5-VL).
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

/// RoPE settings, under either key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    /// The 4.x name of `rope_type`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
}

/// The vision tower's parameters (`Qwen2_5_VLVisionConfig`); used by the vision tower.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_vision_depth")]
    pub depth: usize,
    #[serde(default = "default_vision_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_vision_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_vision_num_heads")]
    pub num_heads: usize,
    /// `in_chans` in transformers 4.x saves.
    #[serde(default = "default_in_channels", alias = "in_chans")]
    pub in_channels: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_spatial_merge_size")]
    pub spatial_merge_size: usize,
    #[serde(default = "default_temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_tokens_per_second")]
    pub tokens_per_second: usize,
    /// Attention window in pixels (112 = 4×4 merged tokens).
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    #[serde(default = "default_out_hidden_size")]
    pub out_hidden_size: usize,
    /// Blocks that attend over the whole image instead of within windows.
    #[serde(default = "default_fullatt_block_indexes")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
}

impl TextConfig {
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// transformers derives it; there is no `head_dim` key for this model.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 1e6.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .or(self.rope_scaling.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(1_000_000.0)
    }

    /// How the head_dim/2 frequency slots are shared by the (t, h, w) position axes.
    pub fn mrope_section(&self) -> Vec<usize> {
        [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
            .find_map(|r| r.mrope_section.clone())
            .unwrap_or_else(|| vec![16, 24, 24])
    }

    /// The RoPE variant; "mrope" is transformers' old name for the default computation.
    pub fn rope_type(&self) -> String {
        [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
            .find_map(|r| r.rope_type.clone().or_else(|| r.type_.clone()))
            .map(|t| if t == "mrope" { "default".into() } else { t })
            .unwrap_or_else(|| "default".into())
    }
}

impl VisionConfig {
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or(10_000.0)
    }
}

impl Config {
    /// Qwen2.5-VL-7B-Instruct as shipped in Qwen-Image-Layered / Edit-2509 `text_encoder/`
    /// (values from the released config.json, spec §2).
    pub fn qwen2_5_vl_7b() -> Self {
        let rope = RopeParameters {
            rope_type: None,
            type_: Some("mrope".into()),
            rope_theta: None,
            mrope_section: Some(vec![16, 24, 24]),
        };
        Self {
            text_config: TextConfig {
                vocab_size: 152064,
                hidden_size: 3584,
                intermediate_size: 18944,
                num_hidden_layers: 28,
                num_attention_heads: 28,
                num_key_value_heads: Some(4),
                hidden_act: "silu".into(),
                max_position_embeddings: 128000,
                rms_norm_eps: 1e-6,
                rope_theta: Some(1_000_000.0),
                rope_scaling: Some(rope),
                rope_parameters: None,
                use_sliding_window: false,
                tie_word_embeddings: Some(false),
            },
            vision_config: VisionConfig {
                depth: 32,
                hidden_size: 1280,
                hidden_act: "silu".into(),
                intermediate_size: 3420,
                num_heads: 16,
                in_channels: 3,
                patch_size: 14,
                spatial_merge_size: 2,
                temporal_patch_size: 2,
                tokens_per_second: 2,
                window_size: 112,
                out_hidden_size: 3584,
                fullatt_block_indexes: vec![7, 15, 23, 31],
                rope_parameters: None,
            },
            image_token_id: 151655,
            video_token_id: 151656,
            vision_start_token_id: 151652,
            vision_end_token_id: 151653,
            tie_word_embeddings: false,
        }
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        /// The keys that live at the top level in both layouts.
        #[derive(Deserialize)]
        struct Top {
            #[serde(default)]
            text_config: Option<serde_json::Value>,
            #[serde(default = "empty_object")]
            vision_config: serde_json::Value,
            #[serde(default = "default_image_token_id")]
            image_token_id: u32,
            #[serde(default = "default_video_token_id")]
            video_token_id: u32,
            #[serde(default = "default_vision_start_token_id")]
            vision_start_token_id: u32,
            #[serde(default = "default_vision_end_token_id")]
            vision_end_token_id: u32,
            #[serde(default)]
            tie_word_embeddings: Option<bool>,
        }

        let value = serde_json::Value::deserialize(deserializer)?;
        let top: Top = serde_json::from_value(value.clone()).map_err(D::Error::custom)?;
        // Without `text_config`, the text parameters are the top-level keys (4.x flat layout).
        let text_value = top.text_config.unwrap_or(value);
        let text_config: TextConfig =
            serde_json::from_value(text_value).map_err(|e| D::Error::custom(format!("text config: {e}")))?;
        let vision_config: VisionConfig =
            serde_json::from_value(top.vision_config).map_err(|e| D::Error::custom(format!("vision_config: {e}")))?;
        // transformers 5: tied when the root says so, or when a 4.x save put it in the text part.
        let tie_word_embeddings =
            top.tie_word_embeddings.unwrap_or(false) || text_config.tie_word_embeddings.unwrap_or(false);
        Ok(Self {
            text_config,
            vision_config,
            image_token_id: top.image_token_id,
            video_token_id: top.video_token_id,
            vision_start_token_id: top.vision_start_token_id,
            vision_end_token_id: top.vision_end_token_id,
            tie_word_embeddings,
        })
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_max_position_embeddings() -> usize {
    32768
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_image_token_id() -> u32 {
    151655
}
fn default_video_token_id() -> u32 {
    151656
}
fn default_vision_start_token_id() -> u32 {
    151652
}
fn default_vision_end_token_id() -> u32 {
    151653
}
fn default_vision_depth() -> usize {
    32
}
fn default_vision_hidden_size() -> usize {
    3584
}
fn default_vision_intermediate_size() -> usize {
    3420
}
fn default_vision_num_heads() -> usize {
    16
}
fn default_in_channels() -> usize {
    3
}
fn default_patch_size() -> usize {
    14
}
fn default_spatial_merge_size() -> usize {
    2
}
fn default_temporal_patch_size() -> usize {
    2
}
fn default_tokens_per_second() -> usize {
    4
}
fn default_window_size() -> usize {
    112
}
fn default_out_hidden_size() -> usize {
    3584
}
fn default_fullatt_block_indexes() -> Vec<usize> {
    vec![7, 15, 23, 31]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released layout (transformers 4.x, flat), as in Qwen2.5-VL-7B-Instruct's config.json.
    const FLAT_7B: &str = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
      "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
      "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
      "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
      "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl",
      "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
      "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
      "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
      "use_cache": true, "use_sliding_window": false,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
        "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
      "vocab_size": 152064
    }"#;

    /// What transformers 5.24 writes (nested), here for a tiny model.
    const NESTED_TINY: &str = r#"{
      "image_token_id": 151655, "model_type": "qwen2_5_vl",
      "text_config": {"hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64,
        "max_position_embeddings": 32768, "num_attention_heads": 2, "num_hidden_layers": 2,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
        "rope_parameters": {"mrope_section": [2, 3, 3], "rope_theta": 1000000.0, "rope_type": "default", "type": "mrope"},
        "use_sliding_window": false, "vocab_size": 151936},
      "tie_word_embeddings": true, "video_token_id": 151656,
      "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
        "out_hidden_size": 32, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}},
      "vision_end_token_id": 151653, "vision_start_token_id": 151652
    }"#;

    #[test]
    fn flat_release_layout_parses_to_the_7b_preset() {
        let cfg: Config = serde_json::from_str(FLAT_7B).unwrap();
        let preset = Config::qwen2_5_vl_7b();
        assert_eq!(cfg.vision_config, preset.vision_config);
        assert_eq!(cfg.text_config.hidden_size, 3584);
        assert_eq!(cfg.text_config.num_key_value_heads(), 4);
        assert_eq!(cfg.text_config.head_dim(), 128);
        assert_eq!(cfg.text_config.rope_theta(), 1e6);
        assert_eq!(cfg.text_config.mrope_section(), vec![16, 24, 24]);
        assert_eq!(cfg.text_config.rope_type(), "default");
        assert_eq!(cfg.text_config.rms_norm_eps, 1e-6);
        assert!(!cfg.tie_word_embeddings);
        assert_eq!(preset.text_config.rope_theta(), 1e6);
        assert_eq!(preset.text_config.mrope_section(), vec![16, 24, 24]);
    }

    #[test]
    fn nested_v5_layout_parses() {
        let cfg: Config = serde_json::from_str(NESTED_TINY).unwrap();
        let t = &cfg.text_config;
        assert_eq!(
            (t.hidden_size, t.num_hidden_layers, t.num_key_value_heads()),
            (32, 2, 1)
        );
        assert_eq!(t.mrope_section(), vec![2, 3, 3]);
        assert_eq!(t.rope_theta(), 1e6);
        assert!(cfg.tie_word_embeddings);
        assert_eq!(cfg.vision_config.depth, 2);
        assert_eq!(cfg.vision_config.patch_size, 14);
        assert_eq!(cfg.vision_config.rope_theta(), 10000.0);
        assert_eq!(cfg.image_token_id, 151655);
    }

    #[test]
    fn missing_text_parameters_are_named() {
        let err = serde_json::from_str::<Config>(r#"{"text_config": {"hidden_size": 8}}"#).unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
    }
}
