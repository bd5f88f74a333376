//! The layer panel: the model's composite, then the layers from the top of the stack down, each
//! with a thumbnail, name, visibility eye, drag handle and move up/down buttons, opacity, an edit
//! box, before/after and undo for edits, "Split" (decompose the layer again into a group of
//! sub-layers), and a PNG download. A group's row folds, hides and moves its layers as one and
//! undoes the split. Undo/redo for the whole stack.

use std::sync::Arc;

use leptos::prelude::*;

use super::AppState;
use crate::layer_stack::{Decomposition, LayerStack, Row};

/// The file name a single layer downloads as: `layer-2.png`.
pub fn layer_file_name(name: &str) -> String {
    format!("{}.png", crate::export::zip::file_stem(name))
}

/// Applies a change to the stack (if there is one) and says what happened for screen readers.
fn change<T>(
    result: RwSignal<Option<Decomposition>>,
    announce: RwSignal<String>,
    f: impl FnOnce(&mut LayerStack) -> Option<(T, String)>,
) -> Option<T> {
    let mut out = None;
    result.update(|r| {
        if let Some(d) = r {
            if let Some((value, message)) = f(&mut d.stack) {
                announce.set(message);
                out = Some(value);
            }
        }
    });
    out
}

/// What one layer's row shows.
#[derive(Debug, Clone, Default, PartialEq)]
struct RowState {
    name: String,
    visible: bool,
    opacity: f32,
    thumb: Arc<str>,
    edited: bool,
    show_before: bool,
    position: usize,
    count: usize,
    last_instruction: String,
    in_group: bool,
    can_up: bool,
    can_down: bool,
}

#[component]
pub fn LayerPanel() -> impl IntoView {
    let AppState { result, announce, .. } = expect_context::<AppState>();
    let rows = move || result.with(|r| r.as_ref().map(|d| d.stack.rows_top_down()).unwrap_or_default());
    let can_undo = move || result.with(|r| r.as_ref().is_some_and(|d| d.stack.can_undo()));
    let can_redo = move || result.with(|r| r.as_ref().is_some_and(|d| d.stack.can_redo()));
    let undo = move || {
        change(result, announce, |s| s.undo().then(|| ((), "Undone.".to_string())));
    };
    let redo = move || {
        change(result, announce, |s| s.redo().then(|| ((), "Redone.".to_string())));
    };
    // The layer being dragged and the row it is over.
    let dragging = RwSignal::new(None::<u32>);
    let drop_target = RwSignal::new(None::<u32>);
    let editing = RwSignal::new(None::<u32>);
    let splitting = RwSignal::new(None::<u32>);

    // Ctrl/⌘+Z and Ctrl/⌘+Shift+Z (or Ctrl+Y) undo and redo stack changes, except while typing.
    let keys = window_event_listener(leptos::ev::keydown, move |ev| {
        if !(ev.ctrl_key() || ev.meta_key()) || ev.alt_key() {
            return;
        }
        #[cfg(feature = "hydrate")]
        {
            use wasm_bindgen::JsCast;
            let typing = ev
                .target()
                .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
                .is_some_and(|el| matches!(el.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT"));
            if typing {
                return;
            }
        }
        match (ev.key().to_lowercase().as_str(), ev.shift_key()) {
            ("z", false) => {
                ev.prevent_default();
                undo();
            }
            ("z", true) | ("y", false) => {
                ev.prevent_default();
                redo();
            }
            _ => {}
        }
    });
    on_cleanup(move || keys.remove());

    view! {
        <section class="layers card" aria-labelledby="layers-title">
            <div class="layers-header">
                <h2 id="layers-title" class="card-title">"Layers"</h2>
                <div class="history" role="group" aria-label="History">
                    <button
                        type="button"
                        class="icon-button"
                        aria-label="Undo"
                        title="Undo (Ctrl+Z)"
                        disabled=move || !can_undo()
                        on:click=move |_| undo()
                    >
                        <Icon path=ICON_UNDO/>
                    </button>
                    <button
                        type="button"
                        class="icon-button"
                        aria-label="Redo"
                        title="Redo (Ctrl+Shift+Z)"
                        disabled=move || !can_redo()
                        on:click=move |_| redo()
                    >
                        <Icon path=ICON_REDO/>
                    </button>
                </div>
            </div>
            <p class="hint layers-hint">
                "Top of the stack first. Drag a row, or use its arrows (or Alt+↑/↓), to reorder."
            </p>
            <CompositeRow/>
            <ol class="layer-list" aria-label="Layer stack, top first">
                <For each=rows key=|row| *row let:row>
                    {match row {
                        Row::Layer(id) => view! { <LayerRow id dragging drop_target editing splitting/> }.into_any(),
                        Row::Group(id) => view! { <GroupRow id/> }.into_any(),
                    }}
                </For>
            </ol>
        </section>
    }
    .into_any()
}

/// The model's flattened result: not a layer, so it is labelled and kept apart from the stack.
#[component]
fn CompositeRow() -> impl IntoView {
    let AppState { result, .. } = expect_context::<AppState>();
    // A memo of the shared URL: changes to the stack do not copy (and compare) the whole PNG.
    let data_url = Memo::new(move |_| result.with(|r| r.as_ref().map(|d| Arc::clone(&d.composite.data_url))));
    let url = move || data_url.with(|u| u.as_deref().unwrap_or_default().to_string());
    let download = move |_| {
        #[cfg(feature = "hydrate")]
        result.with_untracked(|r| {
            if let Some(d) = r {
                if let Ok(png) = d.composite.png_bytes() {
                    let _ = crate::browser::download("composite.png", "image/png", &png);
                }
            }
        });
    };
    view! {
        <div class="composite-row" data-testid="composite-row">
            <img class="thumb checkerboard" src=url alt=""/>
            <div class="layer-meta">
                <span class="layer-name">"Composite (all layers)"</span>
                <span class="layer-sub">"The model's flattened result — not a layer"</span>
            </div>
            <button
                type="button"
                class="icon-button"
                aria-label="Download the model's composite as PNG"
                title="Download PNG"
                on:click=download
            >
                <Icon path=ICON_DOWNLOAD/>
            </button>
        </div>
    }
    .into_any()
}

#[component]
fn LayerRow(
    id: u32,
    dragging: RwSignal<Option<u32>>,
    drop_target: RwSignal<Option<u32>>,
    editing: RwSignal<Option<u32>>,
    splitting: RwSignal<Option<u32>>,
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let AppState { result, announce, .. } = state;
    // What the row shows, as one memo: a change to another layer (or to the canvas alone)
    // leaves this row's closures and DOM untouched.
    let row = Memo::new(move |_| {
        result.with(|r| {
            r.as_ref()
                .and_then(|d| Some((d.stack.get(id)?, &d.stack)))
                .map(|(l, s)| RowState {
                    name: l.name.clone(),
                    visible: l.visible,
                    opacity: l.opacity,
                    thumb: Arc::clone(&l.shown().data_url),
                    edited: l.is_edited(),
                    show_before: l.show_before,
                    position: s.position(id).unwrap_or(0),
                    count: s.len(),
                    last_instruction: l.current().instruction.clone().unwrap_or_default(),
                    in_group: l.group.is_some(),
                    can_up: s.can_move(id, true),
                    can_down: s.can_move(id, false),
                })
                .unwrap_or_default()
        })
    });
    let name = move || row.with(|r| r.name.clone());
    let visible = move || row.with(|r| r.visible);
    let opacity = move || row.with(|r| r.opacity);
    let thumb = move || row.with(|r| r.thumb.to_string());
    let edited = move || row.with(|r| r.edited);
    let show_before = move || row.with(|r| r.show_before);
    let position = move || row.with(|r| r.position);
    let count = move || row.with(|r| r.count);
    let last_instruction = move || row.with(|r| r.last_instruction.clone());
    let in_group = move || row.with(|r| r.in_group);
    let can_up = move || row.with(|r| r.can_up);
    let can_down = move || row.with(|r| r.can_down);

    let toggle = move |_| {
        change(result, announce, |s| {
            let now = s.toggle_visible(id).ok()?;
            let name = s.get(id)?.name.clone();
            Some(((), format!("{name} {}.", if now { "shown" } else { "hidden" })))
        });
    };
    // Moves keep focus on the control that moved the row (the row is re-inserted in the DOM).
    let move_by = move |up: bool| {
        let moved = change(result, announce, |s| {
            let moved = if up { s.move_up(id) } else { s.move_down(id) }.ok()?;
            let name = s.get(id)?.name.clone();
            let msg = if moved {
                format!("{name} moved to position {} of {}.", s.position(id)?, s.len())
            } else {
                format!("{name} is already at the {}.", if up { "top" } else { "bottom" })
            };
            Some((moved, msg))
        });
        #[cfg(feature = "hydrate")]
        if moved == Some(true) {
            // The focused control stays focused; if it is now disabled (the row reached the
            // end), the opposite arrow takes the focus.
            let end = result.with_untracked(|r| {
                r.as_ref().is_some_and(|d| {
                    let p = d.stack.position(id).unwrap_or(0);
                    if up {
                        p == d.stack.len()
                    } else {
                        p == 1
                    }
                })
            });
            let same = format!("layer-{id}-{}", if up { "up" } else { "down" });
            let other = format!("layer-{id}-{}", if up { "down" } else { "up" });
            let fallback = if end { other.clone() } else { same.clone() };
            crate::browser::keep_focus(fallback, [same, other]);
        }
        let _ = moved;
    };
    let on_opacity = move |ev: leptos::ev::Event| {
        if let Ok(v) = event_target_value(&ev).parse::<f32>() {
            change(result, announce, |s| {
                s.set_opacity(id, v / 100.0).ok().map(|()| ((), String::new()))
            });
        }
    };
    let end_opacity = move |_| {
        result.update(|r| {
            if let Some(d) = r {
                d.stack.end_gesture();
            }
        });
    };
    let toggle_before = move |_| {
        change(result, announce, |s| {
            let before = s.toggle_before(id).ok()?;
            let name = s.get(id)?.name.clone();
            Some((
                (),
                format!(
                    "{name}: showing {}.",
                    if before { "before the edit" } else { "after the edit" }
                ),
            ))
        });
    };
    let undo_edit = move |_| {
        change(result, announce, |s| {
            s.undo_edit(id).ok()?.then_some(())?;
            Some(((), format!("{}: edit undone.", s.get(id)?.name)))
        });
    };
    let download = move |_| {
        #[cfg(feature = "hydrate")]
        result.with_untracked(|r| {
            let Some(layer) = r.as_ref().and_then(|d| d.stack.get(id)) else {
                return;
            };
            match layer.current().bitmap.png_bytes() {
                Ok(png) => {
                    let _ = crate::browser::download(&layer_file_name(&layer.name), "image/png", &png);
                }
                Err(e) => leptos::logging::warn!("download failed: {e}"),
            }
        });
    };

    // Drag and drop (HTML5): the row being dragged, the row it is over, and the drop.
    let on_dragstart = move |ev: leptos::ev::DragEvent| {
        dragging.set(Some(id));
        #[cfg(feature = "hydrate")]
        if let Some(dt) = ev.data_transfer() {
            dt.set_effect_allowed("move");
            let _ = dt.set_data("text/plain", &id.to_string());
        }
        let _ = ev;
    };
    let on_dragover = move |ev: leptos::ev::DragEvent| {
        if dragging.get_untracked().is_some() {
            ev.prevent_default();
            if drop_target.get_untracked() != Some(id) {
                drop_target.set(Some(id));
            }
        }
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        if let Some(from) = dragging.get_untracked() {
            change(result, announce, |s| {
                s.move_onto(from, id).ok()?.then_some(())?;
                Some((
                    (),
                    format!(
                        "{} moved to position {} of {}.",
                        s.get(from)?.name,
                        s.position(from)?,
                        s.len()
                    ),
                ))
            });
        }
        dragging.set(None);
        drop_target.set(None);
    };
    let on_dragend = move |_| {
        dragging.set(None);
        drop_target.set(None);
    };
    // Alt+↑ / Alt+↓ on a focused row (or any control in it) moves the layer.
    let on_keydown = move |ev: leptos::ev::KeyboardEvent| {
        if ev.alt_key() && !ev.ctrl_key() && !ev.meta_key() {
            match ev.key().as_str() {
                "ArrowUp" => {
                    ev.prevent_default();
                    move_by(true);
                }
                "ArrowDown" => {
                    ev.prevent_default();
                    move_by(false);
                }
                _ => {}
            }
        }
    };

    view! {
        <li
            class="layer-row"
            class:in-group=in_group
            class:hidden-layer=move || !visible()
            class:dragging=move || dragging.get() == Some(id)
            class:drop-target=move || drop_target.get() == Some(id) && dragging.get() != Some(id)
            class:editing=move || editing.get() == Some(id)
            data-layer-id=id
            aria-labelledby=format!("layer-{id}-name")
            on:dragover=on_dragover
            on:dragenter=on_dragover
            on:drop=on_drop
            on:keydown=on_keydown
            on:pointerenter=move |_| state.pointed_layer.set(Some(id))
            on:focusin=move |_| state.pointed_layer.set(Some(id))
        >
            <div class="layer-main" draggable="true" on:dragstart=on_dragstart on:dragend=on_dragend>
                <span class="drag-handle" title="Drag to reorder" aria-hidden="true">
                    <Icon path=ICON_GRIP/>
                </span>
                <button
                    type="button"
                    class="icon-button eye"
                    aria-pressed=move || visible().to_string()
                    aria-label=move || format!("Visible: {}", name())
                    title=move || if visible() { "Hide this layer" } else { "Show this layer" }
                    on:click=toggle
                >
                    {move || if visible() { view! { <Icon path=ICON_EYE/> } } else { view! { <Icon path=ICON_EYE_OFF/> } }}
                </button>
                <img class="thumb checkerboard" src=thumb alt="" draggable="false"/>
                <div class="layer-meta">
                    <span class="layer-name" id=format!("layer-{id}-name")>{name}</span>
                    <span class="layer-sub">
                        {move || format!("Position {} of {}", position(), count())}
                        {move || edited().then(|| view! { <span class="badge">"edited"</span> })}
                    </span>
                </div>
                <div class="layer-actions">
                    <button
                        type="button"
                        class="icon-button"
                        id=format!("layer-{id}-up")
                        aria-label=move || format!("Move {} up", name())
                        title="Move up (Alt+↑)"
                        disabled=move || !can_up()
                        on:click=move |_| move_by(true)
                    >
                        <Icon path=ICON_UP/>
                    </button>
                    <button
                        type="button"
                        class="icon-button"
                        id=format!("layer-{id}-down")
                        aria-label=move || format!("Move {} down", name())
                        title="Move down (Alt+↓)"
                        disabled=move || !can_down()
                        on:click=move |_| move_by(false)
                    >
                        <Icon path=ICON_DOWN/>
                    </button>
                    <button
                        type="button"
                        class="edit-button"
                        id=format!("layer-{id}-edit")
                        aria-expanded=move || (editing.get() == Some(id)).to_string()
                        aria-label=move || format!("Edit {}", name())
                        on:click=move |_| editing.update(|e| *e = if *e == Some(id) { None } else { Some(id) })
                    >
                        "Edit"
                    </button>
                    <Show when=move || !in_group()>
                        <button
                            type="button"
                            class="edit-button split-button"
                            id=format!("layer-{id}-split")
                            aria-expanded=move || (splitting.get() == Some(id)).to_string()
                            aria-label=move || format!("Split {} into layers", name())
                            title="Decompose this layer again into sub-layers"
                            on:click=move |_| splitting.update(|e| *e = if *e == Some(id) { None } else { Some(id) })
                        >
                            "Split"
                        </button>
                    </Show>
                    <button
                        type="button"
                        class="icon-button"
                        aria-label=move || format!("Download {} as PNG", name())
                        title="Download PNG"
                        on:click=download
                    >
                        <Icon path=ICON_DOWNLOAD/>
                    </button>
                </div>
            </div>
            <div class="layer-controls">
                <label class="opacity" for=format!("layer-{id}-opacity")>
                    <span>"Opacity"</span>
                </label>
                <input
                    type="range"
                    id=format!("layer-{id}-opacity")
                    min="0"
                    max="100"
                    step="1"
                    aria-label=move || format!("Opacity of {}", name())
                    prop:value=move || (opacity() * 100.0).round().to_string()
                    on:input=on_opacity
                    on:change=end_opacity
                />
                <output class="opacity-value" for=format!("layer-{id}-opacity")>
                    {move || format!("{:.0} %", opacity() * 100.0)}
                </output>
            </div>
            <Show when=edited>
                <div class="edit-history">
                    <span class="edit-instruction" title="The last edit">
                        {move || format!("“{}”", last_instruction())}
                    </span>
                    <button
                        type="button"
                        class="secondary small"
                        aria-pressed=move || show_before().to_string()
                        aria-label=move || format!("Show {} before the edit", name())
                        on:click=toggle_before
                    >
                        {move || if show_before() { "Showing before" } else { "Before / after" }}
                    </button>
                    <button
                        type="button"
                        class="secondary small"
                        aria-label=move || format!("Undo the edit of {}", name())
                        on:click=undo_edit
                    >
                        "Undo edit"
                    </button>
                </div>
            </Show>
            <Show when=move || editing.get() == Some(id)>
                <super::edit::EditBox id editing/>
            </Show>
            <Show when=move || splitting.get() == Some(id)>
                <SplitBox id splitting/>
            </Show>
        </li>
    }
    .into_any()
}

/// What a group's row shows.
#[derive(Debug, Clone, Default, PartialEq)]
struct GroupState {
    name: String,
    visible: bool,
    collapsed: bool,
    parts: usize,
    can_up: bool,
    can_down: bool,
}

/// A split layer's group: fold/unfold, show/hide and move its layers as one, or undo the split.
#[component]
fn GroupRow(id: u32) -> impl IntoView {
    let AppState { result, announce, .. } = expect_context::<AppState>();
    let group = Memo::new(move |_| {
        result.with(|r| {
            r.as_ref()
                .and_then(|d| {
                    let g = d.stack.group(id)?;
                    Some(GroupState {
                        name: g.name.clone(),
                        visible: g.visible,
                        collapsed: d.stack.is_collapsed(id),
                        parts: d.stack.group_members_top_down(id).len(),
                        can_up: d.stack.can_move_group(id, true),
                        can_down: d.stack.can_move_group(id, false),
                    })
                })
                .unwrap_or_default()
        })
    });
    let name = move || group.with(|g| g.name.clone());
    let visible = move || group.with(|g| g.visible);
    let collapsed = move || group.with(|g| g.collapsed);
    let fold = move |_| {
        change(result, announce, |s| {
            let now = s.toggle_collapsed(id).ok()?;
            let name = s.group(id)?.name.clone();
            Some(((), format!("{name} {}.", if now { "collapsed" } else { "expanded" })))
        });
    };
    let toggle = move |_| {
        change(result, announce, |s| {
            let now = s.toggle_group_visible(id).ok()?;
            let name = s.group(id)?.name.clone();
            Some(((), format!("{name} {}.", if now { "shown" } else { "hidden" })))
        });
    };
    let move_by = move |up: bool| {
        change(result, announce, |s| {
            let moved = s.move_group(id, up).ok()?;
            let name = s.group(id)?.name.clone();
            Some((
                (),
                if moved {
                    format!("{name} moved {}.", if up { "up" } else { "down" })
                } else {
                    String::new()
                },
            ))
        });
    };
    let unsplit = move |_| {
        change(result, announce, |s| {
            let name = s.group(id)?.name.clone();
            s.unsplit(id).ok()?;
            Some(((), format!("{name}: split undone.")))
        });
    };
    view! {
        <li
            class="group-row"
            class:hidden-layer=move || !visible()
            data-group-id=id
            aria-labelledby=format!("group-{id}-name")
        >
            <div class="layer-main">
                <button
                    type="button"
                    class="icon-button caret"
                    aria-expanded=move || (!collapsed()).to_string()
                    aria-label=move || format!("{} {}", if collapsed() { "Expand" } else { "Collapse" }, name())
                    on:click=fold
                >
                    {move || if collapsed() { view! { <Icon path=ICON_CARET_RIGHT/> } } else { view! { <Icon path=ICON_CARET_DOWN/> } }}
                </button>
                <button
                    type="button"
                    class="icon-button eye"
                    aria-pressed=move || visible().to_string()
                    aria-label=move || format!("Visible: {} (group)", name())
                    title=move || if visible() { "Hide this group" } else { "Show this group" }
                    on:click=toggle
                >
                    {move || if visible() { view! { <Icon path=ICON_EYE/> } } else { view! { <Icon path=ICON_EYE_OFF/> } }}
                </button>
                <div class="layer-meta">
                    <span class="layer-name" id=format!("group-{id}-name")>{name}</span>
                    <span class="layer-sub">{move || format!("Split into {} layers", group.with(|g| g.parts))}</span>
                </div>
                <div class="layer-actions">
                    <button
                        type="button"
                        class="icon-button"
                        aria-label=move || format!("Move {} up", name())
                        title="Move the group up"
                        disabled=move || !group.with(|g| g.can_up)
                        on:click=move |_| move_by(true)
                    >
                        <Icon path=ICON_UP/>
                    </button>
                    <button
                        type="button"
                        class="icon-button"
                        aria-label=move || format!("Move {} down", name())
                        title="Move the group down"
                        disabled=move || !group.with(|g| g.can_down)
                        on:click=move |_| move_by(false)
                    >
                        <Icon path=ICON_DOWN/>
                    </button>
                    <button
                        type="button"
                        class="secondary small"
                        aria-label=move || format!("Undo the split of {}", name())
                        on:click=unsplit
                    >
                        "Undo split"
                    </button>
                </div>
            </div>
        </li>
    }
    .into_any()
}

/// The layer counts "Split" offers (and "auto").
const SPLIT_COUNTS: [u32; 3] = [2, 3, 4];

/// "Split this layer": decomposes the layer's RGBA image again (a job like "Decompose Image",
/// with the run's prompt, resolution and the current steps, CFG and seed) and puts the parts in
/// its place as a group.
#[component]
fn SplitBox(id: u32, splitting: RwSignal<Option<u32>>) -> impl IntoView {
    use super::run::{progress_view, ProgressBar, RunState};
    let state = expect_context::<AppState>();
    let count = RwSignal::new("2".to_string());
    let job = RwSignal::new(RunState::Idle);
    let busy = move || job.with(RunState::is_busy);
    let start = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if job.with_untracked(RunState::is_busy) {
            return;
        }
        #[cfg(feature = "hydrate")]
        run_split(state, id, count.get_untracked(), job, splitting);
        let _ = state;
    };
    let cancel = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let RunState::Running { id: job_id, .. } = job.get_untracked() else {
                return;
            };
            job.update(|r| {
                if let RunState::Running { cancelling, .. } = r {
                    *cancelling = true;
                }
            });
            leptos::task::spawn_local(async move {
                let _ = crate::server_fns::cancel_job(job_id).await;
            });
        }
    };
    let field = format!("layer-{id}-split-count");
    view! {
        <form class="edit-box split-box" aria-label="Split this layer" on:submit=start>
            <label for=field.clone()>"Split into"</label>
            <select
                id=field
                prop:value=move || count.get()
                on:change=move |ev| count.set(event_target_value(&ev))
                disabled=busy
            >
                {SPLIT_COUNTS.map(|k| view! { <option value=k.to_string()>{format!("{k} layers")}</option> }).collect_view()}
                <option value="auto">"Automatic"</option>
            </select>
            <div class="edit-buttons">
                <button type="submit" class="primary small" disabled=busy>
                    {move || if busy() { "Splitting…" } else { "Split layer" }}
                </button>
                <Show
                    when=move || job.with(|r| matches!(r, RunState::Running { .. }))
                    fallback=move || view! {
                        <button type="button" class="secondary small" on:click=move |_| splitting.set(None)>"Close"</button>
                    }
                >
                    <button
                        type="button"
                        class="secondary small cancel-button"
                        disabled=move || job.with(|r| matches!(r, RunState::Running { cancelling: true, .. }))
                        on:click=cancel
                    >
                        "Cancel"
                    </button>
                </Show>
            </div>
            {move || match job.get() {
                RunState::Starting => view! { <ProgressBar label="Sending the layer".into() fraction=None detail=String::new()/> }.into_any(),
                RunState::Running { status, .. } => {
                    let v = status.as_deref().map(progress_view);
                    let (label, fraction, detail) = v
                        .map(|v| (v.label, v.fraction, v.detail))
                        .unwrap_or(("Waiting for the model".into(), None, String::new()));
                    view! { <ProgressBar label fraction detail/> }.into_any()
                }
                RunState::Failed(e) => view! { <p class="error" role="alert"><strong>"Split failed: "</strong>{e}</p> }.into_any(),
                RunState::Cancelled => view! { <p class="run-cancelled" role="status">"Split cancelled."</p> }.into_any(),
                _ => ().into_any(),
            }}
        </form>
    }
    .into_any()
}

/// Starts the split's decompose job, follows it, and puts the parts in the layer's place.
#[cfg(feature = "hydrate")]
fn run_split(
    state: AppState,
    id: u32,
    count: String,
    job: RwSignal<super::run::RunState>,
    splitting: RwSignal<Option<u32>>,
) {
    use super::run::{RunState, POLL_MS};
    use crate::api::{JobState, LayerNum};
    let AppState {
        result,
        params,
        run_info,
        announce,
        ..
    } = state;
    let Some((image, name)) = result.with_untracked(|r| {
        r.as_ref()
            .and_then(|d| d.stack.get(id))
            .map(|l| (l.current().bitmap.data_url.to_string(), l.name.clone()))
    }) else {
        return;
    };
    let mut request = params.with_untracked(|p| p.to_request(image));
    request.layer_num = Some(if count == "auto" {
        LayerNum::AUTO
    } else {
        LayerNum::Count(count.parse().unwrap_or(2))
    });
    run_info.with_untracked(|info| {
        if let Some(info) = info {
            request.resolution = Some(info.resolution);
            if request.prompt.is_empty() {
                request.prompt = info.prompt.clone();
            }
        }
    });
    job.set(RunState::Starting);
    announce.set(format!("Splitting {name}."));
    leptos::task::spawn_local(async move {
        let job_id = match crate::server_fns::start_decompose(request).await {
            Ok(started) => started.id,
            Err(e) => {
                job.try_set(RunState::Failed(e.error));
                return;
            }
        };
        job.try_set(RunState::Running {
            id: job_id.clone(),
            status: None,
            cancelling: false,
        });
        let mut failures = 0;
        loop {
            crate::browser::sleep_ms(POLL_MS).await;
            let s = match crate::server_fns::get_job_status(job_id.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    if failures >= 5 {
                        job.try_set(RunState::Failed(format!("Lost track of the job: {}", e.error)));
                        return;
                    }
                    continue;
                }
            };
            match s.state {
                JobState::Queued | JobState::Running => {
                    job.try_update(|r| {
                        if let RunState::Running { status, .. } = r {
                            *status = Some(Box::new(s));
                        }
                    });
                }
                JobState::Cancelled => {
                    job.try_set(RunState::Cancelled);
                    return;
                }
                JobState::Failed => {
                    job.try_set(RunState::Failed(s.error.unwrap_or_else(|| "the job failed".into())));
                    return;
                }
                JobState::Done => {
                    let outcome = s
                        .result
                        .ok_or_else(|| "the job finished without a result".to_string())
                        .and_then(|response| apply_split(result, id, &name, &response));
                    match outcome {
                        Ok(parts) => {
                            announce.set(format!("{name} split into {parts} layers."));
                            splitting.try_set(None);
                        }
                        Err(e) => {
                            job.try_set(RunState::Failed(e));
                        }
                    }
                    return;
                }
            }
        }
    });
}

/// Puts a split's layers (resized to the stack's size if the model's differs) in the place of
/// layer `id`, named "Layer 2.1" … bottom first. Returns how many.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn apply_split(
    result: RwSignal<Option<Decomposition>>,
    id: u32,
    name: &str,
    response: &crate::api::DecomposeResponse,
) -> Result<usize, String> {
    let parts = Decomposition::from_response(response).map_err(|e| e.to_string())?;
    let (w, h) = result
        .with_untracked(|r| r.as_ref().map(|d| (d.stack.width(), d.stack.height())))
        .ok_or("the layers are gone")?;
    let layers = parts
        .stack
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| Ok((format!("{name}.{}", i + 1), l.current().bitmap.resized(w, h)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let n = layers.len();
    let mut out = Err("the layers are gone".to_string());
    result.update(|r| {
        if let Some(d) = r {
            out = d.stack.split(id, layers).map(|_| n).map_err(|e| e.to_string());
        }
    });
    out
}

/// An inline SVG icon (24×24 stroke paths).
#[component]
pub fn Icon(path: &'static str) -> impl IntoView {
    view! {
        <svg class="icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false">
            <path
                d=path
                fill="none"
                stroke="currentColor"
                stroke-width="1.8"
                stroke-linecap="round"
                stroke-linejoin="round"
            ></path>
        </svg>
    }
    .into_any()
}

pub const ICON_EYE: &str = "M2 12s3.6-7 10-7 10 7 10 7-3.6 7-10 7S2 12 2 12Zm10 3a3 3 0 1 0 0-6 3 3 0 0 0 0 6Z";
pub const ICON_EYE_OFF: &str =
    "M3 3l18 18M10.6 5.1A10.6 10.6 0 0 1 12 5c6.4 0 10 7 10 7a17 17 0 0 1-3.2 4.1M6.6 6.6C3.8 8.4 2 12 2 12s3.6 7 10 7a9.7 9.7 0 0 0 5.4-1.6M9.9 9.9a3 3 0 0 0 4.2 4.2";
pub const ICON_CARET_DOWN: &str = "m6 9 6 6 6-6";
pub const ICON_CARET_RIGHT: &str = "m9 6 6 6-6 6";
pub const ICON_UP: &str = "M12 19V5m0 0-6 6m6-6 6 6";
pub const ICON_DOWN: &str = "M12 5v14m0 0 6-6m-6 6-6-6";
pub const ICON_DOWNLOAD: &str = "M12 4v11m0 0-4.5-4.5M12 15l4.5-4.5M4 19h16";
pub const ICON_GRIP: &str = "M9 6h.01M9 12h.01M9 18h.01M15 6h.01M15 12h.01M15 18h.01";
pub const ICON_UNDO: &str = "M9 14 4 9l5-5M4 9h10.5a5.5 5.5 0 0 1 0 11H11";
pub const ICON_REDO: &str = "m15 14 5-5-5-5m5 5H9.5a5.5 5.5 0 0 0 0 11H13";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_files_are_named_after_the_layer() {
        assert_eq!(layer_file_name("Layer 2"), "layer-2.png");
        assert_eq!(layer_file_name("Sky & sun!"), "sky-sun.png");
        assert_eq!(layer_file_name("???"), "layer.png");
    }
}
