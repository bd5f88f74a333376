//! Export, done in the browser: a ZIP of the layer PNGs in stack order, the flattened composite
//! and manifest.json; or the flattened composite alone as a PNG.

use leptos::prelude::*;

use super::AppState;

/// The ZIP's file name: `qwen-layers-seed-42.zip`.
pub fn zip_name(seed: Option<u64>) -> String {
    match seed {
        Some(s) => format!("qwen-layers-seed-{s}.zip"),
        None => "qwen-layers.zip".into(),
    }
}

#[component]
pub fn ExportBar() -> impl IntoView {
    let AppState { result, run_info, .. } = expect_context::<AppState>();
    #[cfg(not(feature = "hydrate"))]
    let _ = (result, run_info);
    let message = RwSignal::new(None::<Result<String, String>>);
    let busy = RwSignal::new(false);

    let export_zip = move |_| {
        busy.set(true);
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            // Let the button show its busy state before the (synchronous) encoding starts.
            crate::browser::sleep_ms(16).await;
            let run = run_info.get_untracked();
            let outcome = result.with_untracked(|r| {
                let d = r.as_ref().ok_or("nothing to export yet")?;
                let (bytes, manifest) = d.stack.export_zip(run.as_ref())?;
                let name = zip_name(run.as_ref().map(|r| r.seed));
                crate::browser::download(&name, "application/zip", &bytes)?;
                Ok::<_, String>(format!(
                    "Saved {name}: {} layers + composite + manifest ({}).",
                    manifest.layers.len(),
                    super::upload::file_size(bytes.len() as u64)
                ))
            });
            message.set(Some(outcome));
            busy.set(false);
        });
    };
    let export_png = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let outcome = result.with_untracked(|r| {
                let d = r.as_ref().ok_or("nothing to export yet")?;
                let png = crate::image_data::encode_png(&d.stack.flatten()).map_err(|e| e.error)?;
                crate::browser::download("composite-flattened.png", "image/png", &png)?;
                Ok::<_, String>("Saved composite-flattened.png.".to_string())
            });
            message.set(Some(outcome));
        }
    };

    view! {
        <section class="export card" aria-labelledby="export-title">
            <h2 id="export-title" class="card-title">"Export"</h2>
            <p class="hint">"Layers in stack order (bottom first), the flattened visible layers and a manifest with order, visibility, opacity, seed and parameters."</p>
            <div class="export-buttons">
                <button type="button" class="primary" id="export-zip" disabled=move || busy.get() on:click=export_zip>
                    {move || if busy.get() { "Preparing ZIP…" } else { "Download ZIP" }}
                </button>
                <button type="button" class="secondary" id="export-png" on:click=export_png>
                    "Download flattened PNG"
                </button>
            </div>
            {move || {
                message
                    .get()
                    .map(|m| match m {
                        Ok(text) => view! { <p class="export-done" role="status">{text}</p> }.into_any(),
                        Err(text) => view! { <p class="error" role="alert">{format!("Export failed: {text}")}</p> }.into_any(),
                    })
            }}
        </section>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_is_named_after_the_seed() {
        assert_eq!(zip_name(Some(42)), "qwen-layers-seed-42.zip");
        assert_eq!(zip_name(None), "qwen-layers.zip");
    }
}
