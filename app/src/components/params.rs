//! The parameters panel: prompt, layers, resolution, steps, CFG and seed. Defaults come from the
//! server's configuration (`get_config`).

use leptos::prelude::*;

use crate::api::{ConfigResponse, DecomposeRequest, LayerNum, LAYER_RANGE, MAX_CFG_SCALE, MAX_STEPS, RESOLUTIONS};
use crate::layer_count::AUTO_MAX_LAYERS;

const ICON_SHUFFLE: &str = "M16 3h5v5M4 20 21 3M21 16v5h-5M15 15l6 6M4 4l5 5";

/// Largest seed the form accepts: exact as a JavaScript number.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// What the user set; `None` seed = a fresh random one per run (the server reports it back).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub prompt: String,
    pub layer_num: u32,
    /// Let the server choose the count (`layer_num: "auto"`); `layer_num` is kept for later.
    pub auto_layers: bool,
    pub resolution: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    pub seed: Option<u64>,
    /// The automatic caption (empty prompt) in Chinese instead of English.
    pub caption_in_chinese: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            layer_num: crate::api::DEFAULT_LAYER_NUM,
            auto_layers: false,
            resolution: crate::api::DEFAULT_RESOLUTION,
            steps: crate::api::DEFAULT_STEPS,
            cfg_scale: crate::api::DEFAULT_CFG_SCALE,
            seed: None,
            caption_in_chinese: false,
        }
    }
}

impl Params {
    /// The server's defaults, keeping what the user already typed (prompt, seed).
    pub fn with_defaults(&self, config: &ConfigResponse) -> Self {
        Self {
            prompt: self.prompt.clone(),
            layer_num: config.layer_num,
            auto_layers: self.auto_layers,
            resolution: config.resolution,
            steps: config.steps,
            cfg_scale: config.cfg_scale,
            seed: self.seed,
            caption_in_chinese: self.caption_in_chinese,
        }
    }

    pub fn to_request(&self, image: String) -> DecomposeRequest {
        DecomposeRequest {
            image,
            prompt: self.prompt.trim().to_string(),
            negative_prompt: None,
            layer_num: Some(if self.auto_layers {
                LayerNum::AUTO
            } else {
                LayerNum::Count(self.layer_num)
            }),
            resolution: Some(self.resolution),
            steps: Some(self.steps),
            cfg_scale: Some(self.cfg_scale),
            seed: self.seed,
            cfg_normalize: None,
            caption_language: Some(if self.caption_in_chinese { "cn" } else { "en" }.into()),
            formats: None,
            preset: None,
        }
    }
}

/// Validation messages of the fields (`None` = valid). An invalid field keeps the user's text and
/// the last valid value in [`Params`], and blocks "Decompose Image".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldErrors {
    pub layers: Option<String>,
    pub steps: Option<String>,
    pub cfg: Option<String>,
    pub seed: Option<String>,
}

impl FieldErrors {
    pub fn any(&self) -> bool {
        self.layers.is_some() || self.steps.is_some() || self.cfg.is_some() || self.seed.is_some()
    }
}

pub fn parse_layers(text: &str) -> Result<u32, String> {
    let (lo, hi) = (*LAYER_RANGE.start(), *LAYER_RANGE.end());
    match text.trim().parse::<u32>() {
        Ok(n) if LAYER_RANGE.contains(&n) => Ok(n),
        _ => Err(format!("Layers must be a whole number from {lo} to {hi}.")),
    }
}

pub fn parse_steps(text: &str, max: u32) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("Steps must be a whole number from 1 to {max}.")),
    }
}

pub fn parse_cfg(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && (0.0..=MAX_CFG_SCALE).contains(&v) => Ok(v),
        _ => Err(format!("CFG scale must be a number from 0 to {MAX_CFG_SCALE}.")),
    }
}

/// Empty = random.
pub fn parse_seed(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match t.parse::<u64>() {
        Ok(n) if n <= MAX_SEED => Ok(Some(n)),
        _ => Err(format!(
            "Seed must be empty (random) or a whole number from 0 to {MAX_SEED}."
        )),
    }
}

#[component]
pub fn ParamsPanel(
    params: RwSignal<Params>,
    errors: RwSignal<FieldErrors>,
    config: RwSignal<Option<ConfigResponse>>,
    #[prop(into)] disabled: Signal<bool>,
) -> impl IntoView {
    let max_steps = move || config.with(|c| c.as_ref().map_or(MAX_STEPS, |c| c.max_steps));
    let resolutions = move || {
        config.with(|c| {
            c.as_ref()
                .map_or_else(|| RESOLUTIONS.to_vec(), |c| c.resolutions.clone())
        })
    };
    let defaults_note = move || {
        config.with(|c| match c {
            Some(c) => format!(
                "Server defaults: {} layers, {} px, {} steps, CFG {}.",
                c.layer_num, c.resolution, c.steps, c.cfg_scale
            ),
            None => "Loading the server's defaults…".into(),
        })
    };

    view! {
        <form class="params card" aria-labelledby="params-title" on:submit=|ev| ev.prevent_default()>
            <h2 id="params-title" class="card-title">"Parameters"</h2>
            <fieldset class="params-fields" disabled=move || disabled.get()>
                <div class="field">
                    <label for="prompt">"Prompt " <span class="optional">"(optional)"</span></label>
                    <textarea
                        id="prompt"
                        rows="3"
                        aria-describedby="prompt-hint"
                        placeholder="e.g. A cat sitting on a red sofa in a sunlit living room"
                        prop:value=move || params.with(|p| p.prompt.clone())
                        on:input=move |ev| params.update(|p| p.prompt = event_target_value(&ev))
                    ></textarea>
                    <p id="prompt-hint" class="hint">
                        "Describe the whole scene, not the layers. Left empty, the image is captioned automatically."
                    </p>
                    <CaptionLanguage params/>
                </div>

                <div class="field-row">
                    <NumberField
                        id="layers"
                        label="Layers"
                        inputmode="numeric"
                        min=LAYER_RANGE.start().to_string()
                        max=Signal::derive(|| LAYER_RANGE.end().to_string())
                        step="1"
                        value=Signal::derive(move || params.with(|p| p.layer_num.to_string()))
                        invalid=Signal::derive(move || errors.with(|e| e.layers.is_some()))
                        off=Signal::derive(move || params.with(|p| p.auto_layers))
                        on_input=field_input(params, errors, parse_layers, |p, n| p.layer_num = n, |e| &mut e.layers)
                    />
                    <NumberField
                        id="steps"
                        label="Steps"
                        inputmode="numeric"
                        min="1".to_string()
                        max=Signal::derive(move || max_steps().to_string())
                        step="1"
                        value=Signal::derive(move || params.with(|p| p.steps.to_string()))
                        invalid=Signal::derive(move || errors.with(|e| e.steps.is_some()))
                        off=Signal::derive(|| false)
                        on_input=field_input(
                            params,
                            errors,
                            move |t| parse_steps(t, max_steps()),
                            |p, n| p.steps = n,
                            |e| &mut e.steps,
                        )
                    />
                    <NumberField
                        id="cfg"
                        label="CFG scale"
                        inputmode="decimal"
                        min="0".to_string()
                        max=Signal::derive(|| MAX_CFG_SCALE.to_string())
                        step="0.5"
                        value=Signal::derive(move || params.with(|p| p.cfg_scale.to_string()))
                        invalid=Signal::derive(move || errors.with(|e| e.cfg.is_some()))
                        off=Signal::derive(|| false)
                        on_input=field_input(params, errors, parse_cfg, |p, v| p.cfg_scale = v, |e| &mut e.cfg)
                    />
                </div>
                <label class="check auto-layers">
                    <input
                        type="checkbox"
                        id="auto-layers"
                        aria-describedby="auto-layers-hint"
                        prop:checked=move || params.with(|p| p.auto_layers)
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            params.update(|p| p.auto_layers = on);
                            // The count is not used then, so its message must not block the run.
                            if on {
                                errors.update(|e| e.layers = None);
                            }
                        }
                    />
                    "Choose the layer count automatically"
                </label>
                <p id="auto-layers-hint" class="hint">
                    {format!(
                        "Splits into up to {AUTO_MAX_LAYERS} layers, then drops empty, covered and duplicate ones (the result says which)."
                    )}
                </p>
                <FieldError id="layers-error" msg=Signal::derive(move || errors.with(|e| e.layers.clone()))/>
                <FieldError id="steps-error" msg=Signal::derive(move || errors.with(|e| e.steps.clone()))/>
                <FieldError id="cfg-error" msg=Signal::derive(move || errors.with(|e| e.cfg.clone()))/>

                <fieldset class="field segmented-field">
                    <legend>"Resolution"</legend>
                    <div class="segmented">
                        {move || {
                            resolutions()
                                .into_iter()
                                .map(|r| {
                                    let id = format!("res-{r}");
                                    view! {
                                        <input
                                            type="radio"
                                            name="resolution"
                                            id=id.clone()
                                            value=r
                                            prop:checked=move || params.with(|p| p.resolution == r)
                                            on:change=move |_| params.update(|p| p.resolution = r)
                                        />
                                        <label for=id>{format!("{r} px")}</label>
                                    }
                                })
                                .collect_view()
                        }}
                    </div>
                </fieldset>

                <div class="field">
                    <label for="seed">"Seed"</label>
                    <div class="seed-row">
                        <input
                            id="seed"
                            type="text"
                            inputmode="numeric"
                            autocomplete="off"
                            placeholder="Random"
                            aria-invalid=move || errors.with(|e| e.seed.is_some()).to_string()
                            aria-describedby="seed-hint seed-error"
                            prop:value=move || params.with(|p| p.seed.map(|s| s.to_string()).unwrap_or_default())
                            on:input=field_input(params, errors, parse_seed, |p, s| p.seed = s, |e| &mut e.seed)
                        />
                        <button
                            type="button"
                            class="secondary"
                            title="Pick a new random seed"
                            on:click=move |_| {
                                #[cfg(feature = "hydrate")]
                                {
                                    let seed = crate::browser::random_seed();
                                    params.update(|p| p.seed = Some(seed));
                                    errors.update(|e| e.seed = None);
                                }
                            }
                        >
                            <super::layers::Icon path=ICON_SHUFFLE/>
                            "Randomise"
                        </button>
                    </div>
                    <p id="seed-hint" class="hint">"Empty: a new random seed each run. The seed used is shown with the result."</p>
                    <FieldError id="seed-error" msg=Signal::derive(move || errors.with(|e| e.seed.clone()))/>
                </div>
                <p class="hint defaults-note">{defaults_note}</p>
            </fieldset>
        </form>
    }
    .into_any()
}

/// The automatic caption's language, offered while the prompt is empty.
#[component]
fn CaptionLanguage(params: RwSignal<Params>) -> impl IntoView {
    view! {
        <Show when=move || params.with(|p| p.prompt.trim().is_empty())>
            <div class="caption-language" role="radiogroup" aria-label="Language of the automatic caption">
                <span class="hint">"Caption in"</span>
                <label class="check">
                    <input
                        type="radio"
                        name="caption-language"
                        id="caption-en"
                        prop:checked=move || params.with(|p| !p.caption_in_chinese)
                        on:change=move |_| params.update(|p| p.caption_in_chinese = false)
                    />
                    "English"
                </label>
                <label class="check">
                    <input
                        type="radio"
                        name="caption-language"
                        id="caption-cn"
                        prop:checked=move || params.with(|p| p.caption_in_chinese)
                        on:change=move |_| params.update(|p| p.caption_in_chinese = true)
                    />
                    "Chinese"
                </label>
            </div>
        </Show>
    }
    .into_any()
}

/// A field's validation message (an empty live region when the field is fine).
/// The `on:input` of a field: valid text updates `params` and clears the field's message; invalid
/// text keeps the last valid value and sets the message (which blocks "Decompose Image").
fn field_input<T>(
    params: RwSignal<Params>,
    errors: RwSignal<FieldErrors>,
    parse: impl Fn(&str) -> Result<T, String> + 'static,
    set: impl Fn(&mut Params, T) + 'static,
    message: impl Fn(&mut FieldErrors) -> &mut Option<String> + 'static,
) -> impl FnMut(leptos::ev::Event) + 'static {
    move |ev| match parse(&event_target_value(&ev)) {
        Ok(v) => {
            params.update(|p| set(p, v));
            errors.update(|e| *message(e) = None);
        }
        Err(msg) => errors.update(|e| *message(e) = Some(msg)),
    }
}

/// A labelled number input; its message shows under the row, in `{id}-error`.
#[component]
fn NumberField<F>(
    id: &'static str,
    label: &'static str,
    inputmode: &'static str,
    min: String,
    max: Signal<String>,
    step: &'static str,
    value: Signal<String>,
    invalid: Signal<bool>,
    /// Not used now (e.g. the layer count while it is automatic).
    off: Signal<bool>,
    on_input: F,
) -> impl IntoView
where
    F: FnMut(leptos::ev::Event) + 'static,
{
    view! {
        <div class="field">
            <label for=id>{label}</label>
            <input
                id=id
                type="number"
                inputmode=inputmode
                min=min
                max=move || max.get()
                step=step
                aria-invalid=move || invalid.get().to_string()
                aria-describedby=format!("{id}-error")
                disabled=move || off.get()
                prop:value=move || value.get()
                on:input=on_input
            />
        </div>
    }
    .into_any()
}

#[component]
fn FieldError(id: &'static str, msg: Signal<Option<String>>) -> impl IntoView {
    view! {
        <p id=id class="field-error" aria-live="polite">
            {move || msg.get()}
        </p>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_within_their_ranges() {
        assert_eq!(parse_layers("4"), Ok(4));
        assert_eq!(parse_layers(" 10 "), Ok(10));
        assert!(parse_layers("1").is_err() && parse_layers("11").is_err() && parse_layers("x").is_err());
        assert_eq!(parse_steps("2", 200), Ok(2));
        assert!(parse_steps("0", 200).is_err() && parse_steps("201", 200).is_err());
        assert_eq!(parse_cfg("2.5"), Ok(2.5));
        assert!(parse_cfg("NaN").is_err() && parse_cfg("-1").is_err() && parse_cfg("21").is_err());
        assert_eq!(parse_seed(""), Ok(None));
        assert_eq!(parse_seed(" 42 "), Ok(Some(42)));
        assert_eq!(parse_seed(&MAX_SEED.to_string()), Ok(Some(MAX_SEED)));
        assert!(parse_seed(&(MAX_SEED + 1).to_string()).is_err());
        assert!(parse_seed("-3").is_err() && parse_seed("1e5").is_err());
    }

    #[test]
    fn server_defaults_replace_the_numbers_but_keep_the_prompt_and_seed() {
        let config = ConfigResponse {
            model_type: "qwenimage".into(),
            layer_num: 2,
            resolution: 1024,
            steps: 3,
            cfg_scale: 2.5,
            cpu_offload: false,
            layer_range: [2, 10],
            resolutions: vec![640, 1024],
            max_steps: 200,
            max_image_pixels: 100,
            max_body_bytes: 100,
            adapters: Default::default(),
        };
        let typed = Params {
            prompt: "a cat".into(),
            seed: Some(5),
            ..Params::default()
        };
        let p = typed.with_defaults(&config);
        assert_eq!(
            p,
            Params {
                prompt: "a cat".into(),
                layer_num: 2,
                auto_layers: false,
                resolution: 1024,
                steps: 3,
                cfg_scale: 2.5,
                seed: Some(5),
                caption_in_chinese: false,
            }
        );
        let req = Params {
            prompt: "  a cat \n".into(),
            ..p
        }
        .to_request("data:x".into());
        assert_eq!(req.prompt, "a cat");
        assert_eq!(
            (req.layer_num, req.resolution, req.steps, req.seed),
            (Some(LayerNum::Count(2)), Some(1024), Some(3), Some(5))
        );
        let auto = Params {
            auto_layers: true,
            ..Params::default()
        };
        assert_eq!(auto.to_request("x".into()).layer_num, Some(LayerNum::AUTO));
        // The choice survives the server's defaults arriving.
        assert!(auto.with_defaults(&config).auto_layers);
        assert_eq!(req.caption_language.as_deref(), Some("en"));
        let cn = Params {
            caption_in_chinese: true,
            ..Params::default()
        }
        .to_request("x".into());
        assert_eq!(cn.caption_language.as_deref(), Some("cn"));
    }
}
