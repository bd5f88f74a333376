//! The Qwen Layers server: the Leptos web app, the REST API, the job queue in front of the
//! engine, configuration and flags. The `server` binary runs it; the `qwen-layers` crate (the
//! Rust API it builds on) holds the CLI.

pub mod adapters;
pub mod backend;
pub mod cli;
pub mod config;
pub mod door;
pub mod engine_state;
pub mod http_error;
pub mod jobs;
pub mod openapi;
pub mod queue;
pub mod routes;
pub mod run_store;
pub mod workers;
pub mod z_image;

use std::sync::Arc;

use anyhow::Context;
use app::backend::SharedBackend;
use axum::extract::FromRef;
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};

use crate::backend::{ServerBackend, ServerOptions};
use crate::cli::{DeviceChoice, ModelType, ServerArgs};
use crate::door::DoorPolicy;
use crate::engine_state::EngineState;
use crate::run_store::RunStore;
use engine::runtime::Runtime;

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
    let settings = args.settings()?;
    let z_settings = args.z_image_settings()?;
    let mode = match args.model_type {
        ModelType::Zimage => "zimage",
        ModelType::Qwenimage => "qwenimage",
    };
    // The engine workers: a device each, or a pair in latency mode (issue 21).
    let devices = settings.devices.clone().unwrap_or_else(|| {
        let want_cuda = match args.device {
            DeviceChoice::Cpu => false,
            DeviceChoice::Cuda => true,
            DeviceChoice::Auto => engine::gpu::cuda_compiled(),
        };
        workers::default_devices(want_cuda, engine::gpu::cuda_device_count())
    });
    let plans = workers::plan(&devices, settings.parallel).map_err(anyhow::Error::msg)?;
    let mut engines: Vec<(String, EngineState)> = Vec::new();
    for (index, plan) in plans.iter().enumerate() {
        // A GPU that cannot be used keeps the server up: /status reports why.
        let mut runtime =
            Runtime::select(&plan.main.to_string(), None).unwrap_or_else(|e| Runtime::unavailable(format!("{e:#}")));
        runtime.offload = settings.cpu_offload;
        // The devices beside the worker's own; one that cannot be used makes the worker unusable.
        let mut peer = |spec: &workers::DeviceSpec, role: &str| match Runtime::select(&spec.to_string(), None) {
            Ok(r) => Some(r.device),
            Err(e) => {
                runtime = Runtime::unavailable(format!("{spec} ({role}): {e:#}"));
                None
            }
        };
        let cfg_peer = plan.cfg_peer.as_ref().and_then(|d| peer(d, "CFG-parallel partner"));
        let sequence: Vec<_> = plan
            .sequence
            .iter()
            .filter_map(|d| peer(d, "sequence-parallel"))
            .collect();
        println!(
            "worker {index} ({}) runs on: {}",
            plan.label(),
            runtime.startup_summary()
        );
        let engine = match engines.first() {
            None => EngineState::new(&settings.model_path, settings.edit_model_source(), runtime)
                .with_adapters(crate::adapters::Adapters::from_settings(&settings)),
            Some((_, first)) => first.for_worker(index, runtime),
        }
        .with_peers(cfg_peer, sequence);
        engines.push((plan.label(), engine));
    }
    let first = engines[0].1.runtime().clone();
    let options = ServerOptions {
        model_type: mode.into(),
        device: match engines.len() {
            1 => first.describe(),
            n => format!("{} × {n} workers ({})", first.describe(), settings.parallel.name()),
        },
        queue_depth: args.queue_depth,
        max_body_bytes: args.max_body_mb * 1024 * 1024,
        max_image_pixels: args.max_image_pixels,
        settings: settings.clone(),
    };
    let mut z_runtime = first;
    z_runtime.offload = z_settings.cpu_offload;
    let data_dir = args.data_dir();
    let store = RunStore::open(
        &data_dir,
        std::time::Duration::from_secs(args.keep_results_hours * 3600),
        args.results_budget_mb.saturating_mul(1024 * 1024),
    )
    .with_context(|| format!("opening the results folder under {} (--data-dir)", data_dir.display()))?;
    let backend = ServerBackend::with_workers(options, engines, store);
    let z_image = z_image::ZImageService::new(z_settings, mode, z_runtime, backend.queue_handle());

    let site_root = std::env::var("LEPTOS_SITE_ROOT").unwrap_or_else(|_| "target/site".into());
    let leptos_options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root)
        .site_pkg_dir("pkg")
        .site_addr(std::net::SocketAddr::new(args.host, args.port))
        .build();
    let state = AppState {
        leptos_options: leptos_options.clone(),
        backend: backend.clone(),
    };
    let routes = generate_route_list(app::App);
    let shared: SharedBackend = backend.clone();
    let shared_z: app::server_fns_z_image::SharedZImageBackend = z_image.clone();
    let policy = Arc::new(DoorPolicy {
        token: args.api_token.clone(),
        allowed_hosts: args.allowed_host.clone(),
        max_body_bytes: options_body_limit(args),
        body_timeout: args.request_timeout(),
        upload_slots: tokio::sync::Semaphore::new(args.max_uploads as usize),
    });
    let api = routes::api_router(backend.clone())
        .merge(z_image::router(z_image.clone()))
        .merge(
            Router::new()
                .route(door::SESSION_PATH, axum::routing::post(door::sign_in))
                .with_state(policy.clone()),
        );
    let router = Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || {
                provide_context(shared.clone());
                provide_context(shared_z.clone());
            },
            {
                let o = leptos_options.clone();
                move || app::shell(o.clone())
            },
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(app::shell))
        .with_state(state)
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(options_body_limit(args)))
        .layer(axum::middleware::from_fn_with_state(policy, door::guard));
    Ok((router, backend))
}

fn options_body_limit(args: &ServerArgs) -> usize {
    usize::try_from(args.max_body_mb * 1024 * 1024).unwrap_or(usize::MAX)
}

/// Binds and serves until Ctrl-C. Prints the address (useful with `--port 0`).
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let (router, backend) = build_router(&args)?;
    let addr = std::net::SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        if args.api_token.is_none() {
            tracing::warn!("listening on {local} without --api-token: anyone on the network can use the API");
        }
        if args.allowed_host.is_empty() {
            println!(
                "note: the API answers to IP addresses and localhost only; add --allowed-host NAME for each host \
                 name people use to reach it"
            );
        }
    }
    let status = app::backend::Backend::status(backend.as_ref());
    println!("listening on http://{local}");
    println!(
        "model: {} ({})",
        status.model,
        status.reason.as_deref().unwrap_or("available")
    );
    println!(
        "results kept in {} for {} h",
        args.data_dir().join("runs").display(),
        args.keep_results_hours
    );
    serve_connections(listener, router, args.request_timeout()).await;
    Ok(())
}

/// Accepts connections until Ctrl-C. Unlike `axum::serve`, a client must finish sending its
/// request headers within `header_timeout` (a half-sent request does not hold a connection).
async fn serve_connections(listener: tokio::net::TcpListener, router: Router, header_timeout: std::time::Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut ctrl_c => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    // Let requests in flight finish, but not forever.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
}
