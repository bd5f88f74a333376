//! The upload area: click to choose, drag and drop, or paste an image; shows a preview with the
//! image's size, and rejects files the server would refuse before anything is sent.

use leptos::prelude::*;

use crate::api::ConfigResponse;

/// An image the user picked: a data URL (what the API takes) and what the preview shows.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadedImage {
    pub name: String,
    pub data_url: String,
    pub width: u32,
    pub height: u32,
    /// File size in bytes.
    pub bytes: usize,
    /// "PNG", "JPEG" or "WebP".
    pub format: &'static str,
}

/// Checks a file the way the server will (format, pixel count, request size) and prepares it.
/// The error is a sentence for the user that names the file.
pub fn inspect_upload(name: &str, bytes: &[u8], max_pixels: u64, max_body_bytes: u64) -> Result<UploadedImage, String> {
    use image::ImageFormat;
    if bytes.is_empty() {
        return Err(format!("“{name}” is empty."));
    }
    let (format, label, mime) = match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => (ImageFormat::Png, "PNG", "image/png"),
        Ok(ImageFormat::Jpeg) => (ImageFormat::Jpeg, "JPEG", "image/jpeg"),
        Ok(ImageFormat::WebP) => (ImageFormat::WebP, "WebP", "image/webp"),
        Ok(other) => {
            let found = other.extensions_str().first().map(|e| e.to_uppercase()).unwrap_or_else(|| "another".into());
            return Err(format!("“{name}” is a {found} image; please use a PNG, JPEG or WebP file."));
        }
        Err(_) => return Err(format!("“{name}” is not an image; please use a PNG, JPEG or WebP file.")),
    };
    let (width, height) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| format!("“{name}” could not be read as a {label} image ({e})."))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("“{name}” has no pixels."));
    }
    if pixels > max_pixels {
        return Err(format!(
            "“{name}” is {width}×{height} ({}); the server accepts at most {}.",
            megapixels(pixels),
            megapixels(max_pixels)
        ));
    }
    // The request carries the file base64-encoded (4 bytes per 3), plus a little JSON.
    let request_bytes = (bytes.len() as u64).div_ceil(3) * 4 + 1024;
    if request_bytes > max_body_bytes {
        return Err(format!(
            "“{name}” is {}; encoded for upload it would exceed the server's {} request limit.",
            file_size(bytes.len() as u64),
            file_size(max_body_bytes)
        ));
    }
    let data_url = format!("data:{mime};base64,{}", crate::image_data::to_base64(bytes));
    Ok(UploadedImage { name: name.to_string(), data_url, width, height, bytes: bytes.len(), format: label })
}

/// "1.2 MB", "340 KB", "12 bytes".
pub fn file_size(bytes: u64) -> String {
    const KB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KB * KB {
        format!("{:.1} MB", b / (KB * KB))
    } else if b >= KB {
        format!("{:.0} KB", b / KB)
    } else {
        format!("{bytes} bytes")
    }
}

fn megapixels(pixels: u64) -> String {
    format!("{:.1} MP", pixels as f64 / 1e6)
}

#[component]
pub fn UploadArea(image: RwSignal<Option<UploadedImage>>, config: RwSignal<Option<ConfigResponse>>) -> impl IntoView {
    #[cfg(not(feature = "hydrate"))]
    let _ = config;
    let error = RwSignal::new(None::<String>);
    let dragging = RwSignal::new(false);
    let reading = RwSignal::new(false);

    // Takes the first file of a pick, drop or paste.
    #[cfg(feature = "hydrate")]
    let accept = move |files: Vec<web_sys::File>| {
        let Some(file) = files.into_iter().next() else { return };
        let (max_pixels, max_body) =
            config.with_untracked(|c| c.as_ref().map_or((36_000_000, 64 << 20), |c| (c.max_image_pixels, c.max_body_bytes)));
        reading.set(true);
        leptos::task::spawn_local(async move {
            let name = file.name();
            let outcome = match crate::browser::read_file(&file).await {
                Ok(bytes) => inspect_upload(&name, &bytes, max_pixels, max_body),
                Err(e) => Err(format!("“{name}” could not be read: {e}")),
            };
            reading.set(false);
            match outcome {
                Ok(img) => {
                    error.set(None);
                    image.set(Some(img));
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };

    let on_change = move |ev: leptos::ev::Event| {
        #[cfg(feature = "hydrate")]
        {
            use wasm_bindgen::JsCast;
            if let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) {
                accept(crate::browser::files(input.files()));
                // Choosing the same file again should still fire `change`.
                input.set_value("");
            }
        }
        let _ = ev;
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        #[cfg(feature = "hydrate")]
        accept(crate::browser::files(ev.data_transfer().and_then(|d| d.files())));
    };
    let on_dragover = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        dragging.set(true);
    };

    // Paste anywhere on the page: an image on the clipboard becomes the input (text pastes into
    // fields as usual).
    let paste = window_event_listener(leptos::ev::paste, move |ev| {
        #[cfg(feature = "hydrate")]
        {
            let files = crate::browser::files(ev.clipboard_data().and_then(|d| d.files()));
            if files.iter().any(|f| f.type_().starts_with("image/")) {
                ev.prevent_default();
                accept(files.into_iter().filter(|f| f.type_().starts_with("image/")).collect());
            } else if !files.is_empty() {
                ev.prevent_default();
                accept(files);
            }
        }
        let _ = ev;
    });
    on_cleanup(move || paste.remove());

    // The browser decodes the preview; a file whose header looked fine but whose data is broken
    // fails here.
    let on_preview_error = move |_| {
        if let Some(img) = image.get_untracked() {
            error.set(Some(format!("“{}” could not be decoded as a {} image.", img.name, img.format)));
            image.set(None);
        }
    };

    view! {
        <div class="upload card" role="group" aria-labelledby="upload-title">
            <h2 id="upload-title" class="card-title">"Image"</h2>
            <label
                class="upload-drop"
                class:dragging=move || dragging.get()
                class:has-image=move || image.with(Option::is_some)
                for="image-input"
                on:dragover=on_dragover
                on:dragenter=on_dragover
                on:dragleave=move |_| dragging.set(false)
                on:drop=on_drop
            >
                {move || match image.get() {
                    Some(img) => {
                        view! {
                            <img
                                class="preview-img"
                                src=img.data_url.clone()
                                alt=format!("Preview of {}", img.name)
                                on:error=on_preview_error
                            />
                        }
                            .into_any()
                    }
                    None => {
                        view! {
                            <span class="upload-icon" aria-hidden="true">
                                <svg viewBox="0 0 24 24" width="36" height="36">
                                    <path
                                        d="M12 16V4m0 0-4.5 4.5M12 4l4.5 4.5M4 16v3a1 1 0 0 0 1 1h14a1 1 0 0 0 1-1v-3"
                                        fill="none"
                                        stroke="currentColor"
                                        stroke-width="1.8"
                                        stroke-linecap="round"
                                        stroke-linejoin="round"
                                    ></path>
                                </svg>
                            </span>
                            <span class="upload-text">
                                <strong>"Choose an image"</strong>
                                " or drop it here — you can also paste one"
                            </span>
                            <span class="upload-formats">"PNG, JPEG or WebP"</span>
                        }
                            .into_any()
                    }
                }}
            </label>
            <input
                id="image-input"
                class="visually-hidden"
                type="file"
                accept="image/png,image/jpeg,image/webp"
                aria-describedby="upload-info"
                on:change=on_change
            />
            <p id="upload-info" class="upload-info" aria-live="polite">
                {move || {
                    if reading.get() {
                        return "Reading…".to_string();
                    }
                    image
                        .with(|i| {
                            i.as_ref()
                                .map(|i| {
                                    format!(
                                        "{} — {}×{} px, {}, {}",
                                        i.name,
                                        i.width,
                                        i.height,
                                        i.format,
                                        file_size(i.bytes as u64),
                                    )
                                })
                        })
                        .unwrap_or_default()
                }}
            </p>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </div>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_data::encode_png;

    fn png(w: u32, h: u32) -> Vec<u8> {
        encode_png(&image::RgbaImage::new(w, h)).unwrap()
    }

    #[test]
    fn a_png_is_accepted_with_its_size_and_a_data_url() {
        let bytes = png(30, 20);
        let img = inspect_upload("cat.png", &bytes, 1000, 1 << 20).unwrap();
        assert_eq!((img.width, img.height, img.format, img.bytes), (30, 20, "PNG", bytes.len()));
        assert!(img.data_url.starts_with("data:image/png;base64,iVBOR"));
        let decoded = crate::image_data::decode_image(&img.data_url, 1000).unwrap();
        assert_eq!(decoded.dimensions(), (30, 20));
    }

    #[test]
    fn jpeg_keeps_its_mime_type() {
        let mut jpg = Vec::new();
        image::RgbImage::new(8, 8).write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
        let img = inspect_upload("a.jpg", &jpg, 1000, 1 << 20).unwrap();
        assert_eq!(img.format, "JPEG");
        assert!(img.data_url.starts_with("data:image/jpeg;base64,"));
    }

    #[test]
    fn bad_files_get_a_sentence_naming_them() {
        let err = |name: &str, bytes: &[u8]| inspect_upload(name, bytes, 1000, 1 << 20).unwrap_err();
        assert_eq!(err("notes.txt", b"hello"), "“notes.txt” is not an image; please use a PNG, JPEG or WebP file.");
        assert_eq!(err("empty.png", b""), "“empty.png” is empty.");
        assert!(err("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").contains("is a GIF image"));
        assert!(err("cut.png", &png(4, 4)[..20]).starts_with("“cut.png” could not be read as a PNG image"));
        let big = inspect_upload("big.png", &png(40, 30), 1000, 1 << 20).unwrap_err();
        assert_eq!(big, "“big.png” is 40×30 (0.0 MP); the server accepts at most 0.0 MP.");
        let heavy = inspect_upload("heavy.png", &png(10, 10), 1000, 100).unwrap_err();
        assert!(heavy.contains("exceed the server's 100 bytes request limit"), "{heavy}");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(file_size(12), "12 bytes");
        assert_eq!(file_size(2048), "2 KB");
        assert_eq!(file_size(5 * 1024 * 1024 + 200_000), "5.2 MB");
    }
}
