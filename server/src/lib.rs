//! The Qwen Layers server: the Leptos web app, the REST API, the job queue in front of the
//! engine, configuration and CLI flags. The `server` binary runs it; `qwen-layers` is the CLI.

pub mod backend;
pub mod cli;
pub mod config;
pub mod engine_state;
pub mod job_registry;
pub mod jobs;
pub mod layers;
pub mod openapi;
pub mod routes;

use std::sync::Arc;

use anyhow::Context;
use app::backend::SharedBackend;
use axum::extract::FromRef;
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};

use crate::backend::{ServerBackend, ServerOptions};
use crate::cli::{DeviceChoice, ModelType, ServerArgs};
use crate::engine_state::{EngineState, Runtime};

/// Router state: the Leptos options (for SSR and static files) and the backend.
#[derive(Clone)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub backend: Arc<ServerBackend>,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

/// The name the WASM bundle was built under (`/pkg/<name>.js`).
const OUTPUT_NAME: &str = match option_env!("LEPTOS_OUTPUT_NAME") {
    Some(name) => name,
    None => "qwen_layers",
};

/// Builds the whole app: REST API, server functions, SSR pages and static files.
pub fn build_router(args: &ServerArgs) -> anyhow::Result<(Router, Arc<ServerBackend>)> {
    if args.model_type == ModelType::Zimage {
        anyhow::bail!("--model-type zimage: Z-Image is not available yet; use --model-type qwenimage");
    }
    let settings = args.settings()?;
    let device = match args.device {
        DeviceChoice::Cuda => "cuda",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Auto => "auto",
    };
    // A GPU that cannot be used keeps the server up: /status reports why.
    let mut runtime = Runtime::select(device, None).unwrap_or_else(|e| Runtime::unavailable(format!("{e:#}")));
    runtime.offload = settings.cpu_offload;
    let options = ServerOptions {
        model_type: "qwenimage".into(),
        device: runtime.describe(),
        queue_depth: args.queue_depth,
        max_body_bytes: args.max_body_mb * 1024 * 1024,
        max_image_pixels: args.max_image_pixels,
        settings: settings.clone(),
    };
    let engine = EngineState::new(&settings.model_path, settings.edit_model_source(), runtime);
    let backend = ServerBackend::new(options, engine);

    let site_root = std::env::var("LEPTOS_SITE_ROOT").unwrap_or_else(|_| "target/site".into());
    let leptos_options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root)
        .site_pkg_dir("pkg")
        .site_addr(std::net::SocketAddr::new(args.host, args.port))
        .build();
    let state = AppState { leptos_options: leptos_options.clone(), backend: backend.clone() };
    let routes = generate_route_list(app::App);
    let shared: SharedBackend = backend.clone();
    let api = routes::api_router(backend.clone(), args.api_token.clone(), options_body_limit(args));
    let router = Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(shared.clone()),
            {
                let o = leptos_options.clone();
                move || app::shell(o.clone())
            },
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(app::shell))
        .with_state(state)
        .merge(api);
    Ok((router, backend))
}

fn options_body_limit(args: &ServerArgs) -> usize {
    usize::try_from(args.max_body_mb * 1024 * 1024).unwrap_or(usize::MAX)
}

/// Binds and serves until Ctrl-C. Prints the address (useful with `--port 0`).
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let (router, backend) = build_router(&args)?;
    let addr = std::net::SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && args.api_token.is_none() {
        tracing::warn!("listening on {local} without --api-token: anyone on the network can use the API");
    }
    let status = app::backend::Backend::status(backend.as_ref());
    println!("listening on http://{local}");
    println!("model: {} ({})", status.model, status.reason.as_deref().unwrap_or("available"));
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
