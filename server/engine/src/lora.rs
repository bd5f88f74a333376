//! LoRA adapters for the DiT, merged into the weights as they are loaded.
//!
//! A LoRA adds `scale · (alpha / rank) · up @ down` to the weight `[out, in]` of a linear layer
//! (`down` `[rank, in]`, `up` `[out, rank]`). What people publish for Qwen-Image comes in these
//! layouts (diffusers 0.42.1's `QwenImageLoraLoaderMixin.lora_state_dict` and
//! `_convert_non_diffusers_qwen_lora_to_diffusers` accept the same set), all read here:
//!
//! - diffusers / PEFT: `transformer.<module>.lora_A.weight`, `lora_B.weight` (PEFT's own state
//!   dict adds `.default` before `.weight`); alpha in the safetensors header
//!   (`lora_adapter_metadata`: `transformer.lora_alpha`, `transformer.r`), else `alpha = rank`;
//! - diffusers names with `<module>.alpha` tensors (no prefix);
//! - kohya / musubi-tuner: `lora_unet_<module, dots as underscores>.lora_down.weight`,
//!   `lora_up.weight`, `alpha`;
//! - Qwen-Image-Lightning as released: dotted module names with `lora_down` / `lora_up` / `alpha`;
//! - ComfyUI-style `diffusion_model.<module>…`.
//!
//! Every key must be understood: a key that is not a LoRA tensor of a linear layer of this
//! checkpoint's transformer is an error naming it (diffusers drops some silently). DoRA and
//! LoRA biases are refused by name, not approximated.
//!
//! Merging happens in [`LoraSet::wrap`]: the returned `VarBuilder` adds the deltas to each weight
//! as the model's constructor fetches it, in f32 on the device the weight is read onto (the GPU
//! for resident weights, host memory for the offloaded blocks, whose packed host copies are then
//! the merged weights), rounded once to the run's dtype. Nothing else changes: resident, fused
//! and streamed paths all run merged weights.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::weights::ModelDir;
use crate::{Error, Result};

/// One adapter to apply: a `.safetensors` file and its strength (1.0 = as trained; negative
/// values subtract it).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f64,
}

impl LoraSpec {
    pub fn new(path: impl Into<PathBuf>, scale: f64) -> Self {
        Self {
            path: path.into(),
            scale,
        }
    }

    /// `PATH` or `PATH:SCALE` (the command lines' `--lora`); a path that itself contains `:` and
    /// no scale can be written `PATH:1`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some((path, scale)) = s.rsplit_once(':') {
            if let Ok(scale) = scale.trim().parse::<f64>() {
                return Self::checked(path, scale);
            }
        }
        Self::checked(s, 1.0)
    }

    fn checked(path: &str, scale: f64) -> std::result::Result<Self, String> {
        if path.trim().is_empty() {
            return Err("a LoRA needs a file path (PATH or PATH:SCALE)".into());
        }
        if !scale.is_finite() || scale.abs() > MAX_LORA_SCALE {
            return Err(format!(
                "LoRA scale must be a finite number between -{MAX_LORA_SCALE} and {MAX_LORA_SCALE}, got {scale}"
            ));
        }
        Ok(Self::new(path, scale))
    }

    /// `path` (scale 1) or `path:scale`, as [`LoraSpec::parse`] reads it back.
    pub fn describe(&self) -> String {
        if self.scale == 1.0 {
            self.path.display().to_string()
        } else {
            format!("{}:{}", self.path.display(), self.scale)
        }
    }
}

/// Largest |scale| accepted: far beyond useful strengths, it stops typos like `:100`.
pub const MAX_LORA_SCALE: f64 = 10.0;

/// One linear layer's low-rank update: `factor · up @ down`.
#[derive(Debug, Clone)]
struct Delta {
    /// `[rank, in]`, f32 on the CPU.
    down: Tensor,
    /// `[out, rank]`, f32 on the CPU.
    up: Tensor,
    /// User scale × alpha / rank.
    factor: f64,
}

/// Adapters read and checked against one transformer, ready to merge.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    /// Weight name (`transformer_blocks.0.attn.to_q.weight`) → its updates, in adapter order.
    deltas: Arc<HashMap<String, Vec<Delta>>>,
    specs: Vec<LoraSpec>,
}

/// What a key names: a module's down/up matrix or its alpha.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// The transformer's linear layers: module name → weight shape `[out, in]`.
pub fn linear_modules(model: &ModelDir, component: &str) -> Result<BTreeMap<String, (usize, usize)>> {
    let files = model.safetensors_files(component)?;
    // SAFETY: read-only mapping of the checkpoint, as for loading (see ModelDir::var_builder).
    let st = unsafe { MmapedSafetensors::multi(&files)? };
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if let (Some(module), &[o, i]) = (name.strip_suffix(".weight"), view.shape()) {
            out.insert(module.to_string(), (o, i));
        }
    }
    Ok(out)
}

impl LoraSet {
    /// Reads `specs` and checks every key and shape against `modules` (see [`linear_modules`]).
    pub fn load(specs: &[LoraSpec], modules: &BTreeMap<String, (usize, usize)>) -> Result<Self> {
        let flat: HashMap<String, &str> = modules.keys().map(|m| (m.replace('.', "_"), m.as_str())).collect();
        let mut deltas: HashMap<String, Vec<Delta>> = HashMap::new();
        for spec in specs {
            for (module, delta) in read_adapter(spec, modules, &flat)? {
                deltas.entry(format!("{module}.weight")).or_default().push(delta);
            }
        }
        Ok(Self {
            deltas: Arc::new(deltas),
            specs: specs.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    pub fn specs(&self) -> &[LoraSpec] {
        &self.specs
    }

    /// Linear layers changed by at least one adapter.
    pub fn modules(&self) -> usize {
        self.deltas.len()
    }

    /// `vb` with the adapters merged into every weight it hands out (itself when there are none).
    pub fn wrap(&self, vb: VarBuilder<'static>) -> VarBuilder<'static> {
        if self.is_empty() {
            return vb;
        }
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let backend = Merging {
            inner: vb,
            deltas: self.deltas.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device)
    }

    /// `weight` (named `name`) with the adapters added: in f32 on its own device, rounded once to
    /// `dtype`.
    fn merge(deltas: &[Delta], weight: Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let device = weight.device().clone();
        let mut acc = weight.to_dtype(DType::F32)?;
        for d in deltas {
            let update = d.up.to_device(&device)?.matmul(&d.down.to_device(&device)?)?;
            acc = (acc + (update * d.factor)?)?;
        }
        acc.to_dtype(dtype)
    }
}

/// The backend [`LoraSet::wrap`] puts in front of a checkpoint's.
struct Merging {
    inner: VarBuilder<'static>,
    deltas: Arc<HashMap<String, Vec<Delta>>>,
}

impl SimpleBackend for Merging {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let w = self.inner.get_with_hints_dtype(s, name, h, dtype)?;
        match self.deltas.get(name) {
            Some(d) => LoraSet::merge(d, w, dtype),
            None => Ok(w),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let w = self.inner.get_unchecked_dtype(name, dtype)?;
        match self.deltas.get(name) {
            Some(d) => LoraSet::merge(d, w, dtype),
            None => Ok(w),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// The PEFT settings of `lora_adapter_metadata` that decide the scale.
#[derive(Debug, Default)]
struct PeftMeta {
    r: Option<f64>,
    lora_alpha: Option<f64>,
    rslora: bool,
    /// Module (literal name, matched as PEFT does: the whole name or a `.`-suffix) → alpha / rank.
    alpha_pattern: Vec<(String, f64)>,
    rank_pattern: Vec<(String, f64)>,
}

impl PeftMeta {
    fn factor(&self, module: &str, rank: usize) -> Option<f64> {
        let lookup = |pattern: &[(String, f64)]| {
            pattern
                .iter()
                .find(|(k, _)| module == k || module.ends_with(&format!(".{k}")))
                .map(|(_, v)| *v)
        };
        let r = lookup(&self.rank_pattern).or(self.r).unwrap_or(rank as f64);
        let alpha = lookup(&self.alpha_pattern).or(self.lora_alpha)?;
        Some(if self.rslora { alpha / r.sqrt() } else { alpha / r })
    }
}

/// The safetensors header's `__metadata__` (without reading the tensors).
fn header_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(Error::InvalidInput(format!(
            "{}: not a safetensors file (header of {len} bytes)",
            path.display()
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&header).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })?;
    Ok(value
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

fn peft_meta(path: &Path, header: &HashMap<String, String>) -> Result<PeftMeta> {
    let Some(text) = header.get("lora_adapter_metadata") else {
        return Ok(PeftMeta::default());
    };
    let bad = |what: String| Error::InvalidInput(format!("LoRA {}: lora_adapter_metadata: {what}", path.display()));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let map = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    let mut meta = PeftMeta::default();
    let number = |v: &serde_json::Value, k: &str| v.as_f64().ok_or_else(|| bad(format!("{k} is not a number")));
    let pattern = |v: &serde_json::Value, k: &str| -> Result<Vec<(String, f64)>> {
        let obj = v.as_object().ok_or_else(|| bad(format!("{k} is not an object")))?;
        obj.iter().map(|(m, x)| Ok((m.clone(), number(x, k)?))).collect()
    };
    for (key, v) in map {
        // Only the transformer's entries concern the DiT.
        let Some(field) = key.strip_prefix("transformer.") else {
            continue;
        };
        match field {
            "r" => meta.r = Some(number(v, key)?),
            "lora_alpha" => meta.lora_alpha = Some(number(v, key)?),
            "use_rslora" => meta.rslora = v.as_bool().unwrap_or(false),
            "alpha_pattern" => meta.alpha_pattern = pattern(v, key)?,
            "rank_pattern" => meta.rank_pattern = pattern(v, key)?,
            "use_dora" if v.as_bool() == Some(true) => {
                return Err(bad("DoRA adapters (use_dora) are not supported".into()))
            }
            "lora_bias" if v.as_bool() == Some(true) => {
                return Err(bad("LoRA biases (lora_bias) are not supported".into()))
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// Splits a key into its module (in the transformer's dotted names) and part, or `None` when it
/// is not a key this reader understands.
fn parse_key(key: &str, flat: &HashMap<String, &str>) -> Option<(String, Part)> {
    let (stem, part) = [
        (".lora_A.weight", Part::Down),
        (".lora_A.default.weight", Part::Down),
        (".lora_down.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora_B.default.weight", Part::Up),
        (".lora_up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ]
    .iter()
    .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|s| (s, *part)))?;
    if let Some(flat_name) = stem.strip_prefix("lora_unet_") {
        return flat.get(flat_name).map(|m| (m.to_string(), part));
    }
    let module = ["transformer.", "diffusion_model."]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .unwrap_or(stem);
    Some((module.to_string(), part))
}

/// Reads one adapter: module → its delta (with the user's scale folded in).
fn read_adapter(
    spec: &LoraSpec,
    modules: &BTreeMap<String, (usize, usize)>,
    flat: &HashMap<String, &str>,
) -> Result<Vec<(String, Delta)>> {
    let path = &spec.path;
    if !path.is_file() {
        return Err(Error::InvalidInput(format!(
            "LoRA file {} does not exist",
            path.display()
        )));
    }
    let header = header_metadata(path)?;
    let meta = peft_meta(path, &header)?;
    // SAFETY: read-only mapping of the adapter file while it is read.
    let st = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| Error::InvalidInput(format!("LoRA {}: not a safetensors file: {e}", path.display())))?;
    let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (key, _) in st.tensors() {
        match parse_key(&key, flat) {
            Some((module, part)) if modules.contains_key(&module) => {
                let t = st.load(&key, &Device::Cpu)?.to_dtype(DType::F32)?;
                parts.entry(module).or_default()[part as usize] = Some(t);
            }
            _ => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        let shown: Vec<&str> = unknown.iter().take(8).map(String::as_str).collect();
        return Err(Error::InvalidInput(format!(
            "LoRA {}: {} key(s) are not LoRA weights of this transformer's linear layers: {}{}",
            path.display(),
            unknown.len(),
            shown.join(", "),
            if unknown.len() > shown.len() { ", …" } else { "" }
        )));
    }
    if parts.is_empty() {
        return Err(Error::InvalidInput(format!("LoRA {} holds no tensors", path.display())));
    }
    let mut out = Vec::with_capacity(parts.len());
    for (module, [down, up, alpha]) in parts {
        let bad = |what: String| Error::InvalidInput(format!("LoRA {}: {module}: {what}", path.display()));
        let (Some(down), Some(up)) = (down, up) else {
            return Err(bad(
                "needs both its down (lora_A / lora_down) and up (lora_B / lora_up) matrices".into(),
            ));
        };
        let (o, i) = modules[&module];
        let rank = down.dim(0)?;
        if down.dims() != [rank, i] || up.dims() != [o, rank] || rank == 0 {
            return Err(bad(format!(
                "down {:?} and up {:?} do not fit the layer's weight [{o}, {i}]",
                down.dims(),
                up.dims()
            )));
        }
        let alpha_factor = match alpha {
            Some(a) => {
                let a = a.flatten_all()?.to_vec1::<f32>()?;
                match a.as_slice() {
                    [a] => f64::from(*a) / rank as f64,
                    _ => return Err(bad("alpha must be a single number".into())),
                }
            }
            None => 1.0,
        };
        let peft_factor = meta.factor(&module, rank).unwrap_or(1.0);
        out.push((
            module,
            Delta {
                down,
                up,
                factor: spec.scale * alpha_factor * peft_factor,
            },
        ));
    }
    Ok(out)
}

/// The distinct module names of `set` (for reports and tests).
pub fn merged_modules(set: &LoraSet) -> BTreeSet<String> {
    set.deltas
        .keys()
        .map(|k| k.trim_end_matches(".weight").to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(mods: &[&'static str]) -> HashMap<String, &'static str> {
        mods.iter().map(|m| (m.replace('.', "_"), *m)).collect()
    }

    #[test]
    fn keys_of_every_layout_name_the_same_module() {
        let f = flat(&["transformer_blocks.0.attn.to_out.0", "img_in", "norm_out.linear"]);
        let m = "transformer_blocks.0.attn.to_out.0";
        for (key, part) in [
            (
                "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight",
                Part::Down,
            ),
            ("transformer_blocks.0.attn.to_out.0.lora_B.default.weight", Part::Up),
            ("diffusion_model.transformer_blocks.0.attn.to_out.0.alpha", Part::Alpha),
            (
                "lora_unet_transformer_blocks_0_attn_to_out_0.lora_down.weight",
                Part::Down,
            ),
            ("transformer_blocks.0.attn.to_out.0.lora_up.weight", Part::Up),
        ] {
            assert_eq!(parse_key(key, &f), Some((m.to_string(), part)), "{key}");
        }
        assert_eq!(
            parse_key("lora_unet_norm_out_linear.alpha", &f),
            Some(("norm_out.linear".into(), Part::Alpha))
        );
        assert_eq!(parse_key("lora_unet_nothing_here.alpha", &f), None);
        assert_eq!(parse_key("transformer_blocks.0.attn.to_q.dora_scale", &f), None);
        assert_eq!(parse_key("transformer_blocks.0.attn.to_q.lora_B.bias", &f), None);
    }

    #[test]
    fn scales_parse_and_are_bounded() {
        assert_eq!(
            LoraSpec::parse("a.safetensors").unwrap(),
            LoraSpec::new("a.safetensors", 1.0)
        );
        assert_eq!(
            LoraSpec::parse("/x/a.safetensors:0.5").unwrap(),
            LoraSpec::new("/x/a.safetensors", 0.5)
        );
        assert_eq!(LoraSpec::parse("c:/a:b.safetensors").unwrap().scale, 1.0);
        assert_eq!(LoraSpec::parse("a:-1.5").unwrap().scale, -1.5);
        // A scale that is a number but not a usable one is refused, not read as part of the path.
        assert!(LoraSpec::parse("a:nan").unwrap_err().contains("finite"));
        assert!(LoraSpec::parse("a:inf").unwrap_err().contains("finite"));
        assert!(LoraSpec::parse("a:100").unwrap_err().contains("between"));
        assert!(LoraSpec::parse(":1").is_err());
        assert_eq!(LoraSpec::new("a", 0.5).describe(), "a:0.5");
    }

    #[test]
    fn peft_patterns_match_whole_names_or_dotted_suffixes() {
        let meta = PeftMeta {
            r: Some(4.0),
            lora_alpha: Some(8.0),
            rslora: false,
            alpha_pattern: vec![("attn.to_q".into(), 2.0)],
            rank_pattern: vec![("transformer_blocks.1.attn.to_q".into(), 2.0)],
        };
        assert_eq!(meta.factor("transformer_blocks.0.attn.to_k", 4), Some(2.0));
        assert_eq!(meta.factor("transformer_blocks.0.attn.to_q", 4), Some(0.5));
        assert_eq!(meta.factor("transformer_blocks.1.attn.to_q", 2), Some(1.0));
        assert_eq!(meta.factor("transformer_blocks.0.xattn.to_q", 4), Some(2.0));
        assert_eq!(PeftMeta::default().factor("x", 4), None);
    }
}
