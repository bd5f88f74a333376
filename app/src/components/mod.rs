//! The Leptos UI. Components are named for what the user sees: the header with the model toggle,
//! the image upload, the parameters, the run (progress, cancel), the canvas, the layer panel with
//! its edit box, and export.

mod benchmark;
mod canvas;
mod edit;
mod export_bar;
mod header;
mod layers;
mod params;
mod results;
mod run;
mod upload;
mod z_image;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::StaticSegment;

use crate::api::{ConfigResponse, EditStatusResponse, StatusResponse};
use crate::layer_stack::{Decomposition, RunInfo};

pub use benchmark::{
    bench_decomposition, bench_layers, summarize, BenchLine, BenchReport, BenchScene, Benchmark, BENCH_LAYERS,
    BENCH_SIZE,
};
pub use canvas::{Stage, StageView, Timing, Zoom};
pub use export_bar::{export_file_name, zip_name, ExportBar};
pub use header::{Header, ModelMode};
pub use layers::{layer_file_name, LayerPanel};
pub use params::{FieldErrors, Params, ParamsPanel};
pub use results::ResultsArea;
pub use run::{duration, progress_view, run_label, ProgressView, RecentRuns, RunPanel, RunState};
pub use upload::{file_size, inspect_upload, UploadArea, UploadedImage};
pub use z_image::{as_upload, progress_label, ZForm, ZImagePanel, ZImageState, ZRun};

/// The HTML document the server renders around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="dark"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
    .into_any()
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/qwen_layers.css"/>
        <Title text="Qwen Layers — image to editable layers"/>
        <Router>
            <Routes fallback=|| view! { <p class="not-found">"Page not found."</p> }>
                <Route path=StaticSegment("") view=HomePage/>
            </Routes>
        </Router>
    }
    .into_any()
}

/// The page's shared state (all signals, so it is `Copy` and provided as context).
#[derive(Debug, Clone, Copy)]
pub struct AppState {
    pub mode: RwSignal<ModelMode>,
    pub image: RwSignal<Option<UploadedImage>>,
    pub params: RwSignal<Params>,
    pub field_errors: RwSignal<FieldErrors>,
    /// The server's defaults and limits, once fetched.
    pub config: RwSignal<Option<ConfigResponse>>,
    /// Whether the decompose / edit models can run (fetched at load).
    pub status: RwSignal<Option<StatusResponse>>,
    pub edit_status: RwSignal<Option<EditStatusResponse>>,
    pub run: RwSignal<RunState>,
    /// The current decomposition: the model's composite and the layer stack.
    pub result: RwSignal<Option<Decomposition>>,
    pub run_info: RwSignal<Option<RunInfo>>,
    /// The last change, for screen readers (an aria-live region).
    pub announce: RwSignal<String>,
    /// Bumped when a run finishes, so the list of recent runs is fetched again.
    pub runs_changed: RwSignal<u32>,
    /// The server wants its API token and this browser has not signed in.
    pub needs_token: RwSignal<bool>,
    /// The layer whose row the pointer or the keyboard focus is on (the canvas readies its
    /// caches for a change to it).
    pub pointed_layer: RwSignal<Option<u32>>,
}

impl AppState {
    fn new() -> Self {
        Self {
            mode: RwSignal::new(ModelMode::QwenImage),
            image: RwSignal::new(None),
            params: RwSignal::new(Params::default()),
            field_errors: RwSignal::new(FieldErrors::default()),
            config: RwSignal::new(None),
            status: RwSignal::new(None),
            edit_status: RwSignal::new(None),
            run: RwSignal::new(RunState::Idle),
            result: RwSignal::new(None),
            run_info: RwSignal::new(None),
            announce: RwSignal::new(String::new()),
            runs_changed: RwSignal::new(0),
            needs_token: RwSignal::new(false),
            pointed_layer: RwSignal::new(None),
        }
    }
}

/// Shown when the server requires its API token: a plain form, so the token goes straight to the
/// server, which keeps it in an HttpOnly cookie (never readable by scripts on the page).
#[component]
fn TokenForm(needs_token: RwSignal<bool>) -> impl IntoView {
    view! {
        <Show when=move || needs_token.get()>
            <form class="token-form card" method="post" action="/api/session">
                <p>"This server requires its API token."</p>
                <label>
                    "API token " <input type="password" name="token" autocomplete="current-password" required=true/>
                </label>
                <button type="submit" class="primary">"Sign in"</button>
            </form>
        </Show>
    }
    .into_any()
}

/// The single page: upload → parameters → decompose → layers.
#[component]
fn HomePage() -> impl IntoView {
    let state = AppState::new();
    provide_context(state);
    let z_state = ZImageState::new();
    provide_context(z_state);
    let AppState {
        mode,
        image,
        params,
        field_errors,
        config,
        status,
        edit_status,
        run,
        announce,
        needs_token,
        ..
    } = state;

    // The server's defaults, limits and model availability (in the browser, after hydration).
    Effect::new(move |_| {
        leptos::task::spawn_local(async move {
            match crate::server_fns::get_config().await {
                Ok(c) => {
                    params.update(|p| *p = p.with_defaults(&c));
                    // `--model-type zimage`: the page opens in the Z-Image mode.
                    if c.model_type == "zimage" {
                        mode.set(ModelMode::ZImage);
                    }
                    config.set(Some(c));
                }
                Err(e) if e.error == crate::api::TOKEN_REQUIRED => needs_token.set(true),
                Err(e) => leptos::logging::warn!("config: {}", e.error),
            }
        });
        leptos::task::spawn_local(async move {
            if let Ok(s) = crate::server_fns::get_status().await {
                status.set(Some(s));
            }
        });
        leptos::task::spawn_local(async move {
            if let Ok(s) = crate::server_fns::get_edit_status().await {
                edit_status.set(Some(s));
            }
        });
        #[cfg(feature = "hydrate")]
        z_image::fetch_status(z_state);
    });

    let busy = Signal::derive(move || run.with(RunState::is_busy));
    view! {
        <Header mode/>
        <main class="workspace" data-ready=move || config.with(Option::is_some).to_string()>
            <Show
                when=move || mode.get() == ModelMode::QwenImage
                fallback=move || view! { <TokenForm needs_token/> <ZImagePanel/> }
            >
                <section class="inputs" aria-label="Input">
                    <UploadArea image config/>
                    <ParamsPanel params errors=field_errors config disabled=busy/>
                    <TokenForm needs_token/>
                    <RunPanel/>
                    <RecentRuns/>
                </section>
                <ResultsArea/>
            </Show>
        </main>
        <footer class="footer">
            <Benchmark/>
        </footer>
        <div class="visually-hidden" aria-live="polite" role="status" id="announcer">
            {move || announce.get()}
        </div>
        <noscript>
            <p class="error">"Qwen Layers needs JavaScript (WebAssembly) for uploading and compositing."</p>
        </noscript>
    }
    .into_any()
}
