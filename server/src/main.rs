use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = server::cli::ServerArgs::parse();
    if let Err(e) = server::serve(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
