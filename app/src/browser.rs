//! Browser-only glue (compiled with `hydrate`): reading files, timers, downloads and drawing
//! RGBA pixels on a canvas. Everything here is a thin wrapper over web-sys so the components
//! keep their logic in plain Rust.

use wasm_bindgen::{Clamped, JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

fn js_err(e: JsValue) -> String {
    e.as_string()
        .or_else(|| e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Milliseconds from `performance.now()` (sub-millisecond resolution).
pub fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

/// Waits `ms` milliseconds without blocking the page.
pub async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// Reads a file (from an input, a drop or the clipboard) into memory.
pub async fn read_file(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let buffer = JsFuture::from(file.array_buffer()).await.map_err(js_err)?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// The files of a `FileList` (input, drop or paste).
pub fn files(list: Option<web_sys::FileList>) -> Vec<web_sys::File> {
    let Some(list) = list else { return Vec::new() };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// Offers `bytes` as a file download named `name`.
pub fn download(name: &str, mime: &str, bytes: &[u8]) -> Result<(), String> {
    let array = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&array);
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options).map_err(js_err)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_err)?;
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let a: web_sys::HtmlAnchorElement = document
        .create_element("a")
        .map_err(js_err)?
        .dyn_into()
        .map_err(|_| "not an anchor".to_string())?;
    a.set_href(&url);
    a.set_download(name);
    a.set_attribute("hidden", "").map_err(js_err)?;
    let body = document.body().ok_or("no body")?;
    body.append_child(&a).map_err(js_err)?;
    a.click();
    a.remove();
    // The browser has taken the URL once click() returns; free the blob a little later.
    leptos::prelude::set_timeout(
        move || {
            let _ = web_sys::Url::revoke_object_url(&url);
        },
        std::time::Duration::from_secs(30),
    );
    Ok(())
}

/// Draws straight-alpha RGBA8 pixels onto a canvas, resizing its bitmap to `width`×`height`.
pub fn put_rgba(canvas: &web_sys::HtmlCanvasElement, width: u32, height: u32, rgba: &[u8]) -> Result<(), String> {
    if canvas.width() != width {
        canvas.set_width(width);
    }
    if canvas.height() != height {
        canvas.set_height(height);
    }
    let ctx: web_sys::CanvasRenderingContext2d = canvas
        .get_context("2d")
        .map_err(js_err)?
        .ok_or("the canvas has no 2d context")?
        .dyn_into()
        .map_err(|_| "not a 2d context".to_string())?;
    let data = web_sys::ImageData::new_with_u8_clamped_array_and_sh(Clamped(rgba), width, height).map_err(js_err)?;
    ctx.put_image_data(&data, 0.0, 0.0).map_err(js_err)
}

/// Copies `src` (e.g. a WebGL canvas, premultiplied like a 2D canvas) onto `canvas` exactly,
/// resizing its bitmap to `width`×`height`.
pub fn copy_canvas(
    canvas: &web_sys::HtmlCanvasElement,
    src: &web_sys::HtmlCanvasElement,
    width: u32,
    height: u32,
) -> Result<(), String> {
    if canvas.width() != width {
        canvas.set_width(width);
    }
    if canvas.height() != height {
        canvas.set_height(height);
    }
    let ctx: web_sys::CanvasRenderingContext2d = canvas
        .get_context("2d")
        .map_err(js_err)?
        .ok_or("the canvas has no 2d context")?
        .dyn_into()
        .map_err(|_| "not a 2d context".to_string())?;
    // "copy": the pixels replace what was there (no blending with the last frame).
    ctx.set_global_composite_operation("copy").map_err(js_err)?;
    ctx.draw_image_with_html_canvas_element(src, 0.0, 0.0).map_err(js_err)
}

/// A detached canvas (for measuring the drawing cost without touching the page).
pub fn scratch_canvas() -> Option<web_sys::HtmlCanvasElement> {
    web_sys::window()?
        .document()?
        .create_element("canvas")
        .ok()?
        .dyn_into()
        .ok()
}

/// Moves keyboard focus to the element with this id (after a re-render moved it).
pub fn focus(id: &str) {
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id(id))
        .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok())
    {
        let _ = el.focus();
    }
}

/// Keeps keyboard focus across a re-render that moves DOM nodes. On the next frame, the control
/// that had focus gets it back, unless it is one of `arrows` (the move buttons, whose right
/// successor the caller knows) or is now disabled: then `fallback_id` gets it.
pub fn keep_focus(fallback_id: String, arrows: [String; 2]) {
    let active = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.active_element());
    leptos::prelude::request_animation_frame(move || {
        let keep = active
            .and_then(|el| el.dyn_into::<web_sys::HtmlElement>().ok())
            .filter(|el| el.is_connected() && !el.has_attribute("disabled") && !arrows.contains(&el.id()));
        match keep {
            Some(el) => {
                let _ = el.focus();
            }
            None => focus(&fallback_id),
        }
    });
}

/// A random seed within 2^53 (exact in JavaScript numbers and JSON).
pub fn random_seed() -> u64 {
    let hi = (js_sys::Math::random() * f64::from(1u32 << 21)) as u64;
    let lo = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (hi << 32) | lo
}
