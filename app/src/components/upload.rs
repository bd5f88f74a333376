//! The upload area: click to choose, drag and drop, or paste an image; shows a preview and size.

use leptos::prelude::*;

/// An image the user picked: a data URL (what the API takes) and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadedImage {
    pub name: String,
    pub data_url: String,
    pub width: u32,
    pub height: u32,
}

#[component]
pub fn UploadArea(image: RwSignal<Option<UploadedImage>>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    view! {
        <div class="upload" aria-label="Input image">
            <label class="upload-drop" for="image-input">
                <span>"Drop an image here, paste it, or click to choose (PNG, JPEG, WebP)"</span>
            </label>
            <input id="image-input" type="file" accept="image/png,image/jpeg,image/webp"/>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {move || {
                image
                    .get()
                    .map(|img| {
                        view! {
                            <figure class="preview">
                                <img src=img.data_url.clone() alt="Uploaded image preview"/>
                                <figcaption>{format!("{} — {}×{}", img.name, img.width, img.height)}</figcaption>
                            </figure>
                        }
                    })
            }}
        </div>
    }
}
