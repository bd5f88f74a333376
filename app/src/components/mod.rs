//! The Leptos UI. Components are named for what the user sees.

mod header;
mod params;
mod results;
mod upload;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::StaticSegment;

pub use header::{Header, ModelMode};
pub use params::{Params, ParamsPanel};
pub use results::ResultsArea;
pub use upload::{UploadArea, UploadedImage};

/// The HTML document the server renders around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
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
}

/// The single page: upload → parameters → decompose → layers.
#[component]
fn HomePage() -> impl IntoView {
    let mode = RwSignal::new(ModelMode::QwenImage);
    let image = RwSignal::new(None::<UploadedImage>);
    let params = RwSignal::new(Params::default());
    view! {
        <Header mode/>
        <main class="workspace">
            <section class="inputs" aria-label="Input">
                <UploadArea image/>
                <ParamsPanel params mode/>
            </section>
            <ResultsArea image params mode/>
        </main>
    }
}
