//! Export, done in the browser (`crate::export`, compiled to WASM): the layers as they stand —
//! order, names, visibility, opacity and edits — as a ZIP of PNGs with manifest.json, a layered
//! PSD (Photoshop, GIMP, Krita, Photopea), an OpenRaster file (GIMP, Krita, MyPaint) or a
//! PowerPoint slide; or the flattened composite alone as a PNG.

use leptos::prelude::*;

use super::{AppState, RunState};
use crate::export::Format;
use crate::layer_stack::RunInfo;

/// The download's file name: `qwen-layers-seed-42.zip`; the flattened PNG is
/// `composite-flattened.png`.
pub fn export_file_name(seed: Option<u64>, format: Format) -> String {
    match (format, seed) {
        (Format::Png, _) => "composite-flattened.png".into(),
        (_, Some(s)) => format!("qwen-layers-seed-{s}.{}", format.extension()),
        (_, None) => format!("qwen-layers.{}", format.extension()),
    }
}

/// The ZIP's file name: `qwen-layers-seed-42.zip`.
pub fn zip_name(seed: Option<u64>) -> String {
    export_file_name(seed, Format::Zip)
}

/// What the bar says once a file is saved.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn saved_message(name: &str, format: Format, layers: usize, size: &str) -> String {
    match format {
        Format::Zip => format!("Saved {name}: {layers} layers + composite + manifest ({size})."),
        Format::Png => format!("Saved {name} ({size})."),
        _ => format!("Saved {name}: {layers} layers ({size})."),
    }
}

/// The buttons, in the order shown: (format, button id, tooltip).
const BUTTONS: [(Format, &str, &str); 5] = [
    (
        Format::Zip,
        "export-zip",
        "PNG per layer, the flattened composite and manifest.json",
    ),
    (
        Format::Psd,
        "export-psd",
        "Layered Photoshop file: opens in Photoshop, GIMP, Krita and Photopea",
    ),
    (
        Format::Ora,
        "export-ora",
        "Layered OpenRaster file: opens in GIMP, Krita and MyPaint",
    ),
    (
        Format::Pptx,
        "export-pptx",
        "PowerPoint: one slide, one picture per layer",
    ),
    (Format::Png, "export-png", "The visible layers flattened into one PNG"),
];

#[component]
pub fn ExportBar() -> impl IntoView {
    let AppState {
        result, run_info, run, ..
    } = expect_context::<AppState>();
    #[cfg(not(feature = "hydrate"))]
    let _ = result;
    // The outcome of the last export, with the run whose layers it saved: "Saved …" is shown
    // only while those layers are on the page and no new run is going.
    let message = RwSignal::new(None::<(Option<RunInfo>, Result<String, String>)>);
    let shown = move || {
        let current = run_info.get();
        let running = run.with(RunState::is_busy);
        message
            .get()
            .filter(|(saved_from, _)| !running && *saved_from == current)
            .map(|(_, m)| m)
    };
    // The format being prepared, if any (one at a time).
    let busy = RwSignal::new(None::<Format>);

    let start = move |format: Format| {
        if busy.get_untracked().is_some() {
            return;
        }
        busy.set(Some(format));
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            // Let the button show its busy state before the (synchronous) encoding starts.
            crate::browser::sleep_ms(16).await;
            let run = run_info.get_untracked();
            let outcome = result.with_untracked(|r| {
                let d = r.as_ref().ok_or("nothing to export yet")?;
                let bytes = d.stack.export(format, run.as_ref())?;
                let name = export_file_name(run.as_ref().map(|r| r.seed), format);
                crate::browser::download(&name, format.mime(), &bytes)?;
                Ok::<_, String>(saved_message(
                    &name,
                    format,
                    d.stack.len(),
                    &super::upload::file_size(bytes.len() as u64),
                ))
            });
            message.set(Some((run, outcome)));
            busy.set(None);
        });
    };

    let buttons = BUTTONS
        .into_iter()
        .map(|(format, id, title)| {
            let class = if format == Format::Zip { "primary" } else { "secondary" };
            view! {
                <button
                    type="button"
                    class=class
                    id=id
                    title=title
                    disabled=move || busy.get().is_some()
                    on:click=move |_| start(format)
                >
                    {move || {
                        if busy.get() == Some(format) {
                            format!("Preparing {}…", format.label())
                        } else {
                            format!("Download {}", format.label())
                        }
                    }}
                </button>
            }
        })
        .collect_view();

    view! {
        <section class="export card" aria-labelledby="export-title">
            <h2 id="export-title" class="card-title">"Export"</h2>
            <p class="hint">
                "The layers as they stand (order, names, visibility, opacity): PNGs with a manifest of the seed and parameters, a layered PSD or OpenRaster file, or a PowerPoint slide with one picture per layer; or the visible layers flattened."
            </p>
            <div class="export-buttons" role="group" aria-label="Export formats">{buttons}</div>
            {move || {
                shown()
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
    fn files_are_named_after_the_seed_and_format() {
        assert_eq!(zip_name(Some(42)), "qwen-layers-seed-42.zip");
        assert_eq!(zip_name(None), "qwen-layers.zip");
        assert_eq!(export_file_name(Some(7), Format::Psd), "qwen-layers-seed-7.psd");
        assert_eq!(export_file_name(None, Format::Pptx), "qwen-layers.pptx");
        assert_eq!(export_file_name(Some(7), Format::Png), "composite-flattened.png");
    }

    #[test]
    fn every_format_has_a_button() {
        for f in Format::ALL {
            assert_eq!(BUTTONS.iter().filter(|(b, ..)| *b == f).count(), 1, "{f}");
        }
        assert_eq!(
            saved_message("a.zip", Format::Zip, 2, "1 kB"),
            "Saved a.zip: 2 layers + composite + manifest (1 kB)."
        );
        assert_eq!(
            saved_message("a.psd", Format::Psd, 3, "9 kB"),
            "Saved a.psd: 3 layers (9 kB)."
        );
    }
}
